"""lmbook: the code of the book *Language models, runnable*, from n-grams to GPT.

Each module holds one concept and names the chapters that use it:
``runtime`` (device, size, seeds), ``data`` (corpus, batches), ``tokenizers``,
``ngram`` and ``metrics`` (chapter 1), ``rnn`` (chapter 2), ``attention`` and
``widgets`` (chapter 3), ``mlm``, ``lora``, ``speeches`` and ``finetune`` (chapter 4),
``gpt``, ``train`` (the one training loop) and ``cudagraph`` (its steps replayed as
CUDA graphs), ``generate``, ``hf`` (transformers), ``viz`` (plots), ``reference``
(full-size runs).
"""

__version__ = "0.1.0"
