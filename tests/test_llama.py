"""Chapter 8's Llama-style model against transformers' LlamaForCausalLM on the same weights, and its parts
against their written-out formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmbook.decoding.generate import generate
from lmbook.models.hf import from_hf_llama, to_hf_llama
from lmbook.models.llama import Llama, LlamaConfig, RMSNorm, apply_rope, rope_as_complex, rope_cos_sin

transformers = pytest.importorskip("transformers")

SHAPES = {  # odd head counts, kv heads dividing them, a head size that is no power of two
    "multi-head": dict(n_head=6, n_kv_head=6, head_dim=10),
    "grouped": dict(n_head=6, n_kv_head=2, head_dim=10),
    "multi-query": dict(n_head=3, n_kv_head=1, head_dim=14),
    "untied, biased": dict(n_head=4, n_kv_head=2, head_dim=8, tie_embeddings=False, bias=True),
}


def model(name, std=0.3, **changes):
    """Weights ~N(0, std): large enough that a wrong rotation convention shows in the logits."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=61, block_size=24, n_layer=2, n_embd=36, intermediate_size=52,
                         rope_theta=500.0, **{**SHAPES[name], **changes})
    m = Llama(config).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std)
    return m


@pytest.mark.parametrize("name", SHAPES)
def test_logits_equal_transformers_llama_both_ways(name):
    ours = model(name)
    theirs = to_hf_llama(ours).eval()
    x = torch.randint(0, 61, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x).logits, atol=1e-5, rtol=1e-5)
        back = from_hf_llama(theirs)
        torch.testing.assert_close(back(x)[0], ours(x)[0], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["grouped", "multi-query"])
def test_decoding_equals_transformers_generate_token_for_token(name):
    ours = model(name, std=0.1)
    theirs = to_hf_llama(ours).eval()
    prompts = [[5, 9, 2, 33, 7], [12, 4]]
    for settings in (dict(do_sample=False), dict(do_sample=False, num_beams=3)):
        for prompt in prompts:
            want = theirs.generate(torch.tensor([prompt]), max_new_tokens=8, pad_token_id=0, **settings)
            assert generate(ours, prompt, max_new_tokens=8, **settings).tolist() == want.tolist(), settings
    batch = torch.tensor([[0, 0, 0, 12, 4], [5, 9, 2, 33, 7]])
    mask = (torch.arange(5) >= torch.tensor([[3], [0]])).long()
    want = theirs.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    got = generate(ours, batch, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert got.tolist() == want.tolist()


def test_the_cache_keeps_the_kv_heads_only_and_equals_the_full_pass():
    ours = model("multi-query", std=0.1)
    x = torch.randint(0, 61, (2, 11))
    cache = ours.make_cache()
    parts = [ours(x[:, :6], cache=cache)[0], ours(x[:, 6:7], cache=cache)[0], ours(x[:, 7:], cache=cache)[0]]
    assert cache.k.shape[2] == ours.config.n_kv_head == 1  # (L, B, kv heads, T, hd)
    torch.testing.assert_close(torch.cat(parts, dim=1), ours(x)[0], atol=1e-5, rtol=1e-5)


def test_rope_written_as_complex_multiplication_is_the_pairwise_rotation():
    x = torch.randn(2, 3, 7, 12)
    positions = torch.arange(5, 12)
    cos, sin = rope_cos_sin(positions, 12, theta=100.0)
    torch.testing.assert_close(apply_rope(x, cos, sin), rope_as_complex(x, positions, theta=100.0),
                               atol=1e-6, rtol=1e-6)


def test_rotated_scores_depend_on_the_distance_between_positions_only():
    q, k = torch.randn(16), torch.randn(16)
    def score(p, s):
        cq, sq = rope_cos_sin(torch.tensor([p]), 16)
        ck, sk = rope_cos_sin(torch.tensor([s]), 16)
        return float(apply_rope(q, cq[0], sq[0]) @ apply_rope(k, ck[0], sk[0]))
    assert score(3, 1) == pytest.approx(score(103, 101), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_rmsnorm_is_the_written_out_formula_and_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(4, 9) * 3
    norm = RMSNorm(9, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    by_hand = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), by_hand, atol=1e-6, rtol=1e-6)
    theirs = LlamaRMSNorm(9, eps=1e-6)
    theirs.weight.data.copy_(norm.weight.data)
    torch.testing.assert_close(norm(x), theirs(x), atol=0, rtol=0)


def test_the_switches_give_back_gpt2s_parts():
    m = model("grouped", std=0.02, position="learned", norm="layer", mlp="gelu", bias=True)
    assert m.embed_positions is not None and isinstance(m.norm, torch.nn.LayerNorm)
    assert not hasattr(m.layers[0].mlp, "gate_proj") and m.layers[0].mlp.up_proj.out_features == 4 * 36
    x = torch.randint(0, 61, (2, 9))
    logits, loss = m(x, x)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.view(-1, 61), x.view(-1)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="only the default choices"):
        to_hf_llama(m)


def test_bad_shapes_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="n_kv_head=4 must divide n_head=6"):
        LlamaConfig(n_head=6, n_kv_head=4, n_embd=36)
    with pytest.raises(ValueError, match="head_dim=9 must be even"):
        LlamaConfig(n_head=4, n_embd=36)
    with pytest.raises(ValueError, match="position must be one of"):
        LlamaConfig(position="alibi")
    assert LlamaConfig(n_embd=96).intermediate_size == 256 and math.isclose(256 / 96, 8 / 3, rel_tol=0.01)


def test_the_cache_holds_the_computed_bytes_per_token_for_mha_gqa_and_mqa():
    for kv in (4, 2, 1):
        torch.manual_seed(0)
        m = Llama(LlamaConfig.preset("tiny", n_kv_head=kv)).eval()
        cache = m.make_cache()
        with torch.no_grad():
            m(torch.randint(0, 65, (1, 10)), cache=cache)
        held = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() / m.config.block_size  # per position
        assert held == m.config.kv_bytes_per_token() == 2 * 2 * kv * 8 * 4


def test_position_interpolation_rotates_position_p_as_the_unscaled_model_rotates_p_over_the_scale():
    torch.manual_seed(0)
    scaled = Llama(LlamaConfig.preset("tiny", rope_scale=2.0)).eval()
    with torch.no_grad():
        for p in scaled.parameters():
            p.normal_(0, 0.3)  # large enough that positions move the output visibly
    plain = Llama(LlamaConfig.preset("tiny")).eval()
    plain.load_state_dict(scaled.state_dict())
    h = torch.randn(1, 8, 32)
    with torch.no_grad():
        got = scaled.layers[0].self_attn(h, torch.arange(8))
        torch.testing.assert_close(got, plain.layers[0].self_attn(h, torch.arange(8) / 2.0), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, plain.layers[0].self_attn(h, torch.arange(8)), atol=1e-2)
    with pytest.raises(ValueError, match="rope_scale must be a positive number"):
        LlamaConfig(rope_scale=0)
    with pytest.raises(ValueError, match="no twin"):
        to_hf_llama(scaled)
