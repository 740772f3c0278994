"""Turning a model into text (chapters 2 to 5): what every strategy shares, settings, logits processors and
reading the model (``shared``), the truncation filters after top-p (``warpers``); greedy decoding and sampling
(``generate``, the one entry point), beam search (``beam``), contrastive search (``contrastive``) and speculative
decoding, greedy and sampled (``speculative``); an assistant's replies to conversations through
the chat template, batched or streamed (``chat``, chapter 9). Models are read only through
:class:`lmbook.interface.LanguageModel`."""
