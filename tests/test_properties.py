"""The public API driven with arbitrary and hostile arguments (hypothesis).

Every call either succeeds and keeps its invariants (round trips, shapes, probabilities, equal logits)
or is refused by the package itself: a ``ValueError``, ``TypeError`` or ``KeyError`` raised by a
``raise`` statement of ``lmbook`` (not by torch, numpy or an operation of the builtins that met a bad
value), whose message names the argument or says what to do; never an ``IndexError``, a
``ZeroDivisionError`` or torch's own errors. Arguments that take a list refuse a bare string or read it
as one item; every argument checks its type as well as its range; a refused call leaves the model as it
was; a batch of prompts decodes each as it would alone; every tokenizer round-trips any text.
"""

from __future__ import annotations

import math
import re
import sys
import traceback
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import lmbook
from lmbook.text.data import RandomBatches, SequentialBatches, train_val_split
from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.evaluation.metrics import TextNLL, bits_per_byte, bits_per_char, perplexity
from lmbook.models.rnn import RNNLM, RNNConfig
from lmbook.runtime import seed_everything
from lmbook.text.tokenizers import BPETokenizer, CharTokenizer, FastBPETokenizer, UnknownCharacterError
from lmbook.training.train import TrainConfig

DOCUMENTED = (ValueError, TypeError, KeyError)
PACKAGE = Path(lmbook.__file__).resolve().parent
ADVICE = re.compile(r"\b(must|give|set|use|choose|pass|keep|train|remove|shorten|raise|lower|wrap|encode|restore|"
                    r"delete|start|record|merge|leave)\b", re.IGNORECASE)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
anything = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=5), st.tuples(st.floats(), st.floats()))


