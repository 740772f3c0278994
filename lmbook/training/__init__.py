"""Training (chapters 2 to 4 and 7): the one training loop (``train``) with its optimiser and schedule
(``optim``), its record (``history``), resumable checkpoints (``checkpoint``), CUDA-graph steps
(``cudagraph``), and chapter 4's fine-tuning of a classifier head (``finetune``)."""
