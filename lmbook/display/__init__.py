"""What the chapters show: training curves and attention maps (``viz``), tables, sentences and code
(``show``), diagrams drawn from the code (``diagrams``), decoding's coloured tokens (``decoding_viz``) and
the interactive widgets (``widgets``)."""