def check_refusal(err: BaseException, names: tuple[str, ...] | None) -> None:
    """Fail unless ``err`` was raised by a ``raise`` statement of the package and its message names one of
    ``names`` (the arguments varied) or says what to do (``names=None``: any message)."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    where = f"{type(err).__name__} at {frame.filename}:{frame.lineno} ({frame.line!r}): {err}"
    inside = Path(frame.filename).resolve().is_relative_to(PACKAGE)
    assert inside and (frame.line or "").startswith("raise"), f"not a refusal of lmbook itself: {where}"
    named = names is None or any(re.search(rf"\b{re.escape(name)}\b", str(err)) for name in names)
    assert str(err).strip() and (named or ADVICE.search(str(err))), (
        f"the message names none of {names} and says nothing to do: {where}")


def documented(call, *names: str):
    """Run ``call``; return its result, or ``None`` when the package refused it as documented (see the module)."""
    try:
        return call()
    except DOCUMENTED as err:
        check_refusal(err, names)
        return None


def refused(call, *names: str) -> None:
    """Fail unless ``call`` is refused as documented."""
    try:
        result = call()
    except DOCUMENTED as err:
        check_refusal(err, names)
        return
    pytest.fail(f"accepted, where {names} should have been refused: it returned {result!r:.200}")


def test_documented_accepts_only_the_package_s_own_refusals(tmp_path):
    import linecache

    assert documented(lambda: GPTConfig(n_layer=0), "n_layer") is None  # lmbook's own ValueError
    with pytest.raises(AssertionError, match="not a refusal of lmbook"):
        documented(lambda: torch.zeros(2).view("a"))  # torch's TypeError
    fake = str(PACKAGE / "_not_a_module.py")  # code that reads as the package's: a builtin's error inside it
    source = "def add(x):\n    return x + 1\n\n\ndef vague():\n    raise ValueError('bad value')\n"
    linecache.cache[fake] = (len(source), None, source.splitlines(True), fake)
    namespace: dict = {}
    exec(compile(source, fake, "exec"), namespace)
    try:
        with pytest.raises(AssertionError, match="not a refusal of lmbook"):
            documented(lambda: namespace["add"](None), "x")  # "unsupported operand type(s)": a bug, not a refusal
        with pytest.raises(AssertionError, match="says nothing to do"):
            documented(namespace["vague"], "x")
    finally:
        del linecache.cache[fake]
    with pytest.raises(pytest.fail.Exception, match="accepted"):
        refused(lambda: 3, "x")


# --- Tokenizers ----------------------------------------------------------------------------
CORPUS = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"
WORLD = "中文的文字，中文的句子。😀 emoji 😀😀 naïve café\n"  # multi-byte characters, merged by the BPEs
BPE = BPETokenizer.train(CORPUS * 3 + WORLD * 3, vocab_size=300)
FAST_BPE = FastBPETokenizer.train(CORPUS * 3 + WORLD * 3, vocab_size=300)
TOKENIZERS = {"bpe": BPE, "fast-bpe": FAST_BPE, "transformers": FAST_BPE.to_transformers()}
HARD_TEXTS = ["中文的句子", "😀 to be", "😀", "文", "é, naïve", " \n\t ", "a\u0301", "\U0010ffff x", "\x00\r\n"]


@FAST
@given(st.text(max_size=60))
@example("中文的句子").via("Chinese, merged into tokens of whole and partial characters")
@example("😀 to be").via("an emoji first: its first token is part of a character")
def test_every_byte_level_tokenizer_round_trips_any_text(text):
    for name, tokenizer in TOKENIZERS.items():
        ids, size = tokenizer.encode(text), len(tokenizer) if name == "transformers" else tokenizer.vocab_size
        assert all(0 <= i < size for i in ids)
        assert tokenizer.decode(ids) == text, name
    assert b"".join(BPE.token_bytes(i) for i in BPE.encode(text)) == text.encode("utf-8")
    assert b"".join(FAST_BPE.token_bytes(i) for i in FAST_BPE.encode(text)) == text.encode("utf-8")


@FAST
@given(st.text(min_size=1, max_size=40), st.text(max_size=40))
@example("中文😀", "😀中")
def test_char_tokenizer_round_trips_its_alphabet_and_names_what_it_cannot(corpus, text):
    tokenizer = CharTokenizer.train(corpus)
    known = "".join(c for c in text if c in tokenizer.chars)
    assert tokenizer.decode(tokenizer.encode(known)) == known
    if any(c not in tokenizer.chars for c in text):
        with pytest.raises(UnknownCharacterError) as err:
            tokenizer.encode(text)
        assert isinstance(err.value, ValueError) and set(err.value.characters) == set(text) - set(tokenizer.chars)


@FAST
@given(st.sampled_from(HARD_TEXTS + [CORPUS]))
def test_every_tokenizer_decodes_a_tensor_of_ids_as_its_list(text):
    for tokenizer in (BPE, FAST_BPE, CharTokenizer.train(text)):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(torch.tensor(ids, dtype=torch.long)) == tokenizer.decode(ids) == text
        assert tokenizer.decode(tuple(ids)) == text


@FAST
@given(st.lists(st.integers(-5, 400), max_size=10))
def test_decoding_ids_outside_the_vocabulary_is_refused(ids):
    if all(0 <= i < BPE.vocab_size for i in ids):
        written_out = b"".join(BPE.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        assert BPE.decode(ids) == written_out
    else:
        with pytest.raises(ValueError, match="range"):
            BPE.decode(ids)


# --- Configurations ----------------------------------------------------------------------------
@FAST
@given(st.dictionaries(st.sampled_from(["vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout"]),
                       anything, max_size=3))
def test_gpt_configs_are_valid_or_refused(changes):
    config = documented(lambda: GPTConfig.preset("tiny", **changes), *changes)
    if config is not None:
        assert config.n_embd % config.n_head == 0 and config.vocab_size >= 1 and 0 <= config.dropout < 1


@FAST
@given(st.dictionaries(st.sampled_from(["max_steps", "lr", "min_lr", "warmup_steps", "weight_decay", "betas",
                                        "grad_clip", "eval_iters", "eval_interval", "schedule", "patience"]),
                       anything, max_size=3))
@example({"lr": None}).via("min_lr was compared with an lr of None before lr was refused")
def test_training_configs_are_valid_or_refused(changes):
    config = documented(lambda: TrainConfig(**changes), *changes)
    if config is not None:
        assert config.max_steps >= 1 and 0 <= config.min_lr <= config.lr and len(config.betas) == 2


@FAST
@given(st.dictionaries(st.sampled_from(["vocab_size", "cell", "n_layer", "n_embd", "n_hidden"]), anything,
                       max_size=2))
def test_rnn_configs_build_or_are_refused(changes):
    config = documented(lambda: RNNConfig.preset("tiny", **changes), *changes)
    if config is not None:  # every config is checked; only the small ones are built (2 * 10**6 numbers at most)
        E, H, V, L = config.n_embd, config.n_hidden, config.vocab_size, config.n_layer
        assume(V * E + L * 4 * H * (E + H + 2) + H * V <= 2 * 10**6)
        model = documented(lambda: RNNLM(config), *changes)
        if model is not None:
            assert model(torch.zeros(1, 3, dtype=torch.long))[0].shape == (1, 3, config.vocab_size)


# --- Batch sources -----------------------------------------------------------------------------
@FAST
@given(st.integers(0, 300), st.integers(-3, 70), st.integers(-3, 9))
def test_random_batches_are_shifted_windows_or_refused(n, block_size, batch_size):
    data = torch.arange(n) % 50
    batches = documented(lambda: RandomBatches(data, block_size, batch_size, seed=0), "block_size", "batch_size")
    if batches is not None:
        x, y = batches()
        assert x.shape == y.shape == (batch_size, block_size)
        assert torch.equal(x[:, 1:], y[:, :-1])
        starts = [int(row[0]) for row in x]  # each row is a window of the data, read where it starts
        assert all(torch.equal(row, data[s : s + block_size]) for row, s in zip(x, starts))


@FAST
@given(st.integers(0, 300), st.integers(-3, 70), st.integers(-3, 9))
def test_sequential_batches_continue_their_streams_or_are_refused(n, block_size, batch_size):
    data = torch.arange(n)
    batches = documented(lambda: SequentialBatches(data, block_size, batch_size), "block_size", "batch_size")
    if batches is not None:
        x1, y1 = batches()
        assert x1.shape == (batch_size, block_size) and torch.equal(y1, x1 + 1)


@FAST
@given(st.text(max_size=30), st.floats(allow_nan=True, allow_infinity=True))
def test_splits_keep_every_item_or_are_refused(text, fraction):
    parts = documented(lambda: train_val_split(text, fraction), "val_fraction")
    if parts is not None:
        assert parts[0] + parts[1] == text and len(parts[0]) == int(len(text) * (1 - fraction))


# --- Training ------------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(st.integers(0, 3), st.integers(0, 5), st.sampled_from([torch.long, torch.float32]))
def test_training_on_odd_batches_learns_or_says_what_is_wrong(rows, length, dtype):
    from lmbook.training.train import train

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=8))
    x = torch.randint(0, 65, (rows, length)).to(dtype)
    history = documented(lambda: train(model, lambda: (x, x), TrainConfig(max_steps=2, progress=False)), "idx")
    if history is not None:
        assert rows >= 1 and length >= 1 and dtype == torch.long and len(history.train_loss) == 2


# --- Decoding ---------------------------------------------------------------------------------------
torch.manual_seed(0)
TINY = GPT(GPTConfig.preset("tiny", block_size=16)).eval()
DECODING = ["temperature", "top_k", "top_p", "num_beams", "repetition_penalty", "no_repeat_ngram_size",
            "num_return_sequences"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-2, 70), max_size=20), st.integers(-2, 20),
       st.dictionaries(st.sampled_from(DECODING), st.one_of(st.integers(-3, 6), st.floats(-2, 3),
                                                           st.just(float("nan"))), max_size=3))
@example([1, 2], 3, {"repetition_penalty": 1e-284}).via("a seen token's positive score divided by it overflows")
def test_generation_gives_ids_of_the_vocabulary_or_refuses(prompt, new, options):
    out = documented(lambda: generate(TINY, prompt, max_new_tokens=new, seed=0, **options),
                     "max_new_tokens", "prompt", "idx", "token ids", *options)
    if out is not None:
        assert len(prompt) >= 1 and all(0 <= i < 65 for i in prompt)
        assert out.dim() == 2 and out.shape[1] <= len(prompt) + new
        assert out[0, : len(prompt)].tolist() == prompt and ((0 <= out) & (out < 65)).all()


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=1, max_size=12), st.integers(1, 8))
def test_a_list_of_ids_and_a_tensor_of_them_decode_alike(prompt, new):
    as_list = generate(TINY, prompt, max_new_tokens=new, seed=3)
    assert torch.equal(as_list, generate(TINY, torch.tensor(prompt), max_new_tokens=new, seed=3))
    assert torch.equal(as_list, generate(TINY, [prompt], max_new_tokens=new, seed=3))


# --- Conversion ------------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(1, 8), (2, 8), (3, 12), (4, 16)]), st.integers(5, 80),
       st.integers(2, 24), st.booleans())
def test_conversion_to_transformers_and_back_keeps_the_logits(n_layer, heads_and_width, vocab, block, bias):
    from lmbook.models.hf import from_hf, to_hf

    n_head, n_embd = heads_and_width
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          bias=bias)).eval()
    idx = torch.randint(0, vocab, (2, block))
    hf = to_hf(model).eval()
    back = from_hf(hf).eval()
    with torch.no_grad():
        ours, theirs, again = model(idx)[0], hf(idx).logits, back(idx)[0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ours, atol=1e-5, rtol=1e-5)


# --- Metrics ---------------------------------------------------------------------------------------------
@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**6))
@example(1.5e308, 2).via("nll / ln 2 overflows, the bits per character (1.08e308) do not")
@example(1.7e308, 1).via("bits beyond the largest float: infinite")
def test_perplexity_and_bits_are_sensible_or_refused(nll, n_chars):
    ppl = documented(lambda: perplexity(nll), "mean_nll_nats")
    if ppl is not None:
        assert ppl >= 1.0 and (math.isinf(ppl) or math.isclose(math.log(ppl), nll, rel_tol=1e-9, abs_tol=1e-9))
    bits = documented(lambda: bits_per_char(nll, n_chars), "total_nll_nats", "n_chars")
    if bits is not None:  # compared with exact rational arithmetic, rounded once (math.inf beyond the floats)
        assert n_chars > 0
        exact = Fraction(nll) / n_chars / Fraction(math.log(2)) if math.isfinite(nll) else math.inf
        expected = math.inf if exact > sys.float_info.max else float(exact)
        assert math.isclose(bits, expected, rel_tol=1e-12)


# --- (a) An argument that takes a list refuses a bare string, or reads it as a list of one ----------------
def _lora_names(targets):
    from lmbook.models.lora import apply_lora

    torch.manual_seed(0)
    return apply_lora(GPT(GPTConfig.preset("tiny")), targets)


def _textmetric(name):
    from lmbook.evaluation import textmetrics

    return {"distinct_n": lambda texts: textmetrics.distinct_n(texts, n=1),
            "self_bleu": lambda texts: textmetrics.self_bleu(texts),
            "repetition_rate": lambda texts: textmetrics.repetition_rate(texts),
            "corpus_bleu": lambda texts: textmetrics.corpus_bleu(texts, [[t] for t in texts]).score}[name]


def _metric(name):
    from lmbook.evaluation import hf_metrics

    metric = hf_metrics.load(name)
    if name in ("bleu", "rouge"):
        return lambda texts: metric.compute(predictions=texts, references=[[t] for t in texts])
    return lambda texts: metric.compute(predictions=texts)


LIST_ARGUMENTS = {  # name -> (call with a list, what it is called with)
    "apply_lora targets": (_lora_names, "targets"),
    "generate stop_strings": (lambda s: generate(TINY, [1, 2], max_new_tokens=2, stop_strings=s, tokenizer=BPE),
                              "stop_strings"),
    **{f"textmetrics.{n}": (_textmetric(n), "texts") for n in ("distinct_n", "self_bleu", "repetition_rate")},
    "textmetrics.corpus_bleu": (_textmetric("corpus_bleu"), "candidates"),
    **{f"hf_metrics {n}": (_metric(n), "predictions") for n in ("bleu", "rouge", "distinct_n", "self_bleu")},
}


@pytest.mark.parametrize("name", LIST_ARGUMENTS)
@settings(max_examples=10, deadline=None)
@given(st.one_of(st.sampled_from(["attn.c_attn", "mlp.c_fc", "the cat sat", "n", "a a a a"]), st.text(max_size=12)))
@example("0").via("a target that names no layer: the refusal names targets and the layers to choose from")
def test_a_bare_string_is_refused_or_read_as_one_item(name, text):
    call, argument = LIST_ARGUMENTS[name]
    as_list = documented(lambda: call([text]), argument)
    try:
        as_string = call(text)
    except DOCUMENTED as err:
        check_refusal(err, (argument,))
        return
    assert as_string == as_list, f"{name} read {text!r} as something other than [{text!r}]"


# --- (b) Every argument checks its type, not only its range ---------------------------------------------------
NOT_INTS = [True, False, 2.0, 2.5, "2", float("nan"), float("inf")]
NOT_NUMBERS = [True, "1", float("nan"), [1.0]]
INT_ARGUMENTS = {  # name -> (call with the value, whether None is allowed)
    **{f"generate {k}": ((lambda k: lambda v: _generate(**{k: v}))(k), none)
       for k, none in [("max_new_tokens", False), ("top_k", True), ("num_beams", False),
                       ("no_repeat_ngram_size", False), ("num_return_sequences", False), ("seed", True),
                       ("eos_token_id", True), ("pad_token_id", True)]},
    "generate max_length": (lambda v: generate(TINY, [1, 2], max_length=v), False),
    "speculative k": (lambda v: _speculate(k=v), False),
    "speculative max_new_tokens": (lambda v: _speculate(max_new_tokens=v), False),
    "speculative eos_token_id": (lambda v: _speculate(eos_token_id=v), True),
    "lookup_draft max_ngram": (lambda v: _lookup(v), False),
    "distinct_n n": (lambda v: _textmetrics().distinct_n(["a b a c"], n=v), False),
    "self_bleu max_order": (lambda v: _textmetrics().self_bleu(["a b c", "a b d"], max_order=v), False),
    "corpus_bleu max_order": (lambda v: _textmetrics().corpus_bleu(["a b c"], ["a b c"], max_order=v), False),
    "rouge_n n": (lambda v: _textmetrics().rouge_n("a b c", "a b d", n=v), False),
    "repetition_rate min_repeats": (lambda v: _textmetrics().repetition_rate(["a a a a"], min_repeats=v), False),
    "repetition_rate max_phrase": (lambda v: _textmetrics().repetition_rate(["a a a a"], max_phrase=v), True),
    "hf_metrics distinct_n n": (lambda v: _metric_n(v), False),
    "score_text context": (lambda v: _score(context=v), True),
    "score_text stride": (lambda v: _score(stride=v), True),
    "score_text batch_size": (lambda v: _score(batch_size=v), False),
    "bits_per_char n_chars": (lambda v: bits_per_char(3.0, v), False),
    "RandomBatches block_size": (lambda v: RandomBatches(torch.arange(50), v, 2, seed=0), False),
    "RandomBatches batch_size": (lambda v: RandomBatches(torch.arange(50), 4, v, seed=0), False),
    "RandomBatches seed": (lambda v: RandomBatches(torch.arange(50), 4, 2, seed=v)(), False),
    "SequentialBatches batch_size": (lambda v: SequentialBatches(torch.arange(50), 4, v), False),
    "BPETokenizer.train vocab_size": (lambda v: BPETokenizer.train(CORPUS, v), False),
    "apply_lora r": (lambda v: _lora(r=v), False),
    "TrainConfig patience": (lambda v: TrainConfig(patience=v), True),
    "bits_per_byte n_bytes": (lambda v: bits_per_byte(3.0, v), False),
    "TextNLL tokens": (lambda v: TextNLL(3.0, tokens=v), False),
    "seed_everything seed": (lambda v: seed_everything(v), False),
}
FLOAT_ARGUMENTS = {  # name -> (call with the value, values it must refuse besides NOT_NUMBERS)
    "generate temperature": (lambda v: generate(TINY, [1, 2], max_new_tokens=3, temperature=v, seed=0),
                             [float("inf"), 1e-45, -1.0, None]),
    "generate top_p": (lambda v: generate(TINY, [1, 2], max_new_tokens=3, top_p=v, seed=0), [1.5, None]),
    "generate repetition_penalty": (lambda v: generate(TINY, [1, 2], max_new_tokens=3, repetition_penalty=v),
                                    [0.0, None, 1e-284]),
    "generate length_penalty": (lambda v: generate(TINY, [1, 2], max_new_tokens=3, num_beams=2, length_penalty=v),
                                [float("inf"), None]),
    "apply_lora alpha": (lambda v: _lora(alpha=v), [0.0, float("inf"), None]),
    "train_val_split val_fraction": (lambda v: train_val_split("abcdefghij", v), [0.0, 1.0, None]),
    "perplexity mean_nll_nats": (lambda v: perplexity(v), [-1.0, None]),
    "GPTConfig layer_norm_eps": (lambda v: GPTConfig(layer_norm_eps=v), [0.0, None]),
    "TrainConfig lr": (lambda v: TrainConfig(lr=v), [-1.0, float("inf"), None]),
    "RNNConfig forget_bias": (lambda v: RNNConfig(forget_bias=v), [float("inf"), None]),
}
BOOL_ARGUMENTS = {  # name -> call with the value; each refuses anything but True and False (None where allowed)
    "generate do_sample": lambda v: generate(TINY, [1, 2], max_new_tokens=2, do_sample=v, temperature=0.5, seed=0),
    "generate use_cache": lambda v: generate(TINY, [1, 2], max_new_tokens=2, use_cache=v, do_sample=False),
    "GPTConfig bias": lambda v: GPTConfig.preset("tiny", bias=v),
    "RNNConfig carry_state": lambda v: RNNConfig(carry_state=v),
    "TrainConfig restore_best": lambda v: TrainConfig(restore_best=v),
}
NOT_BOOLS = ["no", "False", 2, 0.5]  # 0 and 1 pass for False and True, as in Python


def _generate(**changes):
    return generate(TINY, [1, 2], **{"seed": 0, "max_new_tokens": 2, **changes})


def _speculate(model=TINY, **changes):
    from lmbook.decoding.speculative import lookup_draft, speculative_greedy

    options = {"idx": [1, 2, 1, 2], "max_new_tokens": 3, "k": 2, **changes}
    return speculative_greedy(model, draft=lookup_draft(), **options)


def _lookup(max_ngram):
    from lmbook.decoding.speculative import lookup_draft

    return lookup_draft(max_ngram)([1, 2, 3, 1, 2], 2)


def _textmetrics():
    from lmbook.evaluation import textmetrics

    return textmetrics


def _metric_n(n):
    from lmbook.evaluation import hf_metrics

    return hf_metrics.load("distinct_n").compute(predictions=["a b a c"], n=n)


def _score(**options):
    from lmbook.evaluation.metrics import score_text

    model = GPT(GPTConfig.preset("tiny", vocab_size=BPE.vocab_size, block_size=8))
    return score_text(model, BPE, CORPUS, **options)


def _lora(model=None, **options):
    from lmbook.models.lora import apply_lora

    return apply_lora(model if model is not None else GPT(GPTConfig.preset("tiny")), **options)


@pytest.mark.parametrize("name", INT_ARGUMENTS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_an_integer_argument_refuses_bools_floats_and_text(name, data):
    call, none_allowed = INT_ARGUMENTS[name]
    value = data.draw(st.sampled_from(NOT_INTS + ([] if none_allowed else [None])), label=name)
    refused(lambda: call(value), name.split()[-1])


@pytest.mark.parametrize("name", FLOAT_ARGUMENTS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_a_number_argument_refuses_bools_text_nan_and_values_out_of_range(name, data):
    call, out_of_range = FLOAT_ARGUMENTS[name]
    value = data.draw(st.sampled_from(NOT_NUMBERS + out_of_range), label=name)
    refused(lambda: call(value), name.split()[-1])


@pytest.mark.parametrize("name", BOOL_ARGUMENTS)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_a_yes_or_no_argument_refuses_anything_but_a_bool(name, data):
    value = data.draw(st.sampled_from(NOT_BOOLS), label=name)
    refused(lambda: BOOL_ARGUMENTS[name](value), name.split()[-1])


PROMPT_READERS = {
    "generate": lambda prompt: generate(TINY, prompt, max_new_tokens=2),
    "GPT.forward": lambda prompt: TINY(prompt[None]),
    "speculative_greedy": lambda prompt: _speculate(idx=prompt),
}


@pytest.mark.parametrize("reader", PROMPT_READERS)
@settings(max_examples=8, deadline=None)
@given(st.sampled_from([torch.float32, torch.float64, torch.bool, torch.complex64]))
def test_a_prompt_that_is_not_integer_ids_is_refused(reader, dtype):
    refused(lambda: PROMPT_READERS[reader](torch.tensor([1, 2, 1, 2]).to(dtype)), "idx", "prompt", "token ids")


# --- (c) A call that raises leaves the model as it was ----------------------------------------------------------
def state_of(model: torch.nn.Module) -> dict:
    """Everything a call could change in a model: values, layout, trainability, mode and structure."""
    return {"parameters": {n: (p.detach().clone(), p.stride(), p.requires_grad) for n, p in model.named_parameters()},
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "modules": [(n, type(m).__name__, m.training) for n, m in model.named_modules()]}


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["parameters"].keys() == before["parameters"].keys()
    for name, (value, stride, grad) in before["parameters"].items():
        now = after["parameters"][name]
        assert torch.equal(now[0], value) and now[1:] == (stride, grad), name
    assert all(torch.equal(after["buffers"][n], b) for n, b in before["buffers"].items())


def fresh_model() -> GPT:
    """A tiny GPT in training mode with its position table frozen: a change of mode or of trainability shows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", block_size=16))
    model.wpe.weight.requires_grad_(False)
    return model


