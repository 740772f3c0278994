"""lmbook: the code of the book *Language models, runnable*, from n-grams to GPT.

Concepts, one a module, each importing only lower ones: ``runtime`` (device, size, seeds),
``config`` (presets), ``interface`` (what every language model offers), ``data`` (corpus,
batches), ``tokenizers``, ``ngram`` and ``metrics`` (chapter 1), ``rnn`` (chapter 2),
``gpt``, ``attention``, ``variants`` and ``widgets`` (chapter 3), ``mlm``, ``lora``, ``speeches``
and ``finetune`` (chapter 4), ``decoding``, ``beam``, ``generate``, ``speculative`` and
``decoding_viz`` (chapter 5), ``textmetrics`` and ``hf_metrics`` (chapter 6), ``embeddings`` and ``bias``
(chapter 7), ``hf`` (``transformers``), ``viz``, ``show`` and ``diagrams`` (what the chapters
show). Above them: ``history`` and ``checkpoint``, ``optim`` and ``train`` (the one training
loop) with ``cudagraph``, ``runs`` (each chapter's settings per size, its experiments and its
full-size recipe) and ``reference`` (the recorded full-size runs).
"""

__version__ = "0.1.0"
