"""min-p, typical, epsilon and eta sampling (lmbook.decoding.warpers) against transformers' warpers, ties included."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from lmbook.decoding.generate import generate
from lmbook.decoding.shared import GenerationConfig, process_scores
from lmbook.decoding.warpers import epsilon_filter, eta_filter, eta_threshold, min_p_filter, typical_filter
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.hf import to_hf

V = 67


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny computations: one thread (tests/conftest.py)."""


def tied_logits(rows: int = 64, seed: int = 0) -> torch.Tensor:
    """Logits on a coarse grid (many ties), a uniform row, a row half -inf, a row with one huge logit."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(-6, 7, (rows, V), generator=gen).float() / 2  # 13 values over 67 tokens: ties
    logits[0] = 0.0
    logits[1, ::2] = float("-inf")
    logits[2, 5] = 30.0  # nearly all the mass on one token: entropy near 0
    return logits


def smooth_logits(rows: int = 32, seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(rows, V, generator=torch.Generator().manual_seed(seed))


FILTERS = [
    (min_p_filter, MinPLogitsWarper, "min_p", [0.0, 0.05, 0.3, 0.9, 1.0]),
    (typical_filter, TypicalLogitsWarper, "mass", [0.05, 0.2, 0.5, 0.9, 0.999]),
    (epsilon_filter, EpsilonLogitsWarper, "epsilon", [1e-4, 0.01, 0.05, 0.2, 0.9]),
    (eta_filter, EtaLogitsWarper, "epsilon", [1e-4, 3e-3, 0.05, 0.2, 0.9]),
]


@pytest.mark.parametrize("ours, theirs, name, values", FILTERS, ids=lambda x: getattr(x, "__name__", None))
def test_each_filter_equals_transformers_with_ties(ours, theirs, name, values):
    ids = torch.zeros(64, 0, dtype=torch.long)
    for logits in (tied_logits(), smooth_logits()):
        for value in values:
            for min_keep in (1, 2, 5):
                expected = theirs(**{name: value, "min_tokens_to_keep": min_keep})(ids, logits.clone())
                got = ours(logits, value, min_keep)
                assert torch.equal(got, expected), (name, value, min_keep)
                assert int((got > float("-inf")).sum(-1).min()) >= min(min_keep, int((logits > float("-inf"))
                                                                               .sum(-1).min()))


def test_the_filters_do_what_their_formulas_say():
    logits = smooth_logits(rows=4)
    p = logits.softmax(-1)
    kept = min_p_filter(logits, 0.2) > float("-inf")
    assert torch.equal(kept, p >= 0.2 * p.max(-1, keepdim=True).values)
    assert torch.equal(epsilon_filter(logits, 0.02) > float("-inf"), (p >= 0.02) | (p == p.max(-1, keepdim=True)
                                                                                     .values))
    entropy = -(p * p.log()).sum(-1, keepdim=True)
    eta = torch.minimum(torch.tensor(0.01), 0.1 * torch.exp(-entropy))
    assert torch.allclose(eta_threshold(logits, 0.01), eta, rtol=1e-5)
    # typical: the kept set is the prefix of tokens sorted by |-log p - H| whose mass first reaches the target
    for row in range(4):
        distance = (-p[row].log() - entropy[row]).abs()
        order = distance.argsort()
        cum = p[row, order].cumsum(0)
        n = int((cum < 0.5).sum()) + 1
        expected = torch.zeros(V, dtype=torch.bool)
        expected[order[:n]] = True
        assert torch.equal(typical_filter(logits[row : row + 1], 0.5)[0] > float("-inf"), expected)


def test_typical_can_drop_the_likeliest_token():
    logits = torch.tensor([[4.0] + [2.0] * 30])  # one likely token and a flat crowd: the crowd is typical
    assert typical_filter(logits, 0.5)[0, 0] == float("-inf")
    assert min_p_filter(logits, 0.5)[0, 0] == 4.0  # min-p always keeps the likeliest


def test_process_scores_chains_every_warper_in_transformers_order():
    logits = tied_logits(seed=3) + torch.randn(64, V, generator=torch.Generator().manual_seed(4))
    ids = torch.zeros(64, 0, dtype=torch.long)
    config = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                              typical_p=0.9, epsilon_cutoff=3e-3, eta_cutoff=2e-3)
    theirs = logits.clone()
    for warper in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(40), TopPLogitsWarper(0.95), MinPLogitsWarper(0.05),
                   TypicalLogitsWarper(0.9), EpsilonLogitsWarper(3e-3), EtaLogitsWarper(2e-3)):
        theirs = warper(ids, theirs)
    assert torch.equal(process_scores(logits, ids, config, sampling=True), theirs)
    assert torch.equal(process_scores(logits, ids, config, sampling=False), logits)  # greedy: no warpers


@pytest.mark.parametrize("settings", [dict(min_p=0.1), dict(typical_p=0.8), dict(epsilon_cutoff=0.01),
                                      dict(eta_cutoff=0.005), dict(temperature=0.8, min_p=0.05, typical_p=0.95)],
                         ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_seeded_sampling_draws_the_same_ids_as_transformers(settings):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(8)  # peaked distributions, so that the filters remove something
    hf_model = to_hf(model).eval()
    assert isinstance(hf_model, GPT2LMHeadModel) and isinstance(hf_model.config, GPT2Config)
    prompts = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    ours = generate(model, prompts, 40, do_sample=True, top_k=0, seed=7, **settings)
    torch.manual_seed(7)
    theirs = hf_model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=40, do_sample=True,
                               top_k=0, **settings)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("bad, message", [
    (dict(min_p=1.5), "min_p must be in \\[0, 1\\]"), (dict(min_p=True), "min_p must be a number"),
    (dict(typical_p=0.0), "typical_p must be in \\(0, 1\\]"), (dict(epsilon_cutoff=1.0), "epsilon_cutoff must be"),
    (dict(eta_cutoff=-0.1), "eta_cutoff must be in \\[0, 1\\)"),
])
def test_bad_settings_are_refused_with_the_range(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        GenerationConfig(max_new_tokens=1, **bad)
