"""The chapters' runs: what each chapter trains, at each size, and its reference recipes.

The groups below (:mod:`lmbook.models`, :mod:`lmbook.training`, ...) say what a model is and how it trains; the
modules here say what a chapter does with it: one module per chapter, each with its settings per size in
``RUNS`` (``{"full": ..., "fast": ...}``, chosen by ``lmbook.runtime.pick(**RUNS)``), its experiments and its
reference recipes: ``REFERENCE`` (settings per level, ``"cpu"`` and ``"gpu"``), ``RECIPE_VERSION`` and
``record_<level>(rec)``, which ``python -m lmbook.runs.reference record`` runs through a resumable
:class:`~lmbook.runs.recording.Recording`. No chapter's module imports another's: what they share is in
:mod:`lmbook.runs.common` (the settings classes, the character-level models of chapters 2 and 3), and the
models a later chapter reuses come from :mod:`lmbook.runs.zoo`, which trains them with their chapter's code.

- :mod:`lmbook.runs.ch01_background`: the n-gram orders and tokenizer sizes of chapter 1;
- :mod:`lmbook.runs.quickstart`: the quick start's GPT;
- :mod:`lmbook.runs.ch02_rnn`: RNN, LSTM and GRU on characters;
- :mod:`lmbook.runs.ch03_gpt`: the character-level GPT, its position tables and its LayerNorm placements;
  :mod:`lmbook.runs.ch03_speedruns`: its speed runs, recorded by the benchmarks, as the page reads them;
- :mod:`lmbook.runs.ch03b_seq2seq`: an encoder–decoder against a GPT on one task, and a broken
  ``nn.Transformer`` mended;
- :mod:`lmbook.runs.ch04_finetune`: pretraining, domain adaptation, a labelled task;
- :mod:`lmbook.runs.ch05_generation`: decoding strategies, the cache's speed, speculative decoding;
- :mod:`lmbook.runs.ch06_evaluation`, :mod:`lmbook.runs.ch06_generated`: every model scored, generated text scored;
- :mod:`lmbook.runs.ch07_sweep`: the sweep of GPT sizes; :mod:`lmbook.runs.ch07_bias`: the association corrected
  for the base rate; :mod:`lmbook.runs.ch07_questions`: the rest of chapter 7;
- :mod:`lmbook.runs.ch08_architecture`, :mod:`lmbook.runs.ch08_decoding`, :mod:`lmbook.runs.ch08_scaling`:
  GPT-2 turned into Llama one change at a time, the cache and int8 weights, the scaling grid;
- :mod:`lmbook.runs.ch09_assistant`: a base model tuned into an assistant (SFT, LoRA, DPO, refusals);
- :mod:`lmbook.runs.recording` and :mod:`lmbook.runs.reference`: recording a recipe, resumably, and the records.
"""
