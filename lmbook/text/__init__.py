"""Text in (chapter 1 and after): the corpus and its splits and batches (``data``), the tokenizers
(``tokenizers``), word splitting (``words``), chapter 4's speeches by speaker (``speeches``) and chapter 9's graded
instructions (``instructions``) and chat template (``chat``)."""
