"""A training process for tests/test_resume.py: trains a tiny GPT with checkpoints, resuming if asked,
and writes its final weights. Run as ``python tests/train_worker.py CHECKPOINT OUT [--resume]``."""

import sys

import torch

from lmbook.text.data import RandomBatches
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.training.train import TrainConfig, train

STEPS = 150
DATA = (torch.arange(5000) * 7 + torch.arange(5000) // 97) % 65


def main(checkpoint: str, out: str, resume: bool) -> None:
    torch.set_num_threads(1)  # the same arithmetic in every process
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=16, dropout=0.1))
    config = TrainConfig(max_steps=STEPS, lr=1e-2, warmup_steps=5, eval_interval=50, eval_iters=1, log_interval=1,
                         checkpoint_path=checkpoint or None, checkpoint_interval=3, progress=False)
    batches = RandomBatches(DATA, block_size=16, batch_size=4, seed=1)
    train(model, batches, config, {"val": RandomBatches(DATA, block_size=16, batch_size=4, seed=2)}, resume=resume)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--resume" in sys.argv)
