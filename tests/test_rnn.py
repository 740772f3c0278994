"""lmbook.models.rnn and SequentialBatches: the written-out RNN, LSTM/GRU language models, truncated BPTT."""

import pytest
import torch

from lmbook.text.data import RandomBatches, SequentialBatches
from lmbook.decoding.generate import generate
from lmbook.evaluation.metrics import split_loss
from lmbook.models.rnn import CELLS, RNNLM, RNNConfig, SimpleRNN, input_gradient_norms, scale_recurrent_weights
from lmbook.runs.ch02_rnn import RUNS
from lmbook.runs.common import make_char_model, train_char_model

DATA = (torch.arange(4000) * 7 + torch.arange(4000) // 97) % 65  # learnable: mostly "next = this + 7"


def tiny(cell: str, seed: int = 0, **overrides) -> RNNLM:
    torch.manual_seed(seed)
    return RNNLM(RNNConfig.preset("tiny", cell=cell, **overrides))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_written_out_rnn_equals_torch_rnn_with_the_same_weights(nonlinearity):
    torch.manual_seed(0)
    reference = torch.nn.RNN(12, 24, num_layers=3, nonlinearity=nonlinearity, batch_first=True)
    mine = SimpleRNN(12, 24, num_layers=3, nonlinearity=nonlinearity).load_from_torch(reference)
    x, h0 = torch.randn(5, 40, 12), torch.randn(3, 5, 24)
    expected, expected_final = reference(x, h0)
    out, final = mine(x, h0)
    assert out.shape == (5, 40, 24) and final.shape == (3, 5, 24)
    assert (out - expected).abs().max() < 1e-5 and (final - expected_final).abs().max() < 1e-5
    zeros, _ = mine(x)  # no initial state means zeros
    assert torch.allclose(zeros, reference(x)[0], atol=1e-5)
    with torch.no_grad():
        mine.cells[1].W_hh[0, 0] += 0.1  # a check that can fail: one changed weight shows
    assert (mine(x, h0)[0] - expected).abs().max() > 1e-3


def test_the_sequence_is_the_cell_applied_step_by_step():
    torch.manual_seed(0)
    rnn = SimpleRNN(6, 10, num_layers=1)
    x, h = torch.randn(3, 12, 6), torch.zeros(3, 10)
    out, final = rnn(x)
    for t in range(12):
        h = rnn.cells[0](x[:, t], h)  # the equation, one step
        assert torch.allclose(out[:, t], h, atol=1e-6)
    assert torch.allclose(final[0], h, atol=1e-6)


def test_loading_a_different_torch_rnn_is_refused():
    with pytest.raises(ValueError, match="same number of layers"):
        SimpleRNN(4, 8, num_layers=2).load_from_torch(torch.nn.RNN(4, 8, num_layers=1))
    with pytest.raises(ValueError, match="relu"):
        SimpleRNN(4, 8).load_from_torch(torch.nn.RNN(4, 8, nonlinearity="relu"))


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_loss_and_ignored_targets(cell):
    model = tiny(cell).eval()
    idx = torch.randint(0, 65, (3, 10))
    targets = torch.randint(0, 65, (3, 10))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 10, 65) and model(idx)[1] is None
    assert abs(loss.item() - torch.log(torch.tensor(65.0)).item()) < 0.3  # near uniform at init
    masked = targets.clone()
    masked[:, :4] = -1
    kept = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 65), targets[:, 4:].reshape(-1))
    assert torch.allclose(model(idx, masked)[1], kept, atol=1e-6)
    assert model.context_length is None and model.num_params() == sum(p.numel() for p in model.parameters())


def test_unknown_cell_is_refused():
    with pytest.raises(ValueError, match="cell must be one of"):
        RNNConfig(cell="transformer")


@pytest.mark.parametrize("cell", CELLS)
def test_generation_with_the_state_equals_recomputing(cell):
    model = tiny(cell, seed=1)
    prompt = torch.randint(0, 65, (2, 6))
    fast = generate(model, prompt, 30, temperature=0)
    slow = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert fast.shape == (2, 36) and torch.equal(fast, slow)
    cache = model.make_cache(2)
    model.eval()
    model(prompt, cache=cache)
    assert cache.pos == 6 and cache.h is not None
    cache.reset()
    assert cache.pos == 0 and cache.h is None


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_continues_the_sequence(cell):
    model = tiny(cell).train()  # training mode: the state is carried (dropout is 0)
    idx = torch.randint(0, 65, (4, 24))
    whole, _ = model(idx)
    model.reset_state()
    first, _ = model(idx[:, :10])
    second, _ = model(idx[:, 10:])
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-5)
    model.reset_state()
    assert not torch.allclose(model(idx[:, 10:])[0], second, atol=1e-3)  # from zeros it differs
    model.eval()
    assert torch.allclose(model(idx[:, 10:])[0], model(idx[:, 10:])[0])  # evaluation carries nothing


