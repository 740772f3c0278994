"""The training loop of lmbook.training.train: schedule, exact resume, atomic checkpoints, clear failures."""

import math

import pytest
import torch

from lmbook.text.data import RandomBatches
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.training.checkpoint import CheckpointError, atomic_save, load_checkpoint
from lmbook.training.history import History
from lmbook.training.optim import lr_at, make_optimizer
from lmbook.training.train import NonFiniteLossError, TrainConfig, train

DATA = (torch.arange(5000) * 7 + torch.arange(5000) // 97) % 65  # learnable: mostly "next = this + 7"


def model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", block_size=16, **overrides))


def batches(seed=1):
    return RandomBatches(DATA, block_size=16, batch_size=4, seed=seed)


def config(tmp_path=None, **overrides) -> TrainConfig:
    base = dict(max_steps=12, lr=1e-2, warmup_steps=3, eval_interval=4, eval_iters=2, log_interval=2, progress=False)
    if tmp_path is not None:
        base["checkpoint_path"] = str(tmp_path / "ckpt.pt")
    return TrainConfig(**{**base, **overrides})


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(max_steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(0.1)
    linear = TrainConfig(max_steps=100, lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear")
    assert lr_at(25, linear) == pytest.approx(0.75)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


def test_cuda_graph_settings_are_refused_before_any_step():
    with pytest.raises(ValueError, match="compile=False and grad_accum=1"):
        TrainConfig(cuda_graph=True, compile="blocks")
    with pytest.raises(ValueError, match="grad_accum=2"):
        TrainConfig(cuda_graph=True, grad_accum=2)
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="needs a CUDA device; the model is on cpu"):
        train(net, batches(), config(cuda_graph=True))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_captured_step_refuses_a_cpu_model():
    from lmbook.training.cudagraph import CapturedStep

    net = model()
    optimizer = torch.optim.AdamW(net.parameters())
    with pytest.raises(ValueError, match="CUDA device; it is on cpu"):
        CapturedStep(net, lambda x, y: net(x, y)[1], optimizer, 1.0)


def test_optimizer_is_fused_adamw_with_decay_on_matrices_only():
    net = model()
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    config = TrainConfig(lr=1e-2, weight_decay=0.5, betas=(0.9, 0.99))
    optimizer = make_optimizer(net, config, torch.device("cpu"))
    assert optimizer.defaults["fused"]
    optimizer.step()
    for name, p in net.named_parameters():  # AdamW's first step written out: m/(1-b1) = g, v/(1-b2) = g^2
        g, w = p.grad, before[name]
        decay = config.weight_decay if p.dim() >= 2 else 0.0
        expected = w * (1 - config.lr * decay) - config.lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_training_lowers_the_loss_and_records_history():
    m = model()
    h = train(m, batches(), config(max_steps=40), {"val": batches(seed=9)})
    assert h.steps == list(range(40)) and len(h.train_loss) == 40 and len(h.lr) == 40
    assert h.eval_steps == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert h.eval_loss["val"][-1] < h.eval_loss["val"][0] - 0.3
    assert h.tokens_per_step == 4 * 16 and h.tokens_per_second > 0
    assert h.best("val")[1] == min(h.eval_loss["val"])
    assert History.from_dict(h.to_dict()) == h


def test_the_speed_is_the_tokens_trained_on_over_the_training_time(monkeypatch):
    """A clock that moves a quarter second at each training forward pass and stands still otherwise (evaluation
    included): the history's speed is then its own token count over its own seconds, 64 * 40 / 10."""
    import types

    import lmbook.training.train as loop

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    m = model()
    m.register_forward_hook(lambda module, args, out: setattr(clock, "now", clock.now + 0.25 * module.training))
    h = train(m, batches(), config(max_steps=40), {"val": batches(seed=9)})
    assert h.seconds == 40 * 0.25 and h.eval_seconds == [4 * 0.25 * i for i in range(11)]
    assert h.tokens_per_second == h.tokens_per_step * len(h.steps) / h.seconds == 64 * 40 / 10


def test_evaluation_uses_the_same_batches_each_time():
    m = model()
    h = train(m, batches(), config(max_steps=8, lr=0.0, min_lr=0.0), {"val": batches(seed=9)})
    assert len(set(round(v, 6) for v in h.eval_loss["val"])) == 1  # nothing learned, same batches


def test_gradient_accumulation_matches_a_larger_batch(monkeypatch):
    # two micro-batches of 4 must give the gradient of one batch of 8 (same windows)
    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    x8, y8 = RandomBatches(DATA, 16, 8, seed=3)()
    halves = iter([(x8[:4], y8[:4]), (x8[4:], y8[4:])])
    train(model(), lambda: (x8, y8), config(max_steps=1, grad_clip=None))
    train(model(), lambda: next(halves), config(max_steps=1, grad_clip=None, grad_accum=2))
    for g_big, g_acc in zip(*seen):
        torch.testing.assert_close(g_acc, g_big, atol=1e-7, rtol=1e-4)


class Interrupt(Exception):
    pass


def test_interrupt_and_resume_is_bit_identical(tmp_path):
    n, total = 6, 14
    whole = model(dropout=0.1)
    train(whole, batches(), config(max_steps=total))

    interrupted, source, calls = model(dropout=0.1), batches(), {"n": 0}

    def dying_batches():
        calls["n"] += 1
        if calls["n"] > n:
            raise Interrupt
        return source()

    dying_batches.state_dict, dying_batches.load_state_dict = source.state_dict, source.load_state_dict
    cfg = config(tmp_path, max_steps=total, checkpoint_interval=n)
    with pytest.raises(Interrupt):
        train(interrupted, dying_batches, cfg)
    assert load_checkpoint(cfg.checkpoint_path)["step"] == n

    resumed = model(dropout=0.1)  # a fresh process: new model, new batch source
    history = train(resumed, batches(), cfg, resume=True)
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert history.steps == list(range(total))


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1}, path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"step": 1, "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(tmp_path):
    source = batches()
    calls = {"n": 0}

    def counting():
        calls["n"] += 1
        return source()

    m = model()
    original_forward = m.forward

    def forward(x, y=None, cache=None):  # the 7th batch (step 6) gives a NaN loss
        logits, loss = original_forward(x, y, cache)
        return logits, loss * float("nan") if calls["n"] == 7 else loss

    m.forward = forward
    cfg = config(tmp_path, max_steps=12, checkpoint_interval=4)
    with pytest.raises(NonFiniteLossError, match="at step 6 ") as err:
        train(m, counting, cfg)
    assert "ckpt.pt" in str(err.value)
    assert load_checkpoint(cfg.checkpoint_path)["step"] == 4


# --- Early stopping ------------------------------------------------------------------
# Training teaches "next = this + 7"; the "drift" split follows "next = this + 3", which the
# model gets worse at as it learns: its loss rises after the first steps.
DRIFT = (torch.arange(5000) * 3 + torch.arange(5000) // 97) % 65


def drifting(**overrides):
    return config(**{"max_steps": 40, "eval_interval": 2, **overrides})


def test_early_stopping_stops_after_patience_evaluations():
    h = train(model(), batches(), drifting(patience=2, monitor="drift"),
              {"drift": RandomBatches(DRIFT, block_size=16, batch_size=4, seed=5)})
    assert h.stopped_early is not None and h.stopped_early < 40
    assert h.steps[-1] == h.stopped_early - 1 and h.eval_steps[-1] == h.stopped_early
    assert h.evaluations_since_best("drift") == 2
    full = train(model(), batches(), drifting(), {"drift": RandomBatches(DRIFT, block_size=16, batch_size=4, seed=5)})
    assert full.stopped_early is None and full.steps[-1] == 39


def test_restore_best_puts_back_the_weights_of_the_lowest_loss():
    from lmbook.training.train import estimate_loss

    drift = RandomBatches(DRIFT, block_size=16, batch_size=4, seed=5)
    state = drift.state_dict()
    m = model()
    h = train(m, batches(), drifting(restore_best=True, monitor="drift"), {"drift": drift})
    best_step, best_loss = h.best("drift")
    assert h.restored_step == best_step and best_step < h.eval_steps[-1]  # the last weights were not the best
    drift.load_state_dict(state)
    assert estimate_loss(m, drift, 2) == pytest.approx(best_loss, abs=1e-5)
    assert h.eval_loss["drift"][-1] > best_loss + 1e-3


def test_early_stopping_needs_its_split():
    with pytest.raises(ValueError, match="watches the split 'val'"):
        train(model(), batches(), config(patience=2), {"train": batches(seed=2)})
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)


def test_arguments_of_the_wrong_kind_are_refused_before_any_step():
    from lmbook.training.train import estimate_loss

    drawn, source = [], batches()

    def counting():
        drawn.append(1)
        return source()

    with pytest.raises(TypeError, match="resume must be True or False, not 'no'"):
        train(model(), counting, config(), resume="no")  # a non-empty string would have resumed
    with pytest.raises(TypeError, match="eval_batches must map split names to batch sources"):
        train(model(), counting, config(), batches(seed=2))  # one source, not a dict of them
    with pytest.raises(TypeError, match="train_batches must be a callable"):
        train(model(), [source()], config())
    assert not drawn
    for iters in (0, 2.0, True):
        with pytest.raises(ValueError, match=f"iters must be an integer >= 1, not {iters!r}"):
            estimate_loss(model(), counting, iters)
