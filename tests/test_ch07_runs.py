"""Chapter 7's runs: the sweep's settings span what the chapter promises, a tiny sweep runs end to end, sampled
words are reproducible, and the comparison table is built from rows, not typed."""

from __future__ import annotations

import math

import pytest
import torch

from lmbook.models.gpt import GPT
from lmbook.interface import num_params
from lmbook.runs.ch07_questions import (
    EMBEDDING_RUNS,
    TIMELINE,
    WORD_GPT_RUNS,
    SampleRun,
    _row,
    comparison_table,
    sample_words,
)
from lmbook.runs.ch07_sweep import SWEEP, non_embedding_params, size_sweep
from lmbook.text.tokenizers import CharTokenizer


@pytest.mark.parametrize("size", ["full", "fast"])
def test_the_sweep_has_five_sizes_over_thirty_fold_with_one_budget(size):
    sweep = SWEEP[size]
    runs = sweep.runs()
    assert len(runs) >= 5
    with torch.device("meta"):  # shapes only: nothing is allocated
        counts = [num_params(GPT(run.model_config(65))) for run in runs]
    assert counts == sorted(counts) and counts[-1] >= 30 * counts[0]
    assert len({(r.max_steps, r.batch_size, r.block_size, r.lr) for r in runs}) == 1  # same data and step budget
    assert WORD_GPT_RUNS[size].n_embd == EMBEDDING_RUNS[size].dim  # the word GPT's table has Word2Vec's width


def test_a_tiny_sweep_runs_end_to_end():
    torch.manual_seed(0)
    data = torch.randint(0, 11, (3000,))
    tiny = SWEEP["fast"].replace(
        base=SWEEP["fast"].base.replace(max_steps=4, eval_interval=4, eval_iters=1, warmup_steps=1, batch_size=4,
                                        block_size=8),
        shapes=((1, 1, 8), (1, 2, 16)), train_chars=2000)
    results = size_sweep(tiny, data[:2500], data[2500:], 11, device="cpu")
    assert [r["shape"] for r in results] == [(1, 1, 8), (1, 2, 16)]
    for r in results:
        assert r["tokens"] == 4 * 4 * 8 and r["params"] > r["non_embedding"] > 0
        assert set(r["history"].eval_loss) == {"train", "val"} and math.isfinite(r["val_loss"])
    assert results[1]["flops"] > results[0]["flops"]


def sweep_rows(losses: list[tuple[float, float]]) -> list[dict]:
    """Made-up sweep rows (held-out and training loss per size), ten times the parameters each size up."""
    return [{"shape": (1, 1, 8 * (i + 1)), "params": 1000 * 10**i, "tokens": 20_000, "flops": 1e9 * 10**i,
             "val_loss": v, "train_loss": tr, "seconds": 1.0} for i, (v, tr) in enumerate(losses)]


def test_the_sweep_sentences_follow_the_rows(capsys):
    from lmbook.runs.ch07_sweep import show_sweep, sweep_facts

    rows = sweep_rows([(2.0, 1.9), (1.0, 0.8), (0.5, 0.2)])  # falls as N^-0.301 at every size
    facts = sweep_facts(rows, SWEEP["fast"], 10_000)
    assert facts["sweep_fit"].data.endswith("fall as $N^{-0.301}$") and facts["sweep_best_params"] == 100_000
    assert facts["sweep_verdict"].data.startswith("The largest model is the best")
    assert facts["sweep_gap_change"].data == "grows, from 0.100 to 0.300 nats"
    assert facts["sweep_gap_trend"].data == "rises at every step" and facts["sweep_epochs"] == 2.0
    assert facts["sweep_tpp_small"] == 20 and facts["sweep_span"] == 100
    worse = sweep_facts(sweep_rows([(2.0, 1.9), (1.5, 1.0), (1.7, 0.5)]), SWEEP["fast"], 10_000)
    assert worse["sweep_verdict"].data == ("Beyond 10,000 parameters the held-out loss stops falling: the larger "
                                           "models end at 1.700.")
    assert worse["sweep_pay_off"].data.startswith("here the larger ones no longer pay off")
    flat = sweep_facts(sweep_rows([(1.0, 0.9), (1.5, 1.0)]), SWEEP["fast"], 10_000)
    assert flat["sweep_fit"].data.startswith("The smallest model is already the best")
    ax, bx = show_sweep(rows, alpha=0.076)
    assert len(ax.get_lines()) == 3 and len(bx.texts) == 3
    assert capsys.readouterr().out.count("\n") == 4  # a header and a row per size


