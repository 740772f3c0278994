"""Measuring models and text (chapters 1 and 5 to 8): losses, perplexity and bits per character through the
model interface (``metrics``), measures of generated text (``textmetrics``), the ``evaluate`` metrics
reimplemented offline (``hf_metrics``), chapter 7's bias probes (``bias``) and chapter 8's scaling-law fit
(``scaling``). Written against :class:`lmbook.interface.LanguageModel` only, so it imports no model."""
