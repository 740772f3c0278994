"""lmbook.models.embeddings: SGNS gradients against autograd, a skip-gram loss that falls, PPMI and SVD against the
written-out formulas, neighbours against a brute-force search, and the errors."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from lmbook.models.embeddings import (
    UNK,
    SkipGram,
    SkipGramBatches,
    Vocabulary,
    cooccurrence,
    cosine_neighbours,
    neighbour_agreement,
    neighbours,
    noise_distribution,
    ppmi,
    project_2d,
    sgns_gradients,
    sgns_loss,
    svd_embeddings,
    words,
)
from lmbook.training.train import TrainConfig, train


def two_topics(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """A corpus in which the words of each topic occur only with each other: sentences of 6 words of one topic."""
    topics = [["sun", "moon", "star", "sky", "cloud"], ["fish", "sea", "wave", "boat", "shore"]]
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_sentences):
        topic = topics[torch.randint(2, (1,), generator=rng).item()]
        out += [topic[i] for i in torch.randint(5, (6,), generator=rng).tolist()]
    return out


# --- Words and vocabulary --------------------------------------------------------------------
def test_words_are_lower_cased_without_punctuation_numbers_or_newlines():
    assert words("O Romeo, Romeo!\nWherefore art thou 2 o'er-\n") == ["o", "romeo", "romeo", "wherefore", "art",
                                                                       "thou", "o'er"]
    with pytest.raises(TypeError, match="str"):
        words(["not", "text"])


def test_vocabulary_orders_by_count_and_maps_the_rest_to_unk():
    vocab = Vocabulary.build(["b", "a", "b", "c", "a", "b", "d"], min_count=2)
    assert vocab.itos == ["b", "a", UNK] and vocab.unk == 2 and len(vocab) == 3
    assert vocab.counts.tolist() == [3, 2, 2]  # c and d: two words under the cutoff
    assert vocab.encode(["a", "zzz", "b"]).tolist() == [1, 2, 0]
    assert vocab.encode(["a", "zzz", "b"], drop_unknown=True).tolist() == [1, 0]
    with pytest.raises(KeyError, match="zzz"):
        vocab.id("zzz")
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(["a"], min_count=0)
    with pytest.raises(ValueError, match="no word occurs"):
        Vocabulary.build(["a", "b"], min_count=2)


# --- Skip-gram with negative sampling -------------------------------------------------------------
def test_sgns_gradients_written_out_equal_autograd():
    torch.manual_seed(0)
    v, u_pos, u_neg = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((3, 4), (3, 4), (3, 5, 4)))
    sgns_loss(v, u_pos, u_neg).sum().backward()
    dv, du_pos, du_neg = sgns_gradients(v.detach(), u_pos.detach(), u_neg.detach())
    torch.testing.assert_close(dv, v.grad)
    torch.testing.assert_close(du_pos, u_pos.grad)
    torch.testing.assert_close(du_neg, u_neg.grad)


def test_sgns_loss_is_the_written_out_formula():
    v, u_pos, u_neg = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]]), torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    def log_sigma(x: float) -> float:
        return -math.log(1 + math.exp(-x))

    expected = -log_sigma(0.5 - 2.0) - log_sigma(-3.0) - log_sigma(-4.0)
    assert sgns_loss(v, u_pos, u_neg).item() == pytest.approx(expected, rel=1e-6)


def test_skipgram_scores_loss_and_errors():
    torch.manual_seed(0)
    model = SkipGram(10, 4)
    torch.nn.init.normal_(model.context.weight)
    centres, targets = torch.tensor([1, 2]), torch.tensor([[3, 4, 5], [6, 7, 8]])
    scores, loss = model(centres, targets)
    assert scores.shape == (2, 3)
    v, u = model.centre.weight[centres], model.context.weight[targets]
    torch.testing.assert_close(scores, torch.einsum("bd,bkd->bk", v, u))
    torch.testing.assert_close(loss, sgns_loss(v, u[:, 0], u[:, 1:]).mean())
    assert model.context.weight.abs().sum() > 0 and SkipGram(10, 4).context.weight.abs().sum() == 0  # word2vec.c
    with pytest.raises(ValueError, match="1 \\+ K"):
        model(centres, targets[:, :1])
    with pytest.raises(ValueError, match="vocab_size"):
        SkipGram(1, 4)


def test_skipgram_batches_are_windows_and_noise_and_deterministic():
    ids = torch.arange(1000)  # every word once: a context id minus its centre id is the distance
    counts = torch.ones(1000)

    def make(seed: int) -> SkipGramBatches:
        return SkipGramBatches(ids, counts, window=3, negatives=4, batch_size=256, subsample=0, seed=seed)

    batches = make(0)
    centres, targets = batches()
    assert centres.shape == (256,) and targets.shape == (256, 5)
    distance = (targets[:, 0] - centres).abs()
    assert distance.min() >= 1 and distance.max() <= 3
    assert (distance == 1).sum() > (distance == 3).sum()  # a shrunk window favours near words
    again = make(0)
    torch.testing.assert_close(again(), (centres, targets))
    state = batches.state_dict()
    following = batches()
    again.load_state_dict(state)
    torch.testing.assert_close(again(), following)
    assert not torch.equal(make(1)()[0], centres)
    with pytest.raises(ValueError, match="window"):
        SkipGramBatches(ids, counts, window=0)
    with pytest.raises(ValueError, match="too few"):
        SkipGramBatches(ids[:4], counts, window=2, subsample=0)


def test_negatives_follow_the_unigram_distribution_to_the_three_quarters():
    counts = torch.tensor([1.0, 16.0, 81.0])
    expected = torch.tensor([1.0, 8.0, 27.0]) / 36  # c ** 0.75
    torch.testing.assert_close(noise_distribution(counts), expected)
    batches = SkipGramBatches(torch.tensor([0, 1, 2] * 10), counts, window=1, negatives=50, batch_size=400,
                              subsample=0, seed=0)
    drawn = torch.bincount(batches()[1][:, 1:].flatten(), minlength=3).float() / 20_000
    torch.testing.assert_close(drawn, expected, atol=0.01, rtol=0)


def test_subsampling_thins_out_frequent_words():
    ids = torch.tensor([0] * 900 + [1] * 100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    counts = torch.tensor([900.0, 100.0])
    kept = SkipGramBatches(ids, counts, window=1, subsample=0.05, seed=0).ids
    # keep probabilities sqrt(0.05 / 0.9) = 0.236 and min(1, sqrt(0.05 / 0.1)) = 0.707
    assert (kept == 0).sum().item() == pytest.approx(900 * 0.236, abs=45)
    assert (kept == 1).sum().item() == pytest.approx(100 * 0.707, abs=20)


def test_skipgram_loss_falls_and_neighbours_share_a_topic():
    corpus = two_topics()
    vocab = Vocabulary.build(corpus, min_count=1)
    ids = vocab.encode(corpus)
    torch.manual_seed(0)
    model = SkipGram(len(vocab), 8)
    batches = SkipGramBatches(ids, vocab.counts, window=2, negatives=3, batch_size=128, subsample=0, seed=0)
    held_out = SkipGramBatches(ids, vocab.counts, window=2, negatives=3, batch_size=128, subsample=0, seed=1)
    config = TrainConfig(max_steps=150, lr=0.05, warmup_steps=5, weight_decay=0.0, eval_interval=150, eval_iters=4,
                         progress=False)
    history = train(model, batches, config, {"val": held_out})
    first, last = history.eval_loss["val"]
    assert first == pytest.approx(4 * math.log(2), rel=1e-3)  # context vectors start at 0: every σ is 1/2
    assert last < 0.8 * first
    for word in ("sun", "boat"):
        topic = {"sun", "moon", "star", "sky", "cloud"} if word == "sun" else {"fish", "sea", "wave", "boat", "shore"}
        assert {w for w, _ in neighbours(model.table, vocab, word, k=3)} <= topic


# --- The count-based route ----------------------------------------------------------------
def test_cooccurrence_against_a_written_out_count():
    ids = torch.tensor([0, 1, 2, 0, 2, 1, 1])
    for weighting in ("uniform", "harmonic"):
        expected = torch.zeros(3, 3, dtype=torch.float64)
        for i in range(len(ids)):
            for j in range(len(ids)):
                if 0 < abs(i - j) <= 2:
                    expected[ids[i], ids[j]] += 1.0 if weighting == "uniform" else 1.0 / abs(i - j)
        torch.testing.assert_close(cooccurrence(ids, 3, window=2, weighting=weighting), expected)
    with pytest.raises(ValueError, match="weighting"):
        cooccurrence(ids, 3, weighting="linear")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        cooccurrence(ids, 2)


@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_ppmi_against_the_written_out_formula(alpha):
    counts = torch.tensor([[0.0, 4.0, 1.0], [4.0, 2.0, 0.0], [1.0, 0.0, 6.0]])
    n = counts.sum().item()
    rows, cols = counts.sum(1).tolist(), counts.sum(0).tolist()
    smoothed = sum(c ** alpha for c in cols)
    expected = torch.zeros(3, 3)
    for w in range(3):
        for c in range(3):
            if counts[w, c] > 0:
                pmi = math.log((counts[w, c].item() / n) / ((rows[w] / n) * (cols[c] ** alpha / smoothed)))
                expected[w, c] = max(pmi, 0.0)
    torch.testing.assert_close(ppmi(counts, alpha), expected)
    with pytest.raises(ValueError, match="alpha"):
        ppmi(counts, alpha=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        ppmi(-counts)


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_truncated_svd_against_the_full_one(power):
    torch.manual_seed(0)
    matrix = torch.randn(40, 3) @ torch.randn(3, 30)  # rank 3, so the top 3 directions are exact
    U, S, _ = torch.linalg.svd(matrix, full_matrices=False)
    table = svd_embeddings(matrix, 3, power=power)
    assert table.shape == (40, 3)
    # E E^T = U S^(2p) U^T does not depend on the signs the two methods choose
    torch.testing.assert_close(table @ table.T, (U[:, :3] * S[:3] ** (2 * power)) @ U[:, :3].T, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(svd_embeddings(matrix, 3, power=power), table)  # seeded
    with pytest.raises(ValueError, match="dim"):
        svd_embeddings(matrix, 31)


# --- Comparing tables ----------------------------------------------------------------------
def test_cosine_neighbours_against_a_brute_force_search():
    torch.manual_seed(0)
    table = torch.randn(30, 5)
    ids, sims = cosine_neighbours(table, torch.tensor([3, 17]), k=4)
    for row, query in enumerate((3, 17)):
        scores = [(torch.nn.functional.cosine_similarity(table[query], table[j], dim=0).item(), j)
                  for j in range(30) if j != query]
        best = sorted(scores, reverse=True)[:4]
        assert ids[row].tolist() == [j for _, j in best]
        torch.testing.assert_close(sims[row], torch.tensor([s for s, _ in best]))
    with pytest.raises(ValueError, match="k must be"):
        cosine_neighbours(table, torch.tensor([0]), k=30)


def test_neighbour_agreement_of_same_rotated_and_unrelated_tables():
    torch.manual_seed(0)
    table = torch.randn(50, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))  # cosines do not change under a rotation
    ids = torch.arange(50)
    assert neighbour_agreement(table, table @ rotation, ids, k=5)["overlap"] == pytest.approx(1.0)
    unrelated = neighbour_agreement(table, torch.randn(50, 8), ids, k=5)
    assert unrelated["chance"] == pytest.approx(5 / 49)
    assert unrelated["overlap"] < 0.3 and unrelated["per_word"].shape == (50,)
    with pytest.raises(ValueError, match="same vocabulary"):
        neighbour_agreement(table, table[:40], ids[:10])


def test_project_2d_keeps_the_two_directions_of_largest_variance():
    torch.manual_seed(0)
    table = torch.randn(200, 6) * torch.tensor([5.0, 0.2, 3.0, 0.1, 0.1, 0.1])
    points = project_2d(table)
    assert points.shape == (200, 2)
    S = torch.linalg.svdvals(table - table.mean(0))
    torch.testing.assert_close(points.var(0, correction=1), S[:2] ** 2 / 199, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(project_2d(-table), points)  # signs fixed, not left to the solver
    with pytest.raises(ValueError, match="table"):
        project_2d(torch.randn(5))


def test_counter_and_tensor_counts_agree():
    corpus = two_topics(20)
    vocab = Vocabulary.build(corpus, min_count=1)
    counts = Counter(corpus)
    assert vocab.counts[:-1].tolist() == [counts[w] for w in vocab.itos[:-1]]
