"""Chapter 6's measures as ``evaluate`` metrics that need no Hub: perplexity, BLEU, ROUGE, diversity, repetition.

``evaluate.load("bleu")`` fetches the metric's code from the Hugging Face Hub, so it fails
offline. These are ``evaluate.Metric`` subclasses: make one and call it as ``evaluate`` users
do, ``Rouge().compute(predictions=..., references=...)``, with no network and no Hub cache.
BLEU and ROUGE delegate to the libraries ``evaluate``'s own modules wrap (``sacrebleu``,
``rouge_score``) and return the same keys; perplexity slides a window over each text
(:func:`lmbook.metrics.score_text`) for a model given as an object or as a local directory.
Each keeps its inputs in memory (``keep_in_memory=True``) unless told otherwise.
"""

from __future__ import annotations

import os

import datasets
import evaluate

from . import textmetrics
from .metrics import score_text

_ONE_TEXT = datasets.Features({"predictions": datasets.Value("string")})
_WITH_REFERENCES = [  # a list of references per prediction, or one reference
    datasets.Features({"predictions": datasets.Value("string"),
                       "references": datasets.Sequence(datasets.Value("string"))}),
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
]


class _Metric(evaluate.Metric):
    """What all of them share: in memory by default, and clear errors before ``evaluate`` sees the inputs."""

    _description = ""
    _citation = ""
    _features: datasets.Features | list = _ONE_TEXT

    def __init__(self, keep_in_memory: bool = True, **kwargs):
        super().__init__(keep_in_memory=keep_in_memory, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description=self._description, citation=self._citation,
                                   inputs_description=self.__doc__ or "", features=self._features)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score ``predictions`` (and ``references``, for metrics that compare) with the settings in ``kwargs``.
        """
        if predictions is not None:
            if isinstance(predictions, str):
                raise TypeError("predictions must be a list of texts, not one str: wrap it as [text].")
            if len(predictions) == 0:
                raise ValueError("predictions is empty: there is nothing to score.")
        if references is not None and predictions is not None and len(references) != len(predictions):
            raise ValueError(f"predictions and references must be as many: {len(predictions)} predictions, "
                             f"{len(references)} references.")
        if "references" in self._feature_names():
            return super().compute(predictions=predictions, references=references, **kwargs)
        if references is not None:
            raise ValueError(f"{type(self).__name__} scores predictions alone: it takes no references.")
        return super().compute(predictions=predictions, **kwargs)

    @staticmethod
    def _check(predictions) -> list[str]:
        if len(predictions) == 0:
            raise ValueError("no predictions were added: there is nothing to score.")
        return list(predictions)


class Perplexity(_Metric):
    """Perplexity of each text under a causal language model, by the sliding-window method.

    compute(predictions, model, tokenizer=None, context=None, stride=None, batch_size=8):
        predictions: texts, each longer than one window (``context`` + 1 tokens);
        model: any of the book's language models, a ``transformers`` causal LM, or the path of a
            local directory written by ``save_pretrained`` (model and tokenizer; nothing is downloaded);
        tokenizer: the model's tokenizer (read from the directory when ``model`` is a path);
        context, stride: the window and its step (the model's context and no overlap by default).
    Returns ``perplexities`` (one per text), ``mean_perplexity`` (their mean, as ``evaluate``'s
    perplexity reports), and pooled over all texts ``perplexity``, ``bits_per_char`` and ``tokens``.
    """

    _description = "Perplexity of a local causal language model, by the sliding-window method."

    def _compute(self, predictions, model=None, tokenizer=None, context=None, stride=None, batch_size=8):
        predictions = self._check(predictions)
        if model is None:
            raise ValueError("perplexity needs model=: a language model, or the path of a local model directory.")
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = load_local_model(model, tokenizer)
        if tokenizer is None:
            raise ValueError("perplexity needs tokenizer= to turn the texts into the model's token ids.")
        scores = [score_text(model, tokenizer, text, context, stride, batch_size) for text in predictions]
        pooled = sum(scores[1:], scores[0])
        return {"perplexities": [s.perplexity for s in scores],
                "mean_perplexity": sum(s.perplexity for s in scores) / len(scores),
                "perplexity": pooled.perplexity, "bits_per_char": pooled.bits_per_char, "tokens": pooled.tokens}


def load_local_model(path, tokenizer=None):
    """A ``transformers`` causal LM (in eval mode) and its tokenizer from a local directory, never from the Hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"model={path!r} is not a local directory: give a model object, or the path of a directory "
                         "written by save_pretrained (Hub model ids are not fetched).")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


class Bleu(_Metric):
    """Corpus BLEU by ``sacrebleu`` (what ``evaluate``'s ``sacrebleu`` module computes), on a 0-100 scale.

    compute(predictions, references, smooth_method="exp", smooth_value=None, tokenize="13a",
            lowercase=False, use_effective_order=False):
        references: for each prediction one text, or a list of texts (as many for every prediction).
    Returns ``score``, ``counts`` (clipped matches per order), ``totals``, ``precisions`` (in %),
    ``bp``, ``sys_len`` and ``ref_len``.
    """

    _description = "BLEU (Papineni et al., 2002) computed by sacrebleu (Post, 2018)."
    _citation = "Post, M. (2018). A Call for Clarity in Reporting BLEU Scores. WMT."
    _features = _WITH_REFERENCES

    def _compute(self, predictions, references, smooth_method="exp", smooth_value=None, tokenize="13a",
                 lowercase=False, use_effective_order=False):
        from sacrebleu.metrics.bleu import BLEU

        predictions = self._check(predictions)
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        counts = {len(r) for r in references}
        if len(counts) != 1:
            raise ValueError(f"sacrebleu needs as many references for every prediction; these have {sorted(counts)}.")
        streams = [list(stream) for stream in zip(*references)]  # sacrebleu wants one list per reference set
        bleu = BLEU(smooth_method=smooth_method, smooth_value=smooth_value, tokenize=tokenize, lowercase=lowercase,
                    effective_order=use_effective_order)
        out = bleu.corpus_score(predictions, streams)
        return {"score": out.score, "counts": out.counts, "totals": out.totals, "precisions": out.precisions,
                "bp": out.bp, "sys_len": out.sys_len, "ref_len": out.ref_len}


