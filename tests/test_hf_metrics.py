"""Tests for lmbook.evaluation.hf_metrics: evaluate metrics that run with the network cut and no Hub cache, and give
the numbers of the libraries they wrap (sacrebleu, rouge_score) and of lmbook's written-out measures."""

from __future__ import annotations

import math
import socket

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from lmbook.evaluation import hf_metrics, textmetrics
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.evaluation.metrics import score_text
from lmbook.text.tokenizers import CharTokenizer, FastBPETokenizer

PREDICTIONS = ["The cat sat on the mat by the door.", "It was the best of times, it was the worst."]
REFERENCES = [["The cat was sitting on the mat near the door.", "A cat sat on the mat."],
              ["It was the best of times, it was the worst of times.", "It was the best of times."]]
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 3


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network at all, and an empty Hugging Face home: any download or Hub look-up fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a metric tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def metric(cls, tmp_path, **kwargs):
    return cls(cache_dir=str(tmp_path / "metrics"), **kwargs)


def test_bleu_is_sacrebleus(tmp_path):
    out = metric(hf_metrics.Bleu, tmp_path).compute(predictions=PREDICTIONS, references=REFERENCES)
    theirs = sacrebleu.corpus_bleu(PREDICTIONS, [list(s) for s in zip(*REFERENCES)])
    assert out["score"] == pytest.approx(theirs.score, rel=1e-12)
    assert (out["counts"], out["totals"], out["sys_len"], out["ref_len"]) == (
        theirs.counts, theirs.totals, theirs.sys_len, theirs.ref_len)
    assert out["score"] == pytest.approx(100 * textmetrics.corpus_bleu(PREDICTIONS, REFERENCES).score, rel=1e-12)
    one_reference = metric(hf_metrics.Bleu, tmp_path).compute(
        predictions=PREDICTIONS, references=[r[0] for r in REFERENCES], smooth_method="none")
    assert one_reference["score"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [[r[0] for r in REFERENCES]], smooth_method="none").score)


def test_bleu_needs_as_many_references_for_every_prediction(tmp_path):
    with pytest.raises(ValueError, match="as many references"):
        metric(hf_metrics.Bleu, tmp_path).compute(predictions=PREDICTIONS, references=[REFERENCES[0], ["one"]])


