"""Chapter 6's measures as ``evaluate`` metrics that need no Hub: perplexity, BLEU, ROUGE, diversity, repetition.

``evaluate.load("bleu")`` fetches the metric's code from the Hugging Face Hub, so it fails
offline. These are ``evaluate.Metric`` subclasses: make one and call it as ``evaluate`` users
do, ``Rouge().compute(predictions=..., references=...)``, with no network and no Hub cache.
BLEU and ROUGE delegate to the libraries ``evaluate``'s own modules wrap (``sacrebleu``,
``rouge_score``) and return the same keys; perplexity slides a window over each text
(:func:`lmbook.evaluation.metrics.score_text`) for a model given as an object or as a local directory.
Each keeps its inputs in memory (``keep_in_memory=True``) unless told otherwise. Inputs and settings
are checked before ``evaluate`` stores anything, so a refused call leaves the batches added so far.
"""

from __future__ import annotations

import inspect
import os
import re

import datasets
import evaluate

from . import textmetrics
from ..interface import check_int
from .metrics import score_text
from .textmetrics import check_bool, check_function

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
        check_bool("keep_in_memory", keep_in_memory)
        super().__init__(keep_in_memory=keep_in_memory, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description=self._description, citation=self._citation,
                                   inputs_description=self.__doc__ or "", features=self._features)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score ``predictions`` (and ``references``, for metrics that compare) with the settings in ``kwargs``.
        """
        self._check_inputs(predictions, references)
        if predictions is not None and len(predictions) == 0:
            raise ValueError("predictions is empty: there is nothing to score.")
        settings = inspect.signature(self._compute).parameters
        names = [name for name in settings if name not in ("predictions", "references")]
        for name in kwargs:
            if name not in names:
                raise TypeError(f"{type(self).__name__} has no setting {name!r}; its settings are {names}.")
        self._check_settings(**{name: kwargs.get(name, settings[name].default) for name in names})
        if "references" in self._feature_names():
            return super().compute(predictions=predictions, references=references, **kwargs)
        return super().compute(predictions=predictions, **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of ``predictions`` (and ``references``) to score at the next ``compute()``."""
        self._check_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one ``prediction`` (and its ``reference``) to score at the next ``compute()``."""
        self._check_inputs(None if prediction is None else [prediction], None if reference is None else [reference])
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _check_inputs(self, predictions, references) -> None:
        """Refuse what ``evaluate`` would store and the metric could not score."""
        takes_references = "references" in self._feature_names()
        if not takes_references and references is not None:
            raise ValueError(f"{type(self).__name__} scores predictions alone: it takes no references.")
        if predictions is None:
            if references is not None:
                raise ValueError("references were given without predictions: give predictions= as well.")
            return  # compute() of the batches added so far
        if isinstance(predictions, str) or not hasattr(predictions, "__len__"):
            raise TypeError(f"predictions must be a list of texts, not {type(predictions).__name__}: wrap one "
                            "text as [text].")
        for i, p in enumerate(predictions):
            if not isinstance(p, str):
                raise TypeError(f"predictions must be texts (str): prediction {i} is {p!r:.60} ({type(p).__name__}).")
        if takes_references:
            _check_references(predictions, references, type(self).__name__)

    def _check_settings(self, **settings) -> None:
        """Refuse a bad setting (each metric checks its own) before ``evaluate`` stores the inputs."""

    @staticmethod
    def _check(predictions) -> list[str]:
        if len(predictions) == 0:
            raise ValueError("no predictions were added: there is nothing to score.")
        return list(predictions)


def _check_references(predictions, references, metric: str) -> None:
    if references is None:
        raise ValueError(f"{metric} needs references=: for each prediction one text, or a list of texts.")
    if isinstance(references, str) or not hasattr(references, "__len__"):
        raise TypeError(f"references must be a list with one entry per prediction (a text, or a list of texts), "
                        f"not {type(references).__name__}.")
    if len(references) != len(predictions):
        raise ValueError(f"predictions and references must be as many: {len(predictions)} predictions, "
                         f"{len(references)} references.")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            continue
        if not isinstance(refs, (list, tuple)) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"the reference of prediction {i} must be a text or a list of texts, not {refs!r:.60}.")
        if not refs:
            raise ValueError(f"the references of prediction {i} are an empty list: give at least one reference text "
                             "(neither sacrebleu nor rouge_score scores a prediction without one).")


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

    def _check_settings(self, model, tokenizer, context, stride, batch_size) -> None:
        if model is None:
            raise ValueError("perplexity needs model=: a language model, or the path of a local model directory.")
        if isinstance(model, (str, os.PathLike)):
            _local_directory(model)
        elif tokenizer is None:
            raise ValueError("perplexity needs tokenizer= to turn the texts into the model's token ids.")
        check_int("context", context, 1, allow_none=True)
        check_int("stride", stride, 1, allow_none=True)
        check_int("batch_size", batch_size, 1)

    def _compute(self, predictions, model=None, tokenizer=None, context=None, stride=None, batch_size=8):
        predictions = self._check(predictions)
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = load_local_model(model, tokenizer)
        scores = [score_text(model, tokenizer, text, context, stride, batch_size) for text in predictions]
        pooled = sum(scores[1:], scores[0])
        return {"perplexities": [s.perplexity for s in scores],
                "mean_perplexity": sum(s.perplexity for s in scores) / len(scores),
                "perplexity": pooled.perplexity, "bits_per_char": pooled.bits_per_char, "tokens": pooled.tokens}


def load_local_model(path, tokenizer=None):
    """A ``transformers`` causal LM (in eval mode) and its tokenizer from a local directory, never from the Hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _local_directory(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _local_directory(path) -> str:
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"model={path!r} is not a local directory: give a model object, or the path of a directory "
                         "written by save_pretrained (Hub model ids are not fetched).")
    return path


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

    def _check_settings(self, smooth_method, smooth_value, tokenize, lowercase, use_effective_order) -> None:
        from sacrebleu.metrics.bleu import BLEU

        if smooth_method not in BLEU.SMOOTH_DEFAULTS:
            raise ValueError(f"smooth_method must be one of {list(BLEU.SMOOTH_DEFAULTS)}, not {smooth_method!r}.")
        textmetrics.check_smooth_value(smooth_value)
        if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
            raise ValueError(f"tokenize must be one of sacrebleu's {list(BLEU.TOKENIZERS)}, not {tokenize!r}.")
        check_bool("lowercase", lowercase)
        check_bool("use_effective_order", use_effective_order)

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

    def _check_settings(self, rouge_types, use_aggregator, use_stemmer, tokenizer) -> None:
        if rouge_types is not None:
            if isinstance(rouge_types, str) or not isinstance(rouge_types, (list, tuple)) or not rouge_types:
                raise TypeError(f"rouge_types must be a list of names such as ['rouge1', 'rougeL'], "
                                f"not {rouge_types!r}.")
            for name in rouge_types:
                if not (isinstance(name, str) and re.fullmatch(r"rouge[1-9]|rougeL|rougeLsum", name)):
                    raise ValueError(f"{name!r} is not a ROUGE type: give rouge1 to rouge9, rougeL or rougeLsum.")
        check_bool("use_aggregator", use_aggregator)
        check_bool("use_stemmer", use_stemmer)
        if tokenizer is not None:
            check_function("tokenizer", tokenizer)

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

    compute(predictions, n=(1, 2), per="tokens"): see :func:`lmbook.evaluation.textmetrics.distinct_n`;
    returns ``distinct_1``, ``distinct_2``, ...
    """

    _description = "distinct-n (Li et al., 2016): distinct n-grams over generated tokens."
    _citation = "Li, J. et al. (2016). A Diversity-Promoting Objective Function for Neural Conversation Models."

    def _check_settings(self, n, per) -> None:
        for k in _orders(n):
            check_int("n", k, 1)
        if per not in textmetrics.DENOMINATORS:
            raise ValueError(f"per must be one of {textmetrics.DENOMINATORS}, not {per!r}.")

    def _compute(self, predictions, n=(1, 2), per="tokens"):
        predictions = self._check(predictions)
        orders = _orders(n)
        return {f"distinct_{k}": textmetrics.distinct_n(predictions, k, per) for k in orders}


def _orders(n) -> tuple:
    """``n`` (one order, or a list of them) as a tuple of orders."""
    if isinstance(n, (list, tuple, range)):
        if not n:
            raise ValueError("n is an empty list: give an order such as 2, or a list of them such as [1, 2].")
        return tuple(n)
    return (n,)


class SelfBleu(_Metric):
    """Self-BLEU (Zhu et al., 2018): the mean BLEU of each prediction against all the others, from 0 to 1.

    compute(predictions, max_order=4): each BLEU is ``sacrebleu``'s sentence BLEU (exp smoothing,
    effective order), divided by 100. Lower is more diverse.
    """

    _description = "Self-BLEU (Zhu et al., 2018), from sacrebleu's sentence BLEU."
    _citation = "Zhu, Y. et al. (2018). Texygen: A Benchmarking Platform for Text Generation Models. SIGIR."

    def _check_settings(self, max_order) -> None:
        check_int("max_order", max_order, 1)

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

    def _check_settings(self, min_repeats, max_phrase) -> None:
        check_int("min_repeats", min_repeats, 2)
        check_int("max_phrase", max_phrase, 1, allow_none=True)

    def _compute(self, predictions, min_repeats=3, max_phrase=None):
        predictions = self._check(predictions)
        lengths = [textmetrics.repeated_ending(textmetrics.words(p), min_repeats, max_phrase) for p in predictions]
        return {"repetition": sum(n > 0 for n in lengths) / len(lengths), "phrase_lengths": lengths}


METRICS = {"perplexity": Perplexity, "bleu": Bleu, "rouge": Rouge, "distinct_n": DistinctN, "self_bleu": SelfBleu,
           "repetition": Repetition}


def load(name: str, **kwargs) -> evaluate.Metric:
    """One of :data:`METRICS` by name, like ``evaluate.load`` but offline: ``load("rouge").compute(...)``."""
    if not isinstance(name, str) or name not in METRICS:
        raise ValueError(f"there is no metric {name!r} here; there are {sorted(METRICS)}.")
    return METRICS[name](**kwargs)
