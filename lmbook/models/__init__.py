"""The language models of the book, each meeting :class:`lmbook.interface.LanguageModel`: count-based n-grams
(``ngram``, chapter 1), recurrent models (``rnn``, chapter 2), the GPT (``gpt``), attention written out
(``attention``) and chapter 3's variants (``variants``), chapter 4's masked-LM encoder (``mlm``) and LoRA
adapters (``lora``), chapter 7's word embeddings (``embeddings``), chapter 8's Llama-style decoder (``llama``)
and int8 weights (``quantize``), chapter 9's vocabulary growth for new tokens (``vocab``), and conversion to
``transformers`` (``hf``)."""
