"""The CUDA paths: bf16 autocast, fused AdamW, torch.compile, the KV cache on the GPU.

Marked ``gpu``: skipped on machines without CUDA (CI has none).
"""

import pytest
import torch

from lmbook.text.data import RandomBatches
from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.training.optim import make_optimizer
from lmbook.training.train import TrainConfig, train

pytestmark = pytest.mark.gpu
DATA = (torch.arange(20000) * 7 + torch.arange(20000) // 97) % 65


@pytest.mark.parametrize("compile", [False, True])
def test_bf16_training_learns_on_cuda(compile):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=64)).cuda()
    batches = RandomBatches(DATA, 64, 16, device="cuda", seed=1)
    config = TrainConfig(max_steps=60, lr=1e-2, warmup_steps=5, eval_interval=30, eval_iters=4, compile=compile,
                         progress=False)
    history = train(model, batches, config, {"val": RandomBatches(DATA, 64, 16, device="cuda", seed=2)})
    assert history.eval_loss["val"][-1] < 1.0 < history.eval_loss["val"][0]


@pytest.mark.parametrize("kind", ["random", "mlm", "examples"])
def test_batches_on_cuda_are_the_cpu_batches(kind):
    from lmbook.training.finetune import ExampleBatches
    from lmbook.models.mlm import MLMBatches

    examples = torch.where(torch.arange(64)[None] < torch.arange(1, 41)[:, None], DATA[:64], -1)  # (40, 64), padded
    make = {
        "random": lambda device: RandomBatches(DATA, 64, 16, device=device, seed=3),
        "mlm": lambda device: MLMBatches(DATA, 64, 16, mask_id=65, n_random=65, device=device, seed=3),
        "examples": lambda device: ExampleBatches(examples, torch.arange(40) % 2, 8, device=device, seed=3),
    }[kind]
    on_cpu, on_gpu = make("cpu"), make("cuda")
    for _ in range(3):
        (xc, yc), (xg, yg) = on_cpu(), on_gpu()  # the copies to the GPU do not wait for it; the values must not change
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def _graph_run(cuda_graph, precision="fp32", dropout=0.0, steps=30):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=64, dropout=dropout)).cuda()
    batches = RandomBatches(DATA, 64, 16, device="cuda", seed=1)
    # a rate that changes at every step: a graph that kept the rate it was recorded with would drift away
    config = TrainConfig(max_steps=steps, lr=1e-2, min_lr=0.0, warmup_steps=5, schedule="linear", log_interval=7,
                         precision=precision, cuda_graph=cuda_graph, progress=False, eval_interval=10, eval_iters=2)
    history = train(model, batches, config, {"val": RandomBatches(DATA, 64, 16, device="cuda", seed=2)})
    return model, history


def test_cuda_graph_step_matches_the_eager_step():
    eager, eager_history = _graph_run(False)
    graphed, graph_history = _graph_run(True)
    assert len(graph_history.train_loss) == 30
    for field in ("train_loss", "grad_norm"):
        graph, eager = torch.tensor(getattr(graph_history, field)), torch.tensor(getattr(eager_history, field))
        torch.testing.assert_close(graph, eager, rtol=1e-3, atol=1e-4)
    for (name, a), b in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    assert all(p.grad is None for p in graphed.parameters())


def test_cuda_graph_trains_with_bf16_and_dropout():
    _, history = _graph_run(True, precision="auto", dropout=0.2, steps=60)
    assert history.eval_loss["val"][-1] < 1.0 < history.eval_loss["val"][0]


@pytest.mark.parametrize("first", [False, True])
def test_cuda_graph_resumes_from_a_checkpoint(tmp_path, first):
    # a run interrupted after 12 steps (eager or graphed) and resumed with the graph ends where an
    # uninterrupted graphed run ends
    def run(cuda_graph, checkpoint, resume=False, stop_after=None):
        torch.manual_seed(0)
        model = GPT(GPTConfig.preset("tiny", block_size=64)).cuda()
        config = TrainConfig(max_steps=24, lr=1e-2, min_lr=0.0, warmup_steps=4, schedule="linear", precision="fp32",
                             cuda_graph=cuda_graph, progress=False, log_interval=4, eval_interval=12, eval_iters=2,
                             checkpoint_path=str(tmp_path / checkpoint))
        source, calls = RandomBatches(DATA, 64, 16, device="cuda", seed=1), {"n": 0}

        def batches():
            calls["n"] += 1
            if stop_after is not None and calls["n"] > stop_after:
                raise KeyboardInterrupt
            return source()

        batches.state_dict, batches.load_state_dict = source.state_dict, source.load_state_dict  # exact resume
        val = {"val": RandomBatches(DATA, 64, 16, device="cuda", seed=2)}
        history = train(model, batches, config, val, resume=resume)
        return model, history

    whole, _ = run(True, "whole.pt")
    with pytest.raises(KeyboardInterrupt):
        run(first, "cut.pt", stop_after=12)
    resumed, history = run(True, "cut.pt", resume=True)
    assert history.steps == list(range(24))
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)


def test_cuda_graph_refuses_a_new_batch_shape():
    from lmbook.training.cudagraph import CapturedStep

    model = GPT(GPTConfig.preset("tiny")).cuda()
    optimizer = make_optimizer(model, TrainConfig(cuda_graph=True), torch.device("cuda"))
    step = CapturedStep(model, lambda x, y: model(x, y)[1], optimizer, 1.0)
    x = torch.randint(0, 65, (4, 32), device="cuda")
    for _ in range(4):
        step(x, x, 1e-3)
    with pytest.raises(ValueError, match="one batch shape"):
        step(x[:2], x[:2], 1e-3)


def test_optimizer_is_fused_on_cuda():
    model = GPT(GPTConfig.preset("tiny")).cuda()
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cuda"))
    assert optimizer.defaults["fused"]


def test_kv_cache_matches_full_forward_on_cuda():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).cuda().eval()
    prompt = torch.randint(0, 65, (2, 4), device="cuda")
    fast = generate(model, prompt, 24, temperature=0)
    slow = generate(model, prompt, 24, temperature=0, use_cache=False)
    assert torch.equal(fast, slow)