hostile = st.one_of(st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                    st.text(max_size=3))
CALLS = {  # name -> (a call on the model with a hostile value drawn by hypothesis, what to draw)
    "generate": (lambda m, v: generate(m, [1, 2, 3], **{"seed": 0, "max_new_tokens": 3, v[0]: v[1]}),
                 st.tuples(st.sampled_from(DECODING + ["max_new_tokens", "eos_token_id", "use_cache"]), hostile)),
    "speculative_greedy": (lambda m, v: _speculate(model=m, **{v[0]: v[1]}),
                           st.tuples(st.sampled_from(["k", "max_new_tokens", "eos_token_id"]), hostile)),
    "apply_lora": (lambda m, v: _lora(model=m, targets=v[0], r=v[1], alpha=v[2]),
                   st.tuples(st.one_of(st.sampled_from(["attn.c_attn", "mlp", "wte", "", "lm_head"]),
                                       st.lists(st.sampled_from(["attn.c_attn", "x", ""]), max_size=2)),
                             hostile, hostile)),
    "forward": (lambda m, v: m(torch.tensor([[1, 2, v]])) if isinstance(v, int) else m(v), hostile),
}


@pytest.mark.parametrize("name", CALLS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_a_refused_call_leaves_the_model_as_it_was(name, data):
    call, values = CALLS[name]
    model = fresh_model()
    before = state_of(model)
    try:
        call(model, data.draw(values, label="argument"))
    except DOCUMENTED as err:
        check_refusal(err, None)
    else:
        if name == "apply_lora":  # adapted as asked; the others never change the model
            return
    assert_same_state(before, state_of(model))


TRAINING_CASES = {  # name -> (batches, TrainConfig changes, eval_batches) of a run that must be refused
    "float ids": (lambda: (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long)), {}, None),
    "ids out of range": (lambda: (torch.full((2, 4), 99), torch.zeros(2, 4, dtype=torch.long)), {}, None),
    "targets of another shape": (lambda: (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)),
                                 {}, None),
    "eval_batches not a dict": (None, {}, lambda: (torch.zeros(2, 4, dtype=torch.long),) * 2),
    "checkpoint_path a folder": (None, {"checkpoint_path": "."}, None),
}
@pytest.mark.parametrize("case", TRAINING_CASES)
def test_a_refused_training_run_leaves_the_model_as_it_was(case, tmp_path, monkeypatch):
    from lmbook.training.train import train

    batches, changes, evals = TRAINING_CASES[case]
    batches = batches or (lambda: (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)))
    monkeypatch.chdir(tmp_path)
    model = fresh_model()
    before = state_of(model)
    config = TrainConfig(max_steps=3, eval_interval=2, eval_iters=1, progress=False, **changes)
    refused(lambda: train(model, batches, config, eval_batches=evals), *changes, "eval_batches", "targets", "idx")
    assert_same_state(before, state_of(model))