def test_non_embedding_parameters_leave_out_both_tables():
    model = GPT(SWEEP["fast"].runs()[0].model_config(65))
    assert non_embedding_params(model) == num_params(model) - 65 * 16 - 32 * 16


def test_sampled_words_are_reproducible():
    tokenizer = CharTokenizer.train("he said she said\n and he ran ")
    torch.manual_seed(0)
    model = GPT(SWEEP["fast"].runs()[0].replace(block_size=8).model_config(tokenizer.vocab_size))
    settings = SampleRun(streams=3, length=20, temperature=1.0)
    first = sample_words(model, tokenizer, settings, seed=1)
    assert len(first) == 3 and first == sample_words(model, tokenizer, settings, seed=1)
    assert all(w == w.lower() and w[0].isalpha() for stream in first for w in stream)


def test_comparison_table_has_one_linked_row_each():
    rows = [_row("GPT", "causal", "character", "ch03_attention", "yours, fast size", 1000, math.log(2) * 2, 5e3, "cpu"),
            _row("encoder", "masked", "BPE token", "ch04_finetuning", "yours, fast size", 2000, 3.0, 4e3, "cpu", 3.0)]
    assert rows[0]["bits_per_char"] == pytest.approx(2.0) and rows[1]["bits_per_char"] is None
    table, legend = comparison_table(rows).split("\n\n")
    table = table.splitlines()
    assert len(table) == 4 and all(line.count("|") == table[0].count("|") for line in table)
    assert "[chapter 3](ch03_attention.ipynb)" in table[2] and "[chapter 4](ch04_finetuning.ipynb)" in table[3]
    assert "| 2.00 |" in table[2] and "| - |" in table[3] and "| 5,000 | causal |" in table[2]
    assert legend.startswith("*causal*: predicts the next token") and "*masked*" in legend
    assert legend.endswith("training speeds measured on cpu.")
    elsewhere = comparison_table([rows[0], {**rows[1], "device": "cuda"}]).split("\n\n")[0].splitlines()
    assert "| device |" in elsewhere[0] and "| 5,000 | cpu | causal |" in elsewhere[2]


def test_the_timeline_is_in_order_and_cites_the_bibliography():
    from pathlib import Path

    bib = (Path(__file__).resolve().parents[1] / "references.bib").read_text(encoding="utf-8")
    dates = [m.date for m in TIMELINE]
    assert dates == sorted(dates)
    assert all(f"{{{m.cite}," in bib for m in TIMELINE)


