"""Scores of generated text, written out: BLEU, ROUGE, distinct-n, self-BLEU and repetition (chapter 6).

Each is a few lines of counting, here to be read. The tests check every piece against the
library a reader would otherwise use (``sacrebleu`` for BLEU, ``rouge_score`` for ROUGE), and
:mod:`lmbook.evaluation.hf_metrics` offers those libraries as ``evaluate`` metrics. Scores here are
fractions in [0, 1]; ``sacrebleu`` reports BLEU multiplied by 100.

Texts are split into tokens by the tokenizer each measure is defined with: BLEU and the
diversity measures by WMT's ``13a`` rules (:func:`words`: punctuation apart, case kept), ROUGE
by ``rouge_score``'s (:func:`rouge_words`: lower case, letters and digits only). Every function
also takes texts already split into lists of tokens. Every argument is checked for its type as well as
its value (``n=True`` or ``n=2.0`` is refused, not read as 1 or 2).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from rouge_score.tokenize import tokenize as _rouge_tokenize
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from ..interface import check_int

Tokens = Sequence[Hashable]
_TOKENIZER_13A = Tokenizer13a()

SMOOTHINGS = ("none", "exp", "floor", "add-k")
REFERENCE_LENGTHS = ("closest", "shortest")
DENOMINATORS = ("tokens", "ngrams")  # what distinct-n divides by
# The defaults of the two BLEUs a reader meets: sacrebleu.corpus_bleu, and evaluate.load("bleu")
# (tensorflow/nmt's compute_bleu on 13a tokens: no smoothing, the shortest reference's length).
SACREBLEU = {"smoothing": "exp", "reference_length": "closest"}
EVALUATE_BLEU = {"smoothing": "none", "reference_length": "shortest"}


def words(text: str) -> list[str]:
    """BLEU's tokens: WMT's ``13a`` tokenization, as ``sacrebleu`` does it (punctuation split off, case kept)."""
    return _TOKENIZER_13A(_text(text)).split()


def rouge_words(text: str) -> list[str]:
    """ROUGE's tokens, as ``rouge_score`` makes them: lower-cased runs of ``a-z`` and ``0-9``; all else dropped."""
    return _rouge_tokenize(_text(text), None)


def _text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}.")
    return text


def check_bool(name: str, value) -> None:
    """Raise a ``TypeError`` unless ``value`` is ``True`` or ``False`` (chapter 6's metrics check their switches)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}.")


def check_function(name: str, value) -> None:
    """Raise a ``TypeError`` unless ``value`` can be called: a tokenizer, from a text to its tokens (chapter 6)."""
    if not callable(value):
        raise TypeError(f"{name} must be a function from a text to its list of tokens, not {value!r}.")


def check_smooth_value(value) -> None:
    """Refuse a BLEU smoothing constant (chapter 6) that is not ``None`` (the default) or a finite number >= 0."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"smooth_value must be a number or None, not {value!r}.")
        if not 0 <= value < math.inf:
            raise ValueError(f"smooth_value must be finite and >= 0, not {value}.")


def _token_list(tokens, name: str) -> Sequence:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        hint = ": split the text first, e.g. with words(text)" if isinstance(tokens, str) else ""
        raise TypeError(f"{name} must be a list of tokens, not a {type(tokens).__name__}{hint}.")
    return tokens


def _tokens(text, tokenize: Callable[[str], list], name: str) -> list:
    if isinstance(text, str):
        return tokenize(text)
    if isinstance(text, (list, tuple)):
        return list(text)
    raise TypeError(f"{name} must be a str or a list of tokens, not {type(text).__name__}.")


def _nonempty(texts, name: str) -> list:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of texts, not {type(texts).__name__}.")
    if len(texts) == 0:
        raise ValueError(f"{name} is empty: there is nothing to score.")
    return list(texts)