# --- (d) A batch of prompts of different lengths decodes each as it would alone -------------------------------
torch.manual_seed(1)
SMALL = GPT(GPTConfig(vocab_size=6, block_size=24, n_layer=1, n_head=2, n_embd=16)).eval()  # 6 ids: many repeats


def assert_greedy(sequence: list[int], prompt_length: int, ngram: int, penalty: float) -> None:
    """Every new token of ``sequence`` is the best one after the tokens before it (those alone), written out:
    the logits, CTRL's penalty on the tokens seen, -inf on tokens that would repeat an n-gram; near-ties pass."""
    for t in range(prompt_length, len(sequence)):
        seen = sequence[:t]
        with torch.no_grad():
            scores = SMALL(torch.tensor([seen]))[0][0, -1].clone()
        for token in set(seen):
            scores[token] = scores[token] * penalty if scores[token] < 0 else scores[token] / penalty
        if ngram and t >= ngram - 1:
            tail = seen[t - ngram + 1 :]
            for start in range(t - ngram + 1):
                if seen[start : start + ngram - 1] == tail:
                    scores[seen[start + ngram - 1]] = float("-inf")
        chosen = sequence[t]
        assert scores[chosen] >= scores.max() - 1e-4, (
            f"token {t} of {sequence} is {chosen} (score {scores[chosen]:.4f}), not the best: {scores.tolist()}")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=6), min_size=2, max_size=3),
       st.sampled_from([0, 2, 3]), st.sampled_from([1.0, 1.5]), st.integers(1, 6))
