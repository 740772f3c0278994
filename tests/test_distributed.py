"""The training loop under DistributedDataParallel: two CPU processes with the gloo backend."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmbook.models.gpt import GPT, GPTConfig
from lmbook.training.checkpoint import load_checkpoint
from lmbook.runtime import world
from lmbook.training.train import TrainConfig, train

DATA = (torch.arange(4000) * 7 + torch.arange(4000) // 97) % 65
STEPS, B, T = 4, 4, 16


def fixed_batches(rank: int, world_size: int):
    """Step i gives process r the r-th quarter of one big batch, so all processes together see it whole."""
    g = torch.Generator().manual_seed(0)
    big = [DATA[torch.randint(len(DATA) - T - 1, (B * world_size,), generator=g)[:, None] + torch.arange(T + 1)]
           for _ in range(STEPS)]
    it = iter([w[rank * B : (rank + 1) * B] for w in big])

    def next_batch():
        w = next(it)
        return w[:, :-1], w[:, 1:]

    return next_batch


def config(tmp, **kw):
    return TrainConfig(max_steps=STEPS, lr=1e-3, warmup_steps=1, eval_interval=2, eval_iters=1, progress=False,
                       checkpoint_path=str(tmp / "ckpt.pt"), **kw)


def worker(rank: int, world_size: int, tmp, results):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=T))
    history = train(model, fixed_batches(rank, world_size), config(tmp), {"val": fixed_batches(rank, world_size)})
    assert world() == (rank, world_size)
    results[rank] = ({k: v.clone() for k, v in model.state_dict().items()}, history.train_loss, history.tokens_per_step)
    dist.destroy_process_group()


def test_two_processes_train_like_one_with_the_whole_batch(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(2, tmp_path, results), nprocs=2, join=True)
    (state0, losses0, tokens0), (state1, losses1, _) = results[0], results[1]
    for name in state0:
        assert torch.equal(state0[name], state1[name]), f"{name} differs between the processes"
    assert losses0 == losses1 and tokens0 == 2 * B * T

    torch.manual_seed(0)
    single = GPT(GPTConfig.preset("tiny", block_size=T))
    before = {k: v.clone() for k, v in single.state_dict().items()}
    history = train(single, _whole(), config(tmp_path / "single"))
    moved = max((state0[k] - before[k]).abs().max().item() for k in before)
    differs = max((state0[k] - v).abs().max().item() for k, v in single.state_dict().items())
    assert moved > 1e-3 and differs < 1e-5, (moved, differs)
    assert history.train_loss == pytest.approx(losses0, abs=1e-5)
    assert len(load_checkpoint(tmp_path / "ckpt.pt")["processes"]) == 2


def _whole():
    """The batches of both processes together, as one process would see them."""
    a, b = fixed_batches(0, 2), fixed_batches(1, 2)

    def next_batch():
        (xa, ya), (xb, yb) = a(), b()
        return torch.cat([xa, xb]), torch.cat([ya, yb])

    return next_batch