def test_recorded_rows_read_each_chapters_record(monkeypatch):
    import json

    from lmbook.training.history import History
    from lmbook.runs import ch04_finetune
    from lmbook.runs import ch07_questions as ch07

    from lmbook.runs.reference import Record

    environment = {"device": "NVIDIA H100"}
    recipe = json.loads(json.dumps(ch04_finetune.RUNS["fast"].to_dict()))  # as lmbook/references/*.json holds it
    cpu = {"device": "cpu (2 threads, x86_64)", "threads": 2}
    records = {
        "ch02": {"gpu": Record("ch02", "gpu", {}, "hash", environment=environment, results={"runs": {
            "lstm": {"params": 1000, "val_loss": 1.5, "tokens_per_second": 2e5},
            "rnn unclipped": {"params": 1000, "val_loss": 1.9, "tokens_per_second": 2e5}}})},
        "ch03": {"gpu": Record("ch03", "gpu", {}, "hash", environment=environment, results={
            "params": 2000, "val_loss_whole_split": 1.4, "tokens_per_second": 3e5}),
                 "cpu": Record("ch03", "cpu", {}, "hash", environment=cpu, results={"runs": {
                     "gpt": {"params": 800, "val_loss": 1.6, "tokens_per_second": 7e3},
                     "gru": {"params": 600, "val_loss": 1.55, "tokens_per_second": 6e3}}})},
        "ch04": {"gpu": Record("ch04", "gpu", recipe, "hash", environment=environment, histories={
            name: History(eval_steps=[10], eval_loss={"val": [loss]}, tokens_per_second=4e5)
            for name, loss in (("gpt", 4.0), ("mlm", 5.0))})},
    }
    monkeypatch.setattr(ch07.reference, "load_all", lambda name: records.get(name, {}))
    rows = ch07.recorded_rows()
    assert [(r["model"], r["objective"], r["run"]) for r in rows] == [
        ("LSTM", "causal", "recorded, full size"), ("GPT", "causal", "recorded, full size"),
        ("GPT", "causal", "recorded, two CPU cores"), ("GRU", "causal", "recorded, two CPU cores"),
        ("GPT", "causal", "recorded, full size"), ("encoder (a small BERT)", "masked", "recorded, full size")]
    assert rows[0]["bits_per_char"] == pytest.approx(1.5 / math.log(2)) and rows[5]["bits_per_char"] is None
    assert rows[3]["val_loss"] == 1.55 and rows[3]["device"] == cpu["device"]
    assert rows[5]["params"] > rows[4]["params"] > 0  # the encoder has one more token, the mask
    rows = [r for r in rows if r["run"] == "recorded, full size"]
    assert all(r["device"] == "NVIDIA H100" and r["run"] == "recorded, full size" for r in rows)


# --- pretrained vectors or learned ones: the word GPT from Word2Vec's table against a random start ---------
def tiny_word_corpus():
    from lmbook.models.embeddings import Vocabulary
    from lmbook.runs.ch07_questions import WordCorpus

    torch.manual_seed(0)
    words_ = [f"w{i}" for i in torch.randint(0, 30, (1500,)).tolist()]
    vocab = Vocabulary.build(words_, 1)
    return WordCorpus(vocab, words_[:1200], vocab.encode(words_[:1200]), vocab.encode(words_[1200:]))


def test_start_from_copies_the_table_scaled_and_tied():
    from lmbook.runs.ch07_questions import start_from
    from lmbook.runs.common import make_char_gpt

    run = WORD_GPT_RUNS["fast"].replace(n_layer=1, n_embd=16, n_head=2, block_size=8)
    model = make_char_gpt(run, 31, "cpu", 0)
    table = torch.randn(31, 16) * 3 + 1
    start_from(model, table)
    expected = (table - table.mean()) * (0.02 / table.std())
    assert torch.allclose(model.wte.weight, expected) and model.lm_head.weight is model.wte.weight
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=1e-4)
    same = make_char_gpt(run, 31, "cpu", 0)
    assert torch.equal(start_from(same, None).wte.weight, make_char_gpt(run, 31, "cpu", 0).wte.weight)
    with pytest.raises(ValueError, match="n_embd"):
        start_from(model, torch.randn(31, 8))