def ngrams(tokens: Tokens, n: int) -> Counter:
    """How often each run of ``n`` consecutive tokens occurs in ``tokens``."""
    check_int("n", n, 1)
    _token_list(tokens, "tokens")
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# --- BLEU (Papineni et al., 2002) ---------------------------------------------------
def clipped_matches(candidate: Tokens, references: Sequence[Tokens], n: int) -> tuple[int, int]:
    """Modified n-gram precision as a fraction ``(matches, total)``: clipped matches over the candidate's n-grams.

    Each n-gram of the candidate counts as a match at most as often as it occurs in any
    single reference, so "the the the the" gets no credit for a reference's one "the" beyond
    the first.
    """
    counts = ngrams(_token_list(candidate, "candidate"), n)
    most = Counter()  # for each n-gram, the most times one reference has it
    for reference in _token_list(references, "references"):
        most |= ngrams(_token_list(reference, "a reference"), n)
    return sum(min(c, most[g]) for g, c in counts.items()), sum(counts.values())


def brevity_penalty(candidate_length: int, reference_length: int) -> float:
    """``exp(1 - r / c)`` for a candidate shorter than its reference (``c < r``), else 1; 0 for an empty candidate.

    Precision alone would reward a short, safe candidate: this charges for what it left out.
    """
    check_int("candidate_length", candidate_length, 0)
    check_int("reference_length", reference_length, 0)
    if candidate_length >= reference_length:
        return 1.0
    return math.exp(1 - reference_length / candidate_length) if candidate_length > 0 else 0.0


def compared_length(candidate_length: int, reference_lengths: Sequence[int], rule: str = "closest") -> int:
    """The reference length the brevity penalty compares with: the ``closest`` one (ties: the shorter,
    sacrebleu's and the BLEU paper's rule) or the ``shortest`` one (evaluate's canonical ``bleu``)."""
    if rule not in REFERENCE_LENGTHS:
        raise ValueError(f"reference_length must be one of {REFERENCE_LENGTHS}, not {rule!r}.")
    check_int("candidate_length", candidate_length, 0)
    if isinstance(reference_lengths, str) or not isinstance(reference_lengths, Sequence):
        raise TypeError(f"reference_lengths must be a list of integers, not {type(reference_lengths).__name__}.")
    for r in reference_lengths:
        check_int("a reference length", r, 0)
    if not reference_lengths:
        raise ValueError("there are no references to take a length from.")
    if rule == "shortest":
        return min(reference_lengths)
    return min(reference_lengths, key=lambda r: (abs(r - candidate_length), r))


@dataclass(frozen=True)
class BleuResult:
    """BLEU with its parts: ``score = brevity_penalty * exp(mean of log precisions)``, all in [0, 1]."""

    score: float
    precisions: tuple[float, ...]  # per order, after smoothing
    brevity_penalty: float
    candidate_length: int  # tokens of all candidates
    reference_length: int  # the reference lengths the penalty used, summed
    matches: tuple[int, ...]  # clipped n-gram matches per order, summed over the corpus
    totals: tuple[int, ...]  # candidate n-grams per order


def _references(references, n_candidates: int, tokenize) -> list[list[list]]:
    """Each candidate's references as token lists; a candidate's references are one text or a list of
    references (texts, or lists of tokens)."""
    references = _nonempty(references, "references")
    if len(references) != n_candidates:
        raise ValueError(f"there are {n_candidates} predictions but {len(references)} references: give one "
                         "reference (a text) or a list of references for each prediction.")
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, (list, tuple)) or not refs:
            raise ValueError(f"the references of prediction {i} must be a text or a non-empty list, not {refs!r}.")
        out.append([_tokens(r, tokenize, "a reference") for r in refs])
    return out


