"""Training (chapters 2 to 4, 7 and 9): the one training loop (``train``) with its optimiser and schedule
(``optim``), its record (``history``), resumable checkpoints (``checkpoint``), CUDA-graph steps
(``cudagraph``), chapter 4's fine-tuning of a classifier head (``finetune``), and chapter 9's supervised
fine-tuning with the loss on the answers (``sft``) and preference tuning (``dpo``)."""
