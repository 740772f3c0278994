"""Speculative sampling (lmbook.decoding.speculative.speculative_sampling): its text is distributed as the model's.

Two tiny "models" over 5 tokens whose next-token distribution depends on the last token only (a table
of logits, the target's and the draft's different) make the exact distribution of the first four
emitted tokens computable. 2,000 seeded runs are compared with it on every pair of neighbouring
tokens: the total variation must stay under 0.1 (its expected value at this many draws is below
0.5 * sqrt(25 / 2000) = 0.056) and Pearson's chi-square under 51.18, the 0.999 quantile of 24 degrees
of freedom. The same test, run on a variant that keeps every proposal, fails.
"""

import pytest
import torch
import torch.nn as nn

from lmbook.decoding import speculative
from lmbook.decoding.generate import generate
from lmbook.decoding.speculative import accept_probability, residual, speculative_sampling
from lmbook.models.gpt import GPT, GPTConfig

V, DRAWS, STEPS = 5, 2000, 4
TV_TOLERANCE, CHI2_999_24 = 0.1, 51.18


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny computations: one thread (tests/conftest.py)."""


class TableCache:
    can_rollback = True

    def __init__(self):
        self.pos = 0

    def reset(self):
        self.pos = 0

    def reorder(self, rows):
        pass

    def rollback(self, n):
        assert 0 <= n <= self.pos
        self.pos -= n


class TableModel(nn.Module):
    """Next-token logits that depend on the last token only: ``table[last]`` (a bigram model)."""

    reads_padding, context_length = False, None

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self.read = []  # how many tokens each call read

    @property
    def vocab_size(self):
        return self.table.size(0)

    def make_cache(self, batch_size=None):
        return TableCache()

    def forward(self, idx, targets=None, cache=None):
        if cache is not None:
            cache.pos += idx.size(1)
        self.read.append(idx.size(1))
        return self.table[idx], None


def tables(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(V, V, generator=gen), 1.5 * torch.randn(V, V, generator=gen)


def exact_pairs(table: torch.Tensor, first: int) -> list[torch.Tensor]:
    """The exact distribution (V, V) of each pair of neighbouring emitted tokens after the token ``first``."""
    P = table.double().softmax(-1)  # (V, V): row a is the distribution after a
    marginal, pairs = P[first], []
    for _ in range(STEPS - 1):
        pairs.append(marginal[:, None] * P)  # (V, V): this token and the next
        marginal = marginal @ P
    return pairs


def observed_pairs(target, draft, k: int, **settings) -> tuple[list[torch.Tensor], float]:
    counts, kept, proposed = torch.zeros(STEPS - 1, V, V, dtype=torch.float64), 0, 0
    for seed in range(DRAWS):
        out = speculative_sampling(target, draft, [0], STEPS, k=k, seed=seed, **settings)
        new = out.ids[0, 1:].tolist()
        for i in range(STEPS - 1):
            counts[i, new[i], new[i + 1]] += 1
        kept, proposed = kept + out.accepted, proposed + out.proposed
    return list(counts / DRAWS), kept / proposed


def distances(observed: list[torch.Tensor], exact: list[torch.Tensor]) -> tuple[float, float]:
    """The largest total variation and chi-square statistic over the pairs."""
    tv = max(0.5 * (o - e).abs().sum().item() for o, e in zip(observed, exact))
    chi2 = max((DRAWS * (o - e) ** 2 / e).sum().item() for o, e in zip(observed, exact))
    return tv, chi2


def matches(observed: list[torch.Tensor], exact: list[torch.Tensor]) -> bool:
    tv, chi2 = distances(observed, exact)
    return tv < TV_TOLERANCE and chi2 < CHI2_999_24


def test_the_emitted_tokens_are_distributed_as_the_model_s():
    target, draft = (TableModel(t) for t in tables())
    observed, acceptance = observed_pairs(target, draft, 3)
    assert matches(observed, exact_pairs(target.table, 0)), distances(observed, exact_pairs(target.table, 0))
    assert 0.2 < acceptance < 0.9  # the draft differs: some proposals are rejected, some kept


def test_a_variant_that_keeps_every_proposal_fails_the_same_test(monkeypatch):
    target, draft = (TableModel(t) for t in tables())
    monkeypatch.setattr(speculative, "accept_probability", lambda p, q: 1.0)
    observed, acceptance = observed_pairs(target, draft, 3)
    assert acceptance == 1.0
    assert not matches(observed, exact_pairs(target.table, 0))
    assert distances(observed, exact_pairs(target.table, 0))[0] > 2 * TV_TOLERANCE  # far off, not borderline
    assert matches(observed[:2], exact_pairs(draft.table, 0)[:2])  # it samples the draft instead


def test_the_filters_act_on_both_and_the_text_follows_the_filtered_model():
    target, draft = (TableModel(t) for t in tables(1))
    observed, _ = observed_pairs(target, draft, 2, temperature=0.7)
    assert matches(observed, exact_pairs(target.table / 0.7, 0))


def test_the_rule_and_the_residual():
    assert accept_probability(0.3, 0.6) == pytest.approx(0.5) and accept_probability(0.6, 0.3) == 1.0
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2])
    assert torch.allclose(residual(p, q), torch.tensor([1.0, 0.0, 0.0]))
    # p = min(p, q) + (1 - sum min) * residual: keeping with min(1, p/q) and correcting gives back p
    kept = torch.minimum(p, q)
    assert torch.allclose(kept + (1 - kept.sum()) * residual(p, q), p)
    assert torch.equal(residual(p, p), p)


def test_a_draft_equal_to_the_model_is_always_kept_and_the_caches_read_each_token_once():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    out = speculative_sampling(model, model, [1, 2, 3], 20, k=4, seed=0)
    assert out.accepted == out.proposed > 0 and out.ids.shape == (1, 23)
    assert out.passes == -(-20 // 5)  # k + 1 tokens a pass
    table = TableModel(tables()[0])
    out = speculative_sampling(table, TableModel(tables()[1]), [0, 1], 30, k=3, seed=1)
    assert sum(table.read) == 2 + 30 + out.proposed - out.accepted - 1  # rejected proposals read again: never


def test_seeded_runs_repeat_and_the_end_id_stops(monkeypatch):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=V, block_size=40, n_layer=1, n_head=2, n_embd=16)).eval()
    draft = GPT(GPTConfig(vocab_size=V, block_size=40, n_layer=1, n_head=1, n_embd=8)).eval()
    a = speculative_sampling(model, draft, [1, 2], 25, seed=3)
    assert torch.equal(a.ids, speculative_sampling(model, draft, [1, 2], 25, seed=3).ids)
    end = int(a.ids[0, 4])
    b = speculative_sampling(model, draft, [1, 2], 25, seed=3, eos_token_id=end)
    assert b.ids[0, -1] == end and end not in b.ids[0, 2:-1].tolist()
    assert torch.equal(b.ids[0], a.ids[0, : b.ids.size(1)])
    assert generate(model, [1, 2], 3, seed=0).shape == (1, 5)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(top_k=3, num_beams=2), TypeError, "sampling settings"),
    (dict(temperature=0), ValueError, "temperature must be > 0"),
    (dict(k=0), ValueError, "k"),
])
def test_bad_arguments_are_refused(kwargs, error, message):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    args = {"k": 2, **kwargs}
    with pytest.raises(error, match=message):
        speculative_sampling(model, model, [1], 4, **args)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_sampling(model, GPT(GPTConfig(vocab_size=V + 1, block_size=16, n_layer=1, n_head=1, n_embd=8)),
                             [1], 4)
    with pytest.raises(ValueError, match="draft's context"):
        speculative_sampling(TableModel(tables()[0]), model, [1], 20)


def test_the_rule_drawn_at_once_gives_the_model_s_distribution():
    p, q = tables(2)[0][0].softmax(-1), tables(2)[1][0].softmax(-1)
    n = 40_000
    draws = speculative.rule_draws(p, q, n, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=V) / n
    assert 0.5 * (freq - p).abs().sum() < 0.02  # expected below 0.5 * sqrt(5 / 40000) = 0.006
    always = torch.multinomial(q, n, replacement=True, generator=torch.Generator().manual_seed(0))
    assert 0.5 * (torch.bincount(always, minlength=V) / n - p).abs().sum() > 0.1  # the draft alone is far off
    with pytest.raises(ValueError, match="same size"):
        speculative.rule_draws(p, q[:3], 10)
