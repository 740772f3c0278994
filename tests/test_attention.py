"""Attention written out (lmbook.models.attention) against PyTorch's fused kernel and the GPT's own layers."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmbook.models.attention import (
    attention, attention_cost, attention_maps, causal_mask, merge_heads, order_test, self_attention,
    softmax_saturation, split_heads,
)
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.mlm import Encoder
from lmbook.models.variants import PostLNGPT, SinusoidalGPT, TokenIdPositionGPT, gpt_class, sinusoidal_table


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_head", [1, 3])
def test_written_out_attention_equals_sdpa(causal, n_head):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, n_head, 11, 8).unbind(0)  # each (B, nh, T, hs)
    out, weights = attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, n_head, 11))
    if causal:
        assert (weights[..., ~causal_mask(11)] == 0).all()


def test_unscaled_attention_is_sdpa_with_scale_one():
    q, k, v = torch.randn(3, 1, 2, 5, 16).unbind(0)
    torch.testing.assert_close(attention(q, k, v, scale=False)[0], F.scaled_dot_product_attention(q, k, v, scale=1.0))


def test_causal_mask_for_fewer_queries_than_keys_matches_the_last_rows():
    q, k, v = torch.randn(3, 1, 1, 6, 4).unbind(0)
    full, _ = attention(q, k, v, causal=True)
    last, _ = attention(q[..., 4:, :], k, v, causal=True)  # queries at positions 4 and 5 of 6 keys
    torch.testing.assert_close(last, full[..., 4:, :])


def test_heads_split_and_merge_back():
    x = torch.randn(2, 7, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 7, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])  # head 1 holds channels 4..7
    torch.testing.assert_close(merge_heads(heads), x)


@pytest.mark.parametrize("causal", [True, False])
def test_written_out_self_attention_equals_the_gpt_layer(causal):
    torch.manual_seed(0)
    model = (GPT if causal else Encoder)(GPTConfig.preset("tiny", n_head=4)).eval()
    layer = model.h[1].attn
    x = torch.randn(3, 9, 32)
    ours, weights = self_attention(layer, x)
    torch.testing.assert_close(ours, layer(x))
    assert weights.shape == (3, 4, 9, 9)


def test_attention_maps_match_each_layer_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", n_layer=3)).train()
    idx = torch.randint(0, 65, (2, 10))
    maps = attention_maps(model, idx)
    assert maps.shape == (3, 2, 2, 10, 10) and model.training
    assert all(len(block.attn._forward_hooks) == 0 for block in model.h)
    # layer 0 sees ln_1 of the embeddings: recompute its weights by hand
    x = model.wte(idx) + model.wpe.weight[:10]
    torch.testing.assert_close(maps[0], self_attention(model.h[0].attn, model.h[0].ln_1(x))[1])
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 2, 10))
    assert (maps[..., ~causal_mask(10)] == 0).all()


def test_scaling_keeps_the_softmax_from_saturating():
    s = softmax_saturation(d_ks=(4, 256), n_keys=32, samples=64)
    assert s["unscaled"]["score_std"][1] == pytest.approx(16.0, rel=0.15)  # sqrt(256)
    assert s["scaled"]["score_std"][1] == pytest.approx(1.0, rel=0.15)
    assert s["unscaled"]["max_weight"][1] > 0.8 > s["scaled"]["max_weight"][1]
    # with the scaling, the entropy hardly depends on d_k
    assert abs(s["scaled"]["entropy"][0] - s["scaled"]["entropy"][1]) < 0.3


def test_sinusoidal_table_follows_the_formula():
    table = sinusoidal_table(50, 16)
    p, i = 37, 3
    angle = p / 10000 ** (2 * i / 16)
    assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
    assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0] * 8))


def test_sinusoidal_positions_are_fixed_and_not_trained():
    torch.manual_seed(0)
    model = SinusoidalGPT(GPTConfig.preset("tiny"))
    assert not model.wpe.weight.requires_grad
    table = sinusoidal_table(32, 32)
    torch.testing.assert_close(model.wpe.weight / model.wpe.weight.std(), table / table.std())


def loud(model: GPT) -> GPT:
    """Every weight drawn with a spread of 0.5, so that attention is far from uniform at initialisation."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def test_position_table_indexed_by_token_id_makes_the_model_order_blind():
    torch.manual_seed(0)
    idx = torch.randint(0, 65, (4, 20))
    # one causal layer: the last prediction sees the context as a bag of tokens, whatever its order
    blind = loud(TokenIdPositionGPT(GPTConfig.preset("tiny", n_layer=1)))
    assert order_test(blind, idx)["total_variation"] < 1e-5
    seeing = loud(GPT(GPTConfig.preset("tiny", n_layer=1)))
    assert order_test(seeing, idx)["total_variation"] > 1e-2


