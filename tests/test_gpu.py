"""The CUDA paths: bf16 autocast, fused AdamW, torch.compile, the KV cache on the GPU.

Marked ``gpu``: skipped on machines without CUDA (CI has none).
"""

import pytest
import torch

from lmbook.data import RandomBatches
from lmbook.generate import generate
from lmbook.gpt import GPT, GPTConfig
from lmbook.train import TrainConfig, make_optimizer, train

pytestmark = pytest.mark.gpu
DATA = (torch.arange(20000) * 7 + torch.arange(20000) // 97) % 65


@pytest.mark.parametrize("compile", [False, True])
def test_bf16_training_learns_on_cuda(compile):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=64)).cuda()
    batches = RandomBatches(DATA, 64, 16, device="cuda", seed=1)
    config = TrainConfig(max_steps=60, lr=1e-2, warmup_steps=5, eval_interval=30, eval_iters=4, compile=compile, progress=False)
    history = train(model, batches, config, {"val": RandomBatches(DATA, 64, 16, device="cuda", seed=2)})
    assert history.eval_loss["val"][-1] < 1.0 < history.eval_loss["val"][0]


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