def test_evaluation_leaves_the_training_state_alone():
    model = tiny("gru").train()
    idx = torch.randint(0, 65, (4, 20))
    model(idx[:, :10])
    carried = model._carried.clone()
    model.eval()
    model(torch.randint(0, 65, (4, 10)))
    model(torch.randint(0, 65, (2, 10)))
    model.train()
    assert torch.equal(model._carried, carried)
    model(torch.randint(0, 65, (3, 10)))  # another batch size: starts from zeros, no error
    assert model._carried.shape[1] == 3


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_carried_state_is_detached(cell):
    model = tiny(cell).train()
    idx, targets = torch.randint(0, 65, (2, 16)), torch.randint(0, 65, (2, 16))
    _, loss = model(idx[:, :8], targets[:, :8])
    loss.backward()  # frees the first call's graph
    state = model._carried
    for s in state if isinstance(state, tuple) else (state,):
        assert not s.requires_grad and s.grad_fn is None
    model.zero_grad()
    _, loss = model(idx[:, 8:], targets[:, 8:])
    loss.backward()  # would fail ("backward through the graph a second time") if not detached
    grads = [p.grad.clone() for p in model.parameters()]
    # the same gradient as a model handed the carried state as a plain tensor
    fresh = tiny(cell).train()
    fresh.load_state_dict(model.state_dict())
    fresh._carried = state
    fresh(idx[:, 8:], targets[:, 8:])[1].backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, fresh.parameters()))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sequential_loss_reads_the_text_in_order_with_the_state(cell):
    model = tiny(cell).train()
    data = DATA[:161]
    blocks = 160 // 16
    whole = model.eval()(data[None, : blocks * 16], data[None, 1 : blocks * 16 + 1])[1].item()
    in_order = split_loss(model.train(), data, block_size=16, batch_size=1, carry_state=True)
    assert in_order == pytest.approx(whole, abs=1e-5)
    assert model.training  # the mode is given back
    windows = sum(model.eval()(data[None, i : i + 16], data[None, i + 1 : i + 17])[1].item() for i in range(0, 160, 16))
    assert abs(windows / blocks - whole) > 1e-4  # from blank states it differs


def test_sequential_batches_continue_each_stream_and_round_trip():
    data = torch.arange(1000)
    batches = SequentialBatches(data, block_size=7, batch_size=4)
    length = 999 // 4
    x1, y1 = batches()
    x2, y2 = batches()
    assert x1.shape == (4, 7) and torch.equal(y1, x1 + 1)  # targets: the next token
    assert torch.equal(x1[:, 0], torch.arange(4) * length)  # stream b starts at b * length
    assert torch.equal(x2[:, 0], x1[:, -1] + 1)  # each row continues the row before
    state = batches.state_dict()
    after = [batches() for _ in range(3)]
    batches.load_state_dict(state)
    assert all(torch.equal(a[0], batches()[0]) for a in after)
    for _ in range(batches.blocks - 5):
        batches()
    assert torch.equal(batches()[0], x1)  # after a whole pass the streams start again
    with pytest.raises(ValueError, match="per stream"):
        SequentialBatches(torch.arange(50), block_size=20, batch_size=4)


def test_tiny_lstm_overfits_one_batch():
    model = tiny("lstm", carry_state=False)
    x, y = RandomBatches(DATA, 16, 4, seed=0)()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(80):
        loss = model(x, y)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_lstm_gradient_reaches_further_back_than_the_tanh_rnn():
    x = torch.randint(0, 65, (16, 60))
    norms = {cell: input_gradient_norms(tiny(cell), x, x) for cell in ("rnn", "lstm")}
    assert norms["rnn"].shape == (60,) and torch.all(norms["rnn"] >= 0)
    assert torch.all(norms["lstm"][20:] > 10 * norms["rnn"][20:])
    assert norms["rnn"][40] < 1e-3 * norms["rnn"][0]  # vanishing: orders of magnitude in 40 steps
    exploding = scale_recurrent_weights(tiny("rnn"), 5.0)
    assert input_gradient_norms(exploding, x, x)[40] > 10 * norms["rnn"][0]  # and exploding
    with pytest.raises(ValueError, match="only the written-out RNN"):
        scale_recurrent_weights(tiny("gru"), 2.0)


def test_char_training_lowers_the_loss_and_records_gradient_norms():
    run = RUNS["fast"]
    run = type(run)(**{**run.to_dict(), "n_hidden": 32, "n_embd": 16, "bptt": 16, "batch_size": 4,
                       "max_steps": 30, "eval_interval": 15, "eval_iters": 2, "warmup_steps": 5})
    model = make_char_model("gru", run, 65, device="cpu")
    history = train_char_model(model, run, DATA[:3000], DATA[3000:], progress=False)
    assert history.eval_loss["val"][-1] < history.eval_loss["val"][0] - 1.0
    assert len(history.grad_norm) == 30 and all(n > 0 for n in history.grad_norm)


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_cells_train_decode_and_probe_on_cuda(cell):
    run = RUNS["fast"]
    run = type(run)(**{**run.to_dict(), "max_steps": 20, "eval_interval": 10, "eval_iters": 2})
    model = make_char_model(cell, run, 65, device="cuda")
    history = train_char_model(model, run, DATA[:3000], DATA[3000:], progress=False)  # bf16 autocast where supported
    assert history.eval_loss["val"][-1] < history.eval_loss["val"][0]
    prompt = DATA[:5][None].cuda()
    assert generate(model, prompt, 10, temperature=0.8).shape == (1, 15)  # cuDNN may use TF32: no exact equality here
    x = DATA[:64].view(2, 32).cuda()
    norms = input_gradient_norms(model, x, x)  # cuDNN switched off: its RNN backward needs training mode
    assert norms.shape == (32,) and torch.isfinite(norms).all()
