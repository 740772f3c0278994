"""lmbook: the code of the book *Language models, runnable*, from n-grams to GPT.

Grouped by the book's parts, each group importing only those before it:

- at the top, ``runtime`` (the environment, device, size, seeds), ``config`` (presets) and ``interface``
  (what every language model offers, written as code);
- :mod:`lmbook.text`: the corpus, tokenizers, words and speeches;
- :mod:`lmbook.evaluation`: losses, perplexity, bits per character and text metrics, through the interface;
- :mod:`lmbook.models`: n-grams, recurrent models, the GPT and its variants, the masked-LM encoder, LoRA,
  word embeddings and conversion to ``transformers``;
- :mod:`lmbook.training`: the one training loop, its record and checkpoints;
- :mod:`lmbook.decoding`: generation, beam search and speculative decoding;
- :mod:`lmbook.display`: what the chapters show (tables, prose, figures, diagrams, widgets);
- :mod:`lmbook.runs`: each chapter's settings and experiments, the models later chapters reuse and the
  recorded reference runs.
"""

__version__ = "0.1.0"