def corpus_bleu(
    candidates,
    references,
    max_order: int = 4,
    smoothing: str = "exp",
    smooth_value: float | None = None,
    reference_length: str = "closest",
    effective_order: bool = False,
    tokenize: Callable[[str], list] = words,
) -> BleuResult:
    """BLEU of ``candidates`` against ``references`` (one text, or a list of texts, per candidate).

    Clipped matches and n-gram totals are summed over the whole corpus before dividing,
    as are the lengths the brevity penalty compares. Smoothing of orders without a match,
    as in ``sacrebleu``: ``none``; ``exp`` (the k-th such order gets ``1 / (2^k total)``,
    sacrebleu's default); ``floor`` (``smooth_value / total``, 0.1 by default); ``add-k``
    (``smooth_value`` added to matches and totals of orders 2 and up, 1 by default).
    ``effective_order`` averages only over orders the candidates have n-grams of
    (sentence-level BLEU needs it). The defaults are ``sacrebleu.corpus_bleu``'s;
    ``**EVALUATE_BLEU`` gives evaluate's canonical ``bleu``.
    """
    candidates = _nonempty(candidates, "candidates")
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {SMOOTHINGS}, not {smoothing!r}.")
    check_int("max_order", max_order, 1)
    check_smooth_value(smooth_value)
    check_bool("effective_order", effective_order)
    check_function("tokenize", tokenize)
    refs = _references(references, len(candidates), tokenize)
    matches, totals, c_len, r_len = [0] * max_order, [0] * max_order, 0, 0
    for candidate, these in zip(candidates, refs):
        tokens = _tokens(candidate, tokenize, "a candidate")
        c_len += len(tokens)
        r_len += compared_length(len(tokens), [len(r) for r in these], reference_length)
        for n in range(1, max_order + 1):
            m, t = clipped_matches(tokens, these, n)
            matches[n - 1] += m
            totals[n - 1] += t
    bp = brevity_penalty(c_len, r_len)
    precisions = [0.0] * max_order
    result = {"brevity_penalty": bp, "candidate_length": c_len, "reference_length": r_len,
              "matches": tuple(matches), "totals": tuple(totals)}
    if not any(matches):
        return BleuResult(0.0, tuple(precisions), **result)
    value = {"floor": 0.1, "add-k": 1.0}.get(smoothing) if smooth_value is None else smooth_value
    halvings, orders = 1.0, max_order
    for n in range(1, max_order + 1):
        m, t = matches[n - 1], totals[n - 1]
        if smoothing == "add-k" and n > 1:
            m, t = m + value, t + value
        if t == 0:  # no candidate is n tokens long
            break
        if effective_order:
            orders = n
        if m > 0:
            precisions[n - 1] = m / t
        elif smoothing == "exp":
            halvings *= 2
            precisions[n - 1] = 1 / (halvings * t)
        elif smoothing == "floor":
            precisions[n - 1] = value / t
    used = precisions[:orders]
    score = bp * math.exp(sum(math.log(p) for p in used) / orders) if min(used) > 0 else 0.0
    return BleuResult(score, tuple(precisions), **result)


def sentence_bleu(candidate, references, **options) -> BleuResult:
    """BLEU of one candidate against its references, with the effective order (as ``sacrebleu.sentence_bleu``)."""
    options.setdefault("effective_order", True)
    return corpus_bleu([candidate], [references], **options)


# --- ROUGE (Lin, 2004) -------------------------------------------------------------
@dataclass(frozen=True)
class PRF:
    """Precision (share of the candidate found in the reference), recall (share of the reference found
    in the candidate) and their harmonic mean, the F-measure ROUGE is usually quoted as."""

    precision: float
    recall: float
    fmeasure: float


def _prf(overlap: float, candidate_size: int, reference_size: int) -> PRF:
    p, r = overlap / max(candidate_size, 1), overlap / max(reference_size, 1)
    return PRF(p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0)


def rouge_n(candidate, reference, n: int = 1, tokenize: Callable[[str], list] = rouge_words) -> PRF:
    """ROUGE-n: n-grams the candidate shares with the reference (each counted as often as both have it)."""
    check_int("n", n, 1)
    check_function("tokenize", tokenize)
    c = ngrams(_tokens(candidate, tokenize, "candidate"), n)
    r = ngrams(_tokens(reference, tokenize, "reference"), n)
    return _prf(sum((c & r).values()), sum(c.values()), sum(r.values()))


def lcs_length(a: Tokens, b: Tokens) -> int:
    """The length of the longest common subsequence of ``a`` and ``b``: tokens of both, in order, gaps allowed.

    Dynamic programming over one row at a time: ``row[j]`` is the LCS of ``a[:i]`` and ``b[:j]``.
    """
    _token_list(a, "a"), _token_list(b, "b")
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # the previous row's value at j - 1
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate, reference, tokenize: Callable[[str], list] = rouge_words) -> PRF:
    """ROUGE-L: the longest common subsequence over the candidate's and the reference's lengths."""
    check_function("tokenize", tokenize)
    c, r = _tokens(candidate, tokenize, "candidate"), _tokens(reference, tokenize, "reference")
    if not c or not r:
        return PRF(0.0, 0.0, 0.0)
    return _prf(lcs_length(c, r), len(c), len(r))


