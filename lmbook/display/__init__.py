"""What the chapters show: training curves and attention maps (``viz``), tables, sentences and code
(``show``), diagrams drawn from the code (``diagrams``), decoding's coloured tokens (``decoding_viz``), a
conversation as chat bubbles and as the template the model reads (``chat_view``, chapter 9) and the
interactive widgets (``widgets``: the attention explorer, the generation playground, the chat playground)."""