def test_init_comparison_pairs_the_starts_seed_by_seed():
    from lmbook.runs.ch07_questions import InitRun, init_comparison, init_facts

    corpus = tiny_word_corpus()
    run = WORD_GPT_RUNS["fast"].replace(n_layer=1, n_embd=16, n_head=2, block_size=8)
    init = InitRun(max_steps=3, batch_size=4, eval_iters=1, seeds=(0, 1, 2))
    table = torch.randn(len(corpus.vocab), 16)
    losses = init_comparison(run, init, corpus, {"random": None, "Word2Vec": table}, device="cpu")
    assert set(losses) == {"random", "Word2Vec"} and all(len(v) == 3 for v in losses.values())
    assert losses == init_comparison(run, init, corpus, {"random": None, "Word2Vec": table}, device="cpu")
    assert losses["random"] != losses["Word2Vec"]
    facts = init_facts({"random": [5.0, 5.2, 5.1], "Word2Vec": [4.5, 4.8, 4.6]})
    mean, low, high = facts["Word2Vec"]
    assert mean == pytest.approx(0.4667, abs=1e-3) and low > 0
    assert "wholly above zero: a measured head start" in facts["Word2Vec_verdict"]
    mixed = init_facts({"random": [5.0, 5.2, 5.1], "Word2Vec": [5.1, 5.0, 5.15]})
    assert "holds zero" in mixed["Word2Vec_verdict"]
    with pytest.raises(KeyError, match="random"):
        init_facts({"Word2Vec": [1.0]})


def counted_parts(seed: int, lean: float, he: float = 0.8) -> list:
    """20 texts of 100 mentions, ``he`` of them *he*-words; a mention is followed by its group's own word
    ("sword" or "fan") with probability ``lean``, else by one of three words that follow both alike."""
    import random

    from lmbook.evaluation.bias import count_association

    rng = random.Random(seed)
    out = []
    for _ in range(20):
        tokens = []
        for _ in range(100):
            group = "he" if rng.random() < he else "she"
            own = "sword" if group == "he" else "fan"
            tokens += [group, own if rng.random() < lean else rng.choice(["and", "to", "the"])]
        out.append(count_association(tokens))
    return out


def test_amplification_facts_say_what_the_intervals_support(capsys):
    from lmbook.evaluation.bias import merge
    from lmbook.runs.ch07_bias import amplification_facts

    corpus = merge(counted_parts(0, 0.3))
    alike = amplification_facts(corpus, counted_parts(1, 0.3))
    assert alike["bias_low"] <= alike["bias_share_corpus"] <= alike["bias_high"]
    assert alike["bias_share_verdict"].data.startswith("The corpus's share lies inside the sample's interval")
    assert alike["bias_amp_low"] <= 0 <= alike["bias_amp_high"] and alike["bias_streams"] == 20
    assert alike["bias_amp_verdict"].data.startswith("zero lies inside it")
    assert "sample's share of he: 95% interval" in capsys.readouterr().out
    leaning = amplification_facts(corpus, counted_parts(2, 0.9, he=0.95), level=0.9, show=False)
    assert leaning["bias_share_verdict"].data.endswith("mentions the *he*-group more often than its training text does")
    assert leaning["bias_amp_low"] > 0 and leaning["bias_amp_verdict"].data.startswith("the whole interval lies above")
    assert leaning["bias_level"] == pytest.approx(90) and capsys.readouterr().out == ""


def test_log_odds_rows_and_their_sentence():
    from lmbook.evaluation.bias import merge
    from lmbook.runs.ch07_bias import log_odds_facts, log_odds_rows, plot_log_odds

    parts = counted_parts
    corpus_parts, sample_parts = parts(0, 0.3), parts(1, 0.3)
    rows = log_odds_rows(merge(corpus_parts), merge(sample_parts), corpus_parts, sample_parts, n_words=5, samples=100)
    by_word = {r["word"]: r for r in rows}
    assert set(by_word) == {"and", "to", "the", "sword", "fan"}
    for word in ("and", "to", "the"):
        r = by_word[word]
        assert r["share_corpus"] > 0.7  # the raw share leans "he": the base rate
        assert r["corpus_interval"][0] < 0 < r["corpus_interval"][1]
    assert by_word["sword"]["corpus_interval"][0] > 0 and by_word["fan"]["corpus_interval"][1] < 0
    summary = log_odds_facts(rows)["log_odds_summary"].data
    assert "puts all 5 words on the *he* side" not in summary  # "fan" follows she-words
    assert "*and*" in summary and "3 of the 5 words have an interval that holds zero" in summary
    assert plot_log_odds(rows).get_xlabel().startswith("log-odds")
    assert log_odds_facts([])["log_odds_summary"].data.startswith("No follower word")