class Rouge(_Metric):
    """ROUGE by ``rouge_score``, with the inputs and outputs of ``evaluate``'s ``rouge`` module.

    compute(predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False, tokenizer=None):
        references: for each prediction one text or a list of texts (the best-matching one counts);
        rouge_types: by default rouge1, rouge2, rougeL and rougeLsum (sentences split at newlines);
        use_aggregator: the bootstrap median of the mean F-measure (seeded by the metric's ``seed``),
            else one F-measure per prediction.
    """

    _description = "ROUGE (Lin, 2004) computed by Google Research's rouge_score."
    _citation = "Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries."
    _features = _WITH_REFERENCES

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False,
                 tokenizer=None):
        from rouge_score import rouge_scorer, scoring

        predictions = self._check(predictions)
        rouge_types = rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        wrapped = _Tokenizer(tokenizer) if tokenizer is not None else None
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer, tokenizer=wrapped)
        scores = [scorer.score_multi(r, p) if isinstance(r, list) else scorer.score(r, p)
                  for r, p in zip(references, predictions)]
        if not use_aggregator:
            return {key: [s[key].fmeasure for s in scores] for key in rouge_types}
        aggregator = scoring.BootstrapAggregator()
        for s in scores:
            aggregator.add_scores(s)
        return {key: float(value.mid.fmeasure) for key, value in aggregator.aggregate().items()}


class _Tokenizer:
    """A function from text to tokens, with the ``tokenize`` method ``rouge_score`` calls."""

    def __init__(self, function):
        self.tokenize = function


class DistinctN(_Metric):
    """Distinct n-grams over the number of generated tokens (Li et al., 2016), for each n.

    compute(predictions, n=(1, 2), per="tokens"): see :func:`lmbook.textmetrics.distinct_n`;
    returns ``distinct_1``, ``distinct_2``, ...
    """

    _description = "distinct-n (Li et al., 2016): distinct n-grams over generated tokens."
    _citation = "Li, J. et al. (2016). A Diversity-Promoting Objective Function for Neural Conversation Models."

    def _compute(self, predictions, n=(1, 2), per="tokens"):
        predictions = self._check(predictions)
        orders = (n,) if isinstance(n, int) else tuple(n)
        return {f"distinct_{k}": textmetrics.distinct_n(predictions, k, per) for k in orders}


class SelfBleu(_Metric):
    """Self-BLEU (Zhu et al., 2018): the mean BLEU of each prediction against all the others, from 0 to 1.

    compute(predictions, max_order=4): each BLEU is ``sacrebleu``'s sentence BLEU (exp smoothing,
    effective order), divided by 100. Lower is more diverse.
    """

    _description = "Self-BLEU (Zhu et al., 2018), from sacrebleu's sentence BLEU."
    _citation = "Zhu, Y. et al. (2018). Texygen: A Benchmarking Platform for Text Generation Models. SIGIR."

    def _compute(self, predictions, max_order=4):
        from sacrebleu.metrics.bleu import BLEU

        predictions = self._check(predictions)
        if len(predictions) < 2:
            raise ValueError(f"self-BLEU compares predictions with each other: give at least 2, "
                             f"not {len(predictions)}.")
        bleu = BLEU(effective_order=True, max_ngram_order=max_order)
        scores = [bleu.sentence_score(p, predictions[:i] + predictions[i + 1 :]).score / 100
                  for i, p in enumerate(predictions)]
        return {"self_bleu": sum(scores) / len(scores)}


class Repetition(_Metric):
    """The share of predictions that end in a phrase repeated at least ``min_repeats`` times (Holtzman et al., 2020).

    compute(predictions, min_repeats=3, max_phrase=None): phrases are runs of 13a tokens;
    returns ``repetition`` (the share) and ``phrase_lengths`` (per prediction, 0 when it does not loop).
    """

    _description = "Repetition: generations ending in a repeated phrase (Holtzman et al., 2020)."
    _citation = "Holtzman, A. et al. (2020). The Curious Case of Neural Text Degeneration. ICLR."

    def _compute(self, predictions, min_repeats=3, max_phrase=None):
        predictions = self._check(predictions)
        lengths = [textmetrics.repeated_ending(textmetrics.words(p), min_repeats, max_phrase) for p in predictions]
        return {"repetition": sum(n > 0 for n in lengths) / len(lengths), "phrase_lengths": lengths}


METRICS = {"perplexity": Perplexity, "bleu": Bleu, "rouge": Rouge, "distinct_n": DistinctN, "self_bleu": SelfBleu,
           "repetition": Repetition}


def load(name: str, **kwargs) -> evaluate.Metric:
    """One of :data:`METRICS` by name, like ``evaluate.load`` but offline: ``load("rouge").compute(...)``."""
    if name not in METRICS:
        raise ValueError(f"there is no metric {name!r} here; there are {sorted(METRICS)}.")
    return METRICS[name](**kwargs)