def test_bidirectional_model_with_token_id_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    model = gpt_class(position="token-id", causal=False)(GPTConfig.preset("tiny")).eval()
    idx = torch.randint(0, 65, (2, 16))
    perm = torch.randperm(16)
    torch.testing.assert_close(model(idx[:, perm])[0], model(idx)[0][:, perm])


def test_post_ln_block_normalises_the_residual_stream():
    torch.manual_seed(0)
    model = PostLNGPT(GPTConfig.preset("tiny")).eval()
    x = torch.randn(2, 5, 32) * 7
    block = model.h[0]
    expected = block.ln_2(block.ln_1(x + block.attn(x)) + block.mlp(block.ln_1(x + block.attn(x))))
    torch.testing.assert_close(block(x), expected)
    out = block(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    assert isinstance(model.ln_f, torch.nn.Identity)


@pytest.mark.parametrize("variant", [dict(position="sinusoidal"), dict(position="token-id"), dict(norm="post"),
                                     dict(causal=False)])
def test_variants_other_than_gpt2s_are_refused_for_conversion(variant):
    from lmbook.models.hf import to_hf

    to_hf(gpt_class()(GPTConfig.preset("tiny")))
    with pytest.raises(ValueError, match="GPT-2 has no twin"):
        to_hf(gpt_class(**variant)(GPTConfig.preset("tiny")))


def test_variants_combine_and_unknown_ones_are_refused():
    assert gpt_class() is GPT and gpt_class(norm="post") is PostLNGPT
    both = gpt_class(position="token-id", norm="post", causal=False)
    assert issubclass(both, TokenIdPositionGPT) and issubclass(both, PostLNGPT) and issubclass(both, Encoder)
    model = both(GPTConfig.preset("tiny"))
    assert isinstance(model.ln_f, torch.nn.Identity) and not model.h[0].attn.is_causal
    assert model.wpe.weight.shape[0] == 65  # a row for every token id
    with pytest.raises(ValueError, match="position must be"):
        gpt_class(position="rotary")
    with pytest.raises(ValueError, match="norm must be"):
        gpt_class(norm="sandwich")


def test_variants_draw_the_same_initial_weights_as_the_plain_gpt():
    """A variant swaps a part; every weight both models have starts from the same draws."""
    plain = make(GPT).state_dict()
    for cls in (SinusoidalGPT, PostLNGPT, Encoder):  # (a token-id table has other rows, so later draws shift)
        other = make(cls).state_dict()
        shared = [k for k in plain if k in other and k != "wpe.weight"]
        assert len(shared) >= len(plain) - 3, cls  # all but the position table (and post-LN's final LayerNorm)
        assert all(torch.equal(plain[k], other[k]) for k in shared), cls


def make(cls):
    torch.manual_seed(0)
    return cls(GPTConfig.preset("tiny"))


def test_attention_cost_grows_quadratically_in_memory(monkeypatch):
    import itertools
    from types import SimpleNamespace

    import lmbook.models.attention

    clock = itertools.cycle([0.0, 0.5, 1.0, 1.25])  # timed calls of 0.5 and 0.25 seconds in turn
    monkeypatch.setattr(lmbook.models.attention, "time", SimpleNamespace(perf_counter=clock.__next__))
    cost = attention_cost(lengths=(32, 64), batch=1, n_head=2, head_size=8, repeats=2, device="cpu")
    written = cost["written out"]["bytes"]
    assert written == [2 * 2 * 32 * 32 * 4, 2 * 2 * 64 * 64 * 4]  # scores and weights, float32, B=1, nh=2
    assert cost["written out"]["seconds"] == cost["fused (SDPA)"]["seconds"] == [0.25, 0.25]  # the best of 2


def test_the_chapters_runs_build_models_and_training_configs():
    from lmbook.runs.ch03_gpt import NORM_RUNS, POSITION_RUNS, RUNS, VARIANTS
    from lmbook.runs.common import make_char_gpt

    for runs in (RUNS, POSITION_RUNS, NORM_RUNS):
        for run in runs.values():
            config = run.model_config(65)
            assert config.n_embd % config.n_head == 0
            assert run.train_config().max_steps == run.max_steps
    for change in [*VARIANTS["positions"].values(), *VARIANTS["norm"].values()]:
        make_char_gpt(RUNS["fast"], 65, "cpu", **change)
