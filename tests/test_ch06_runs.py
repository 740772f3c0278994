"""Tests for chapter 6's runs (lmbook.runs.ch06_evaluation and ch06_generated) on tiny models and texts."""

from __future__ import annotations

import math

import pytest
import torch

from lmbook.evaluation import textmetrics
from lmbook.training.history import History
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.evaluation.metrics import LN2, TextNLL, score_text, token_nlls
from lmbook.models.ngram import NGramLM
from lmbook.runs import ch06_evaluation as ch06
from lmbook.runs import ch06_generated as generated
from lmbook.display.show import report
from lmbook.text.tokenizers import CharTokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n") * 6


def tiny_gpt(tokenizer: CharTokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def test_ngrams_are_scored_on_the_characters_the_neural_models_predict():
    model = NGramLM.fit(list(TEXT[:400]), n=3)
    text = TEXT[400:600]
    score = ch06.ngram_score(model, text)
    log_probs = model.log_probs(list(text))  # the first character (after the begin padding) ... the end token
    assert score.tokens == score.chars == len(text) - 1
    assert score.nats == pytest.approx(-math.fsum(log_probs) + log_probs[0] + log_probs[-1])
    assert ch06.ngram_size(model) == sum(len(f) for order in model.counts for f in order.values())


def board_rows() -> list[dict]:
    """Two n-gram rows fitted on the same text and scored with their intervals, as the scoreboard makes them."""
    train, held_out = TEXT[:500], TEXT[500:]
    rows = ch06.ngram_rows(ch06.RUNS["fast"].replace(ngram_orders=(1, 3)),
                           train, held_out, train[: len(held_out)])
    return rows


def test_the_scoreboard_rows_carry_intervals_over_speeches_and_the_table_sorts():
    rows = board_rows()
    assert [r["model"] for r in rows] == ["1-gram, interpolation", "1-gram, add-1", "3-gram, interpolation",
                                          "3-gram, add-1"]
    for r in rows:
        low, high = r["held_out_interval"]
        assert low < r["held_out"].bits_per_char < high
        assert len(r["held_out_pieces"]) == len([p for p in TEXT[500:].split("\n\n") if p])  # one piece a speech
        assert sum(c for _, c in r["held_out_pieces"]) == r["held_out"].chars
        assert math.fsum(n for n, _ in r["held_out_pieces"]) == pytest.approx(r["held_out"].nats)
    table = ch06.scoreboard_table(rows).data
    best = min(rows, key=lambda r: r["held_out"].bits_per_char)["model"]
    assert table.index(best) < table.index("1-gram, add-1")
    assert table.count("<tr>") == len(rows) + 1 and table.count("<th>") == 6  # narrow enough for the page
    facts = ch06.scoreboard_facts([{**r, "family": f} for r, f in zip(rows, ("n-gram", "neural") * 2)])
    assert facts["best_model"].data == best
    assert facts["best_lead_low"] <= facts["best_lead"] <= facts["best_lead_high"]
    assert ("wholly above zero" in facts["best_verdict"].data) == (facts["best_lead_low"] > 0)
    ax = ch06.plot_scoreboard(rows)
    assert [t.get_text() for t in ax.get_yticklabels()][0] == best


def test_the_pieces_of_a_bpe_like_tokenization_add_up():
    from lmbook.evaluation.metrics import nll_by_piece

    text = "ab\n\ncd e\n\nf"
    lengths = [2, 2, 3, 3, 1]  # "ab", "\n\n", "cd ", "e\n\n", "f": a token may hold the cut
    nll = torch.tensor([1.0, 2.0, 3.0, 4.0])  # the tokens after the first
    assert nll_by_piece(nll, lengths, text) == [(1.0, 2), (5.0, 6), (4.0, 1)]  # a token goes where it begins
    with pytest.raises(ValueError, match="characters"):
        nll_by_piece(nll, [2, 2, 3, 3, 2], text)
    with pytest.raises(ValueError, match="one NLL per token"):
        nll_by_piece(nll[:2], lengths, text)


def test_neural_rows_give_the_protocol_figure_and_its_pieces():
    from lmbook.evaluation.metrics import held_out_nlls, held_out_score

    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_gpt(tokenizer)
    score, nll = held_out_nlls(model, tokenizer, TEXT[:300])
    assert score == held_out_score(model, tokenizer, TEXT[:300])
    assert nll.shape == (299,) and float(nll.double().sum()) == pytest.approx(score.nats)


def test_zero_counts_read_as_words():
    assert generated.zeros_facts({"canonical": 24, "sacrebleu": 3, "of": 24})["zeros_canonical"].data == \
        "all 24 continuations"
    assert generated.zeros_facts({"canonical": 0, "sacrebleu": 2, "of": 2})["zeros_sacrebleu"].data == \
        "both continuations"


def test_calibration_of_a_tiny_gpt_and_its_sentence():
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_gpt(tokenizer)
    results = generated.calibration(model, tokenizer, TEXT[:300], temperatures=(0.5, 1.0, 2.0))
    assert list(results) == [0.5, 1.0, 2.0]
    one = results[1.0]
    assert one["reliability"].n == 299
    assert one["nll"] == pytest.approx(score_text(model, tokenizer, TEXT[:300], stride=4).cross_entropy, rel=1e-4)
    sweep = {"T = 1": {"perplexity": 20.0}, "human": {"perplexity": 25.0}}
    facts = generated.calibration_facts(results, sweep)
    assert facts["own_vs_human"].data == "below" and facts["t_cold"] == 0.5 and facts["t_hot"] == 2.0
    assert facts["ece_one"] == one["reliability"].ece
    assert facts["entropy_ppl"] == pytest.approx(math.exp(one["entropy"]))
    with pytest.raises(ValueError, match="temperature 1"):
        generated.calibration_facts({0.5: results[0.5]}, sweep)


def test_the_stride_sweep_scores_the_same_text_each_way():
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_gpt(tokenizer)
    sweep = ch06.stride_sweep(model, tokenizer, TEXT[:200], (16, 4, 1))
    assert sweep[16]["score"] == score_text(model, tokenizer, TEXT[:200])
    assert [sweep[s]["windows"] for s in (16, 4, 1)] == [13, 1 + math.ceil((199 - 16) / 4), 1 + 199 - 16]
    profile = ch06.position_profile(model, tokenizer, TEXT[:200])
    assert profile.shape == (16,)
    facts = ch06.stride_facts(sweep, profile)
    assert (facts["context"], facts["smallest_stride"], facts["stride_scored_chars"]) == (16, 1, 199)
    assert facts["min_context"] == 15


def test_the_stride_sentence_explains_a_best_stride_that_is_not_the_smallest():
    def sweep(bits: dict[int, float]) -> dict:
        return {s: {"score": TextNLL(b * math.log(2) * 100, 100, 100, 100), "windows": 64 // s, "seconds": 1.0}
                for s, b in bits.items()}

    rising = torch.tensor([3.0, 2.0, 1.5, 1.4, 1.45, 1.5])  # lowest at position 4: more context costs here
    facts = ch06.stride_facts(sweep({6: 2.60, 2: 2.503, 1: 2.508}), rising)
    why = facts["best_stride_why"].data
    assert why.startswith("not the smallest: in the right panel the loss is lowest at position 4 of the window")
    assert f"the last position costs {0.1 / math.log(2):.3f} bits more" in why
    assert "the strides up to 2 differ by at most 0.005 bits per character" in why
    falling = ch06.stride_facts(sweep({6: 2.60, 2: 2.52, 1: 2.51}), rising.sort(descending=True).values)
    assert falling["best_stride_why"].data == "the smallest stride, as the extra context would have it"


def test_prompts_end_at_word_ends_and_continuations_are_whole_words():
    pairs = generated.cut_prompts(TEXT, 5, 40, 30)
    assert len(pairs) == 5
    for prompt, truth in pairs:
        assert len(prompt) == 40 and prompt[-1].isspace()
        assert truth and len(truth) <= 30 and TEXT.index(prompt + truth) >= 0
    assert generated.whole_words("to be or no") == "to be or"
    assert generated.whole_words("unbroken") == "unbroken"
    with pytest.raises(ValueError, match="fewer prompts"):
        generated.cut_prompts(TEXT[:100], 5, 40, 30)


def test_candidates_and_their_scores():
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_gpt(tokenizer)
    pairs = generated.cut_prompts(TEXT, 4, 16, 30)
    outputs = generated.candidates(model, tokenizer, pairs, seed=0)
    assert set(outputs) >= {"true continuation", "model, greedy", "another passage", "its words shuffled"}
    assert all(len(texts) == 4 for texts in outputs.values())
    assert sorted(outputs["its words shuffled"][0].split()) == sorted(outputs["true continuation"][0].split())
    scores = generated.continuation_scores(pairs, outputs)
    truth = scores["true continuation"]
    assert {k: truth[k] for k in ("bleu", "bleu_canonical", "rouge1", "rougeL")} == {
        "bleu": pytest.approx(1.0), "bleu_canonical": pytest.approx(1.0), "rouge1": pytest.approx(1.0),
        "rougeL": pytest.approx(1.0)}
    assert truth["intervals"]["rougeL"] == pytest.approx((1.0, 1.0))  # every draw of the truth is the truth
    for s in scores.values():
        for key, (low, high) in s["intervals"].items():
            assert low - 1e-9 <= s[key] <= high + 1e-9 or key == "bleu"  # corpus BLEU is not a mean of the draws'
            assert low <= high
    assert scores["its words shuffled"]["rouge1"] == pytest.approx(1.0)
    assert set(generated.misleading_facts(scores)) >= {"salad_vs_passage_bleu", "loop_vs_passage_rouge1"}
    assert ("<td>true continuation</td><td>100.0 (100.0 to 100.0)</td><td>100.0</td><td>1.000 (1.000 to 1.000)</td>"
            in generated.scores_table(scores).data)


def test_text_measures_score_only_the_continuation():
    tokenizer = CharTokenizer.train(TEXT)
    model = tiny_gpt(tokenizer)
    prompt, out = TEXT[:40], TEXT[40:100]
    measures = generated.text_measures(model, tokenizer, [out, out], [prompt, prompt])
    # the continuation's tokens only, read with a stride of a quarter of the context, as the scoreboard reads
    nll = token_nlls(model, tokenizer.encode(prompt + out), stride=4)[-len(out) :]
    assert measures["perplexity"] == pytest.approx(math.exp(nll.double().mean().item()), rel=1e-5)
    assert measures["self_bleu"] == pytest.approx(1.0)  # two identical continuations
    assert measures["distinct_1"] == pytest.approx(textmetrics.distinct_n([out, out], 1))


def test_decoding_settings_name_greedy_and_top_p():
    run = ch06.RUNS["fast"].replace(temperatures=(0.0, 0.7), top_ps=(0.9,))
    assert generated.decoding_settings(run) == {"greedy": {"temperature": 0.0}, "T = 0.7": {"temperature": 0.7},
                                                "top-p 0.9": {"temperature": 1.0, "top_p": 0.9}}


def test_diversity_facts_compare_the_settings_with_the_human_text():
    def m(ppl, d2):
        return {"perplexity": ppl, "distinct_1": d2 / 2, "distinct_2": d2, "self_bleu": 1 - d2, "repetition": 0.0}

    sweep = {"greedy": m(1.5, 0.1), "T = 0.5": m(4.0, 0.5), "T = 1": m(13.0, 0.9), "top-p 0.9": m(9.0, 0.8),
             "human": m(10.0, 0.85)}
    facts = generated.diversity_facts(sweep)
    assert facts["greedy_vs_human"].data == "below"
    assert (facts["ppl_trend"].data, facts["distinct_trend"].data) == ("rises at every step",) * 2
    assert (facts["hottest"].data, facts["closest_to_human"].data) == ("T = 1", "top-p 0.9")
    assert facts["greedy_rank"].data == "no other setting tried writes text the model finds likelier"
    sweep.update({"T = 0.5": m(1.4, 0.5), "top-p 0.5": m(1.3, 0.2)})  # the chapter's run: sampling below greedy
    assert generated.diversity_facts(sweep)["greedy_rank"].data == (
        "settings that sample write text the model finds likelier still: top-p 0.5 (1.30), T = 0.5 (1.40)")
    assert "<td>human</td><td>10.00</td><td>0.425</td><td>0.850</td><td>0.150</td><td>0%</td>" in (
        generated.diversity_table(sweep).data)


def test_a_crossing_is_found_between_evaluations_or_extrapolated_and_said_so():
    seconds, bits = [0.0, 10.0, 20.0, 40.0], [6.0, 3.0, 2.4, 2.0]
    assert ch06.crossing(seconds, bits, 2.7) == pytest.approx(15.0)  # halfway from 3.0 to 2.4
    assert ch06.crossing(seconds, bits, 1.5) is None
    falling = [0.0, 10.0, 100.0, 1000.0]
    line = ch06.extrapolated_crossing(falling, [6.0, 3.0, 2.5, 2.0], 1.5)  # 0.5 bits per decade from 100 s on
    assert line == pytest.approx(10_000.0, rel=1e-6)
    assert ch06.extrapolated_crossing(falling, [6.0, 3.0, 2.5, 2.6], 1.5) is None  # the second half rises


def test_the_crossover_sentences_follow_the_record():
    from lmbook.runs.reference import Record

    def curve(bits):
        return History(eval_steps=list(range(4)), eval_loss={"val": [b * LN2 for b in bits]},
                       eval_seconds=[0.0, 10.0, 100.0, 1000.0])

    record = Record("ch03", "cpu", {}, "hash", {"gpt": curve([6.0, 3.0, 2.0, 1.8]), "gru": curve([6.0, 3.0, 2.5, 2.2])})
    facts = ch06.crossover_facts(record, 2.1, "interpolated 5-gram")
    verdict = facts["crossover_verdict"].data
    assert facts["crossover_gpt"] == pytest.approx(91.0) and math.isnan(facts["crossover_gru"])
    report(facts)  # every value is one the prose can quote
    assert verdict == (
        "On these windows the interpolated 5-gram scores 2.100 bits per character. The GPT passes it after 91 s of "
        "training and ends at 1.800. The GRU does not pass it in its 1,000 s (it ends at 2.200); a straight line in "
        "log-seconds through the second half of its curve would reach it after about 2,154 s. The GRU's time is an "
        "extrapolation, not a measurement.")
    assert "No equal-time run is recorded" in ch06.crossover_facts(None, None, "x")["crossover_verdict"].data


def test_the_ngram_is_scored_on_the_windows_the_record_evaluated(shakespeare):
    from lmbook.text.data import shakespeare_chars
    from lmbook.runs.reference import Record

    record = Record("ch03", "cpu", {"eval_block": 8, "eval_batch": 3, "eval_iters": 2, "eval_seed": 5}, "hash")
    windows = ch06.record_windows(record)
    _, _, val = shakespeare_chars()
    tokenizer = shakespeare_chars()[0]
    held_out = tokenizer.decode(val.tolist())
    assert len(windows) == 6 and all(len(w) == 9 and w in held_out for w in windows)
    assert windows == ch06.record_windows(record)  # the same windows every time
    model = NGramLM.fit(list(held_out[:5000]), n=3)
    expected = sum(ch06.ngram_score(model, w).nats for w in windows) / (6 * 8) / LN2
    assert ch06.windows_bits(model, windows) == pytest.approx(expected)
