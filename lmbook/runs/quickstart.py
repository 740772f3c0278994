"""The quick start's run: a character-level GPT trained once, end to end, in a few minutes.

The full size is chapter 3's GPT (:data:`lmbook.runs.ch03_gpt.RUNS`); the fast size is a little wider
and shallower than chapter 3's, with a cosine schedule, and reads 16 windows of 64 characters a step.
"""

from __future__ import annotations

from .common import GPT_RUNS
from .common import GPTRun

RUNS = {
    "full": GPT_RUNS["full"],
    "fast": GPTRun(n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch_size=16, max_steps=800,
                   lr=3e-3, min_lr=3e-4, warmup_steps=50, schedule="cosine", weight_decay=0.1, beta2=0.95,
                   eval_interval=100, eval_iters=10),
}