# --- Diversity and degeneration -------------------------------------------------------
def distinct_n(texts, n: int = 2, per: str = "tokens", tokenize: Callable[[str], list] = words) -> float:
    """Distinct n-grams across all ``texts`` divided by the number of tokens they hold (Li et al., 2016).

    That is the book's denominator (``per="tokens"``), the paper's definition; many libraries
    divide by the number of n-grams instead (``per="ngrams"``), which gives a larger number
    for the same texts when n > 1. 1 means no n-gram is ever repeated.
    """
    if per not in DENOMINATORS:
        raise ValueError(f"per must be 'tokens' or 'ngrams', not {per!r}.")
    check_int("n", n, 1)
    check_function("tokenize", tokenize)
    seen, n_tokens, n_grams = set(), 0, 0
    for text in _nonempty(texts, "texts"):
        tokens = _tokens(text, tokenize, "a text")
        grams = ngrams(tokens, n)
        seen.update(grams)
        n_tokens, n_grams = n_tokens + len(tokens), n_grams + sum(grams.values())
    denominator = n_tokens if per == "tokens" else n_grams
    if denominator == 0:
        raise ValueError(f"the texts hold no {'tokens' if per == 'tokens' else f'{n}-grams'} to count: give texts "
                         "with words in them (and, per n-gram, at least n of them).")
    return len(seen) / denominator


def self_bleu(texts, max_order: int = 4, tokenize: Callable[[str], list] = words, **options) -> float:
    """Self-BLEU (Zhu et al., 2018): the mean sentence BLEU of each text against all the others.

    High when the texts resemble each other (low diversity). Each BLEU is :func:`sentence_bleu`
    with ``sacrebleu``'s sentence defaults (exp smoothing, effective order) unless ``options``
    say otherwise.
    """
    check_int("max_order", max_order, 1)
    check_function("tokenize", tokenize)
    texts = [_tokens(t, tokenize, "a text") for t in _nonempty(texts, "texts")]
    if len(texts) < 2:
        raise ValueError(f"self-BLEU compares texts with each other: give at least 2, not {len(texts)}.")
    scores = [sentence_bleu(t, texts[:i] + texts[i + 1 :], max_order=max_order, **options).score
              for i, t in enumerate(texts)]
    return sum(scores) / len(scores)


def repeated_ending(tokens: Tokens, min_repeats: int = 3, max_phrase: int | None = None) -> int:
    """The length of the shortest phrase that ``tokens`` end with ``min_repeats`` times in a row; 0 if none.

    "a b c a b c a b c" ends in ``a b c`` three times (3); a loop cut off mid-phrase counts
    too ("... c a b c a b c a b" ends in ``c a b`` three times).
    """
    check_int("min_repeats", min_repeats, 2)
    check_int("max_phrase", max_phrase, 1, allow_none=True)
    tokens = list(_token_list(tokens, "tokens"))
    longest = len(tokens) // min_repeats
    for length in range(1, min(longest, max_phrase or longest) + 1):
        tail = tokens[len(tokens) - length :]
        if all(tokens[len(tokens) - (k + 1) * length : len(tokens) - k * length] == tail
               for k in range(1, min_repeats)):
            return length
    return 0


def repetition_rate(texts, min_repeats: int = 3, max_phrase: int | None = None,
                    tokenize: Callable[[str], list] = words) -> float:
    """The share of ``texts`` that end in a phrase repeated at least ``min_repeats`` times in a row.

    The measure of degeneration in Holtzman et al. (2020), Table 1 ("Repetition"); they report
    it as a percentage.
    """
    texts = _nonempty(texts, "texts")
    check_int("min_repeats", min_repeats, 2)
    check_int("max_phrase", max_phrase, 1, allow_none=True)
    check_function("tokenize", tokenize)
    ends = [repeated_ending(_tokens(t, tokenize, "a text"), min_repeats, max_phrase) for t in texts]
    return sum(e > 0 for e in ends) / len(ends)