@example([[4, 2, 0, 4], [0]], 3, 1.5, 2).via("padding read as text: the row of [0] bans the 0 it would take alone")
@example([[1, 0], [5, 2, 3, 0, 0]], 2, 1.0, 3)
def test_a_batch_of_prompts_decodes_each_as_it_would_alone(prompts, ngram, penalty, new):
    options = dict(max_new_tokens=new, do_sample=False, no_repeat_ngram_size=ngram, repetition_penalty=penalty)
    batch = generate(SMALL, prompts, **options)
    T = max(map(len, prompts))
    for row, prompt in zip(batch.tolist(), prompts):
        alone = generate(SMALL, prompt, **options)[0].tolist()
        assert alone[: len(prompt)] == prompt and len(alone) == len(prompt) + new
        assert_greedy(alone, len(prompt), ngram, penalty)
        mine = row[T - len(prompt) :]  # the row without its left padding
        assert mine[: len(prompt)] == prompt and len(mine) == len(prompt) + new
        assert_greedy(mine, len(prompt), ngram, penalty)


# --- (e) Scoring text that a byte-level BPE splits inside characters ---------------------------------------------
SCORER = GPT(GPTConfig.preset("tiny", vocab_size=BPE.vocab_size, block_size=40)).eval()


@FAST
@given(st.sampled_from(HARD_TEXTS[:5] + [WORLD]).flatmap(lambda t: st.just(t) | st.text(alphabet=t, min_size=2,
                                                                                         max_size=20)))
@example("😀 to be")
@example("中文的句子")
def test_score_text_counts_what_a_byte_level_bpe_predicts(text):
    from lmbook.evaluation.metrics import score_text

    ids = BPE.encode(text)
    assume(2 <= len(ids) <= 41)
    scored = score_text(SCORER, BPE, text, context=len(ids) - 1)
    with torch.no_grad():  # one window: every token after the first predicted from the tokens before it
        expected = F.cross_entropy(SCORER(torch.tensor([ids[:-1]]))[0][0], torch.tensor(ids[1:]), reduction="sum")
    assert math.isclose(scored.nats, float(expected), rel_tol=1e-5) and scored.tokens == len(ids) - 1
    first = BPE.token_bytes(ids[0])
    assert scored.bytes == len(text.encode("utf-8")) - len(first)
    starts = [len(text[:i].encode("utf-8")) for i in range(len(text) + 1)]  # where each character begins
    whole = sum(end <= len(first) for end in starts[1:])  # characters the first token holds entirely
    touched = sum(start < len(first) for start in starts[:-1])  # and those it holds a part of
    assert len(text) - touched <= scored.chars <= len(text) - whole