def test_rouge_is_rouge_scores(tmp_path):
    references = [r[0] for r in REFERENCES]
    out = metric(hf_metrics.Rouge, tmp_path).compute(predictions=PREDICTIONS, references=references,
                                                     use_aggregator=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    for i, (p, r) in enumerate(zip(PREDICTIONS, references)):
        theirs = scorer.score(r, p)
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            assert out[key][i] == pytest.approx(theirs[key].fmeasure)
        assert out["rouge2"][i] == pytest.approx(textmetrics.rouge_n(p, r, 2).fmeasure)
        assert out["rougeL"][i] == pytest.approx(textmetrics.rouge_l(p, r).fmeasure)
    # several references: the best-matching one counts; aggregated: the bootstrap median, seeded
    multi = metric(hf_metrics.Rouge, tmp_path).compute(predictions=PREDICTIONS, references=REFERENCES,
                                                       use_aggregator=False, rouge_types=["rouge1"])
    best = [max(scorer.score(r, p)["rouge1"].fmeasure for r in refs) for p, refs in zip(PREDICTIONS, REFERENCES)]
    assert multi["rouge1"] == pytest.approx(best)
    runs = [metric(hf_metrics.Rouge, tmp_path, seed=0).compute(predictions=PREDICTIONS, references=references)
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert min(out["rouge1"]) <= runs[0]["rouge1"] <= max(out["rouge1"])


def test_diversity_and_repetition_are_the_written_out_measures(tmp_path):
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog barked, a dog barked, a dog barked,"]
    distinct = metric(hf_metrics.DistinctN, tmp_path).compute(predictions=texts, n=[1, 2, 3])
    assert distinct == {f"distinct_{n}": pytest.approx(textmetrics.distinct_n(texts, n)) for n in (1, 2, 3)}
    self_bleu = metric(hf_metrics.SelfBleu, tmp_path).compute(predictions=texts)["self_bleu"]
    assert self_bleu == pytest.approx(textmetrics.self_bleu(texts), rel=1e-12)  # sacrebleu against lmbook's own
    repetition = metric(hf_metrics.Repetition, tmp_path).compute(predictions=texts)
    assert repetition == {"repetition": pytest.approx(1 / 3), "phrase_lengths": [0, 0, 4]}  # "a dog barked ,"


def test_metrics_accumulate_batches_as_evaluate_metrics_do(tmp_path):
    bleu = metric(hf_metrics.Bleu, tmp_path)
    for p, r in zip(PREDICTIONS, REFERENCES):
        bleu.add_batch(predictions=[p], references=[r])
    assert bleu.compute()["score"] == pytest.approx(
        metric(hf_metrics.Bleu, tmp_path).compute(predictions=PREDICTIONS, references=REFERENCES)["score"])
    assert isinstance(hf_metrics.load("rouge"), hf_metrics.Rouge)
    with pytest.raises(ValueError, match="no metric 'bertscore'"):
        hf_metrics.load("bertscore")


def char_model():
    tokenizer = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    return model, tokenizer


def test_perplexity_slides_a_window_over_each_text(tmp_path):
    model, tokenizer = char_model()
    texts = [TEXT, TEXT[:100]]
    out = metric(hf_metrics.Perplexity, tmp_path).compute(predictions=texts, model=model, tokenizer=tokenizer,
                                                          stride=8)
    scores = [score_text(model, tokenizer, t, stride=8) for t in texts]
    assert out["perplexities"] == pytest.approx([s.perplexity for s in scores], rel=1e-6)
    assert out["mean_perplexity"] == pytest.approx(sum(s.perplexity for s in scores) / 2, rel=1e-6)
    pooled = scores[0] + scores[1]
    assert out["tokens"] == len(TEXT) - 1 + 99
    assert out["perplexity"] == pytest.approx(math.exp(pooled.nats / pooled.tokens), rel=1e-6)
    assert out["bits_per_char"] == pytest.approx(pooled.nats / math.log(2) / pooled.chars, rel=1e-6)


def test_perplexity_of_a_local_transformers_model(tmp_path):
    """A model saved by save_pretrained is read from its folder, never from the Hub."""
    from lmbook.models.hf import to_hf

    bpe = FastBPETokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    folder = tmp_path / "local-model"
    to_hf(model).save_pretrained(folder)
    bpe.to_transformers().save_pretrained(folder)
    out = metric(hf_metrics.Perplexity, tmp_path).compute(predictions=[TEXT], model=str(folder))
    assert out["perplexity"] == pytest.approx(score_text(model, bpe, TEXT).perplexity, rel=1e-5)


@pytest.mark.parametrize(
    "cls, inputs, error, match",
    [
        (hf_metrics.Bleu, lambda m, t: {"predictions": [], "references": []}, ValueError, "empty"),
        (hf_metrics.Bleu, lambda m, t: {"predictions": ["a b"], "references": ["a", "b"]}, ValueError, "as many"),
        (hf_metrics.Rouge, lambda m, t: {"predictions": "a b", "references": ["a b"]}, TypeError, "list of texts"),
        (hf_metrics.DistinctN, lambda m, t: {"predictions": ["a"], "references": ["a"]}, ValueError, "no references"),
        (hf_metrics.SelfBleu, lambda m, t: {"predictions": ["alone"]}, ValueError, "at least 2"),
        (hf_metrics.Perplexity, lambda m, t: {"predictions": [TEXT]}, ValueError, "model="),
        (hf_metrics.Perplexity, lambda m, t: {"predictions": [TEXT], "model": "gpt2"}, ValueError, "local directory"),
        (hf_metrics.Perplexity, lambda m, t: {"predictions": ["short"], "model": m, "tokenizer": t}, ValueError,
         "shorter than one window"),
        (hf_metrics.Perplexity, lambda m, t: {"predictions": [TEXT], "model": m, "tokenizer": t, "stride": 40},
         ValueError, "stride"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, cls, inputs, error, match):
    with pytest.raises(error, match=match):
        metric(cls, tmp_path).compute(**inputs(*char_model()))


# --- References, predictions and settings of every kind ----------------------------------------
@pytest.mark.parametrize("cls", [hf_metrics.Bleu, hf_metrics.Rouge])
@pytest.mark.parametrize(
    "inputs, error, match",
    [
        ({"predictions": ["a b", "c d"], "references": [["a b"], []]}, ValueError, "prediction 1 .*empty"),
        ({"predictions": ["a b"], "references": [[]]}, ValueError, "prediction 0 .*empty"),
        ({"predictions": ["a b"]}, ValueError, "needs references"),
        ({"predictions": ["a b"], "references": "a b"}, TypeError, "references must be a list"),
        ({"predictions": ["a b"], "references": [3]}, TypeError, "reference"),
        ({"predictions": ["a b"], "references": [["a b", None]]}, TypeError, "reference"),
        ({"predictions": [3], "references": ["a b"]}, TypeError, "prediction"),
        ({"predictions": [None], "references": ["a b"]}, TypeError, "prediction"),
        ({"predictions": [["a", "b"]], "references": ["a b"]}, TypeError, "prediction"),
        ({"predictions": ["a b", "c"], "references": ["a b"]}, ValueError, "as many"),
        ({"predictions": None, "references": ["a b"]}, ValueError, "predictions"),
    ],
)
def test_references_and_predictions_are_checked(tmp_path, cls, inputs, error, match):
    with pytest.raises(error, match=match):
        metric(cls, tmp_path).compute(**inputs)
    adder = metric(cls, tmp_path)
    if inputs.get("predictions") is not None and "references" in inputs:
        with pytest.raises(error, match=match):
            adder.add_batch(**inputs)  # the same check when the inputs come in batches


def test_empty_strings_get_the_libraries_scores(tmp_path):
    """sacrebleu and rouge_score define a score for an empty text (0): so do the metrics."""
    predictions, references = ["", "the cat sat"], ["the cat sat", ""]
    bleu = metric(hf_metrics.Bleu, tmp_path).compute(predictions=predictions, references=references)
    assert bleu["score"] == sacrebleu.corpus_bleu(predictions, [references]).score
    rouge = metric(hf_metrics.Rouge, tmp_path).compute(predictions=predictions, references=references,
                                                       use_aggregator=False)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"])
    assert rouge == {k: [scorer.score(r, p)[k].fmeasure for p, r in zip(predictions, references)]
                     for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")} == {k: [0.0, 0.0] for k in rouge}
    assert metric(hf_metrics.Repetition, tmp_path).compute(predictions=[""]) == {"repetition": 0.0,
                                                                                 "phrase_lengths": [0]}
    with pytest.raises(ValueError, match="no tokens"):
        metric(hf_metrics.DistinctN, tmp_path).compute(predictions=["", " "])


@pytest.mark.parametrize(
    "cls, settings, error, match",
    [
        (hf_metrics.DistinctN, {"n": True}, TypeError, "n must be an integer"),  # was distinct_True
        (hf_metrics.DistinctN, {"n": 2.0}, TypeError, "n must be an integer"),
        (hf_metrics.DistinctN, {"n": None}, TypeError, "n must be an integer"),
        (hf_metrics.DistinctN, {"n": [1, True]}, TypeError, "n must be an integer"),
        (hf_metrics.DistinctN, {"n": []}, ValueError, "n "),
        (hf_metrics.DistinctN, {"n": 0}, ValueError, ">= 1"),
        (hf_metrics.DistinctN, {"per": "words"}, ValueError, "per"),
        (hf_metrics.SelfBleu, {"max_order": True}, TypeError, "max_order must be an integer"),
        (hf_metrics.SelfBleu, {"max_order": 0}, ValueError, "max_order"),
        (hf_metrics.Repetition, {"min_repeats": 3.0}, TypeError, "min_repeats must be an integer"),
        (hf_metrics.Repetition, {"max_phrase": True}, TypeError, "max_phrase must be an integer or None"),
        (hf_metrics.Repetition, {"max_phrase": 0}, ValueError, "max_phrase"),
        (hf_metrics.Bleu, {"lowercase": "no"}, TypeError, "lowercase must be True or False"),
        (hf_metrics.Bleu, {"use_effective_order": 1}, TypeError, "use_effective_order must be True or False"),
        (hf_metrics.Bleu, {"smooth_method": "add-one"}, ValueError, "smooth_method"),
        (hf_metrics.Bleu, {"smooth_value": "0.1"}, TypeError, "smooth_value"),
        (hf_metrics.Bleu, {"tokenize": "words"}, ValueError, "tokenize"),
        (hf_metrics.Rouge, {"rouge_types": "rouge1"}, TypeError, "rouge_types must be a list"),
        (hf_metrics.Rouge, {"rouge_types": ["rouge1", "rougeX"]}, ValueError, "rougeX"),
        (hf_metrics.Rouge, {"use_aggregator": "yes"}, TypeError, "use_aggregator must be True or False"),
        (hf_metrics.Rouge, {"use_stemmer": None}, TypeError, "use_stemmer must be True or False"),
        (hf_metrics.Rouge, {"tokenizer": "13a"}, TypeError, "tokenizer must be a function"),
        (hf_metrics.Rouge, {"smoothing": "exp"}, TypeError, "no setting 'smoothing'"),
    ],
)
def test_settings_are_checked_before_anything_is_stored(tmp_path, cls, settings, error, match):
    texts = ["a dog barked, a dog barked", "the cat sat on the mat"]
    inputs = {"predictions": texts} if cls in (hf_metrics.DistinctN, hf_metrics.SelfBleu, hf_metrics.Repetition) \
        else {"predictions": texts, "references": texts[::-1]}
    m = metric(cls, tmp_path)
    with pytest.raises(error, match=match):
        m.compute(**inputs, **settings)
    m.add_batch(**inputs)
    with pytest.raises(error, match=match):
        m.compute(**settings)
    # the refused calls stored nothing and dropped nothing: the batch added in between is all there is
    assert m.compute() == metric(cls, tmp_path).compute(**inputs)


@pytest.mark.parametrize(
    "settings, error, match",
    [
        ({"stride": True}, TypeError, "stride must be an integer or None"),
        ({"context": 16.0}, TypeError, "context must be an integer or None"),
        ({"batch_size": None}, TypeError, "batch_size must be an integer"),
        ({"tokenizer": None}, ValueError, "tokenizer="),
    ],
)
def test_perplexity_checks_its_settings(tmp_path, settings, error, match):
    model, tokenizer = char_model()
    with pytest.raises(error, match=match):
        metric(hf_metrics.Perplexity, tmp_path).compute(predictions=[TEXT], **{"model": model, "tokenizer": tokenizer,
                                                                               **settings})


CHINESE = "语言模型给每一段文字一个概率。" * 3  # 45 characters, 135 bytes


def test_perplexity_of_chinese_text_under_a_byte_level_bpe(tmp_path):
    """An English BPE reads Chinese byte by byte: its first token, byte e8, is a third of a character."""
    from lmbook.text.tokenizers import BPETokenizer

    bpe = BPETokenizer.train(TEXT, 270)
    ids = bpe.encode(CHINESE)
    assert len(ids) == 135 and bpe.decode(ids[:1]) == "\ufffd"
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=160, n_layer=1, n_head=2, n_embd=16))
    out = metric(hf_metrics.Perplexity, tmp_path).compute(predictions=[CHINESE], model=model, tokenizer=bpe,
                                                          context=134)
    log_probs = torch.log_softmax(model(torch.tensor([ids]))[0][0].double(), dim=-1)
    nats = -sum(log_probs[j, ids[j + 1]].item() for j in range(134))  # written out: one pass, 134 predictions
    assert out["tokens"] == 134
    assert out["perplexity"] == pytest.approx(math.exp(nats / 134), rel=1e-5)
    assert out["bits_per_char"] == pytest.approx(nats / math.log(2) / 45, rel=1e-5)  # all 45 are predicted


def test_perplexity_of_chinese_text_under_a_local_transformers_model(tmp_path):
    """The same through a folder written by save_pretrained: transformers' tokenizer decodes byte e8 alone to U+FFFD
    too, and the first token's bytes are read from its byte-level alphabet."""
    from lmbook.models.hf import to_hf

    bpe = FastBPETokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=160, n_layer=1, n_head=2, n_embd=16))
    folder = tmp_path / "local-model"
    to_hf(model).save_pretrained(folder)
    bpe.to_transformers().save_pretrained(folder)
    out = metric(hf_metrics.Perplexity, tmp_path).compute(predictions=[CHINESE], model=str(folder), context=134)
    ours = score_text(model, bpe, CHINESE, context=134)
    assert (ours.chars, ours.bytes, out["tokens"]) == (45, 134, 134)
    assert out["perplexity"] == pytest.approx(ours.perplexity, rel=1e-5)
    assert out["bits_per_char"] == pytest.approx(ours.bits_per_char, rel=1e-5)
