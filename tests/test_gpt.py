"""The GPT of lmbook.models.gpt: shapes, causality, initial loss, learning, and the KV cache."""

import math

import pytest
import torch

from lmbook.models.gpt import GPT, PRESETS, GPTConfig
from lmbook.interface import evaluating, num_params
from lmbook.models.mlm import Encoder


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", **overrides))


def test_presets_have_the_documented_shapes():
    gpt2 = GPT(GPTConfig.preset("gpt2"))
    # GPT-2 small: 124,439,808 parameters including the 1024 x 768 position table (the book's one convention)
    assert gpt2.num_params() == num_params(gpt2) == 124_439_808
    assert set(PRESETS) >= {"tiny", "gpt2"}


def test_unknown_preset_and_bad_heads_are_refused():
    with pytest.raises(KeyError, match="tiny"):
        GPTConfig.preset("nope")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    for field, value in [("n_layer", 0), ("vocab_size", -1), ("block_size", 2.5), ("n_head", True)]:
        with pytest.raises(ValueError, match=f"GPTConfig.{field} must be a positive integer"):
            GPTConfig(**{field: value})
    with pytest.raises(ValueError, match="dropout must lie in"):
        GPTConfig(dropout=1.0)


def written_out_gpt(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward pass from ``model``'s weights with plain tensor operations: logits (B, T, V)."""
    c = model.config
    B, T = idx.shape
    hs = c.n_embd // c.n_head

    def layer_norm(x, ln):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + c.layer_norm_eps) * ln.weight + ln.bias

    def linear(x, layer):
        return x @ layer.weight.T + layer.bias

    def gelu(x):  # GPT-2's tanh approximation
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = model.wte.weight[idx] + model.wpe.weight[:T]  # (B, T, C)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # key after query
    for block in model.h:
        q, k, v = linear(layer_norm(x, block.ln_1), block.attn.c_attn).split(c.n_embd, dim=-1)
        q, k, v = (z.view(B, T, c.n_head, hs).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(future, float("-inf"))
        heads = torch.softmax(scores, dim=-1) @ v  # (B, nh, T, hs)
        x = x + linear(heads.transpose(1, 2).reshape(B, T, c.n_embd), block.attn.c_proj)
        x = x + linear(gelu(linear(layer_norm(x, block.ln_2), block.mlp.c_fc)), block.mlp.c_proj)
    return layer_norm(x, model.ln_f) @ model.wte.weight.T


def test_the_forward_pass_is_gpt2_written_out():
    model = tiny(n_layer=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and LayerNorm weights away from their 0 and 1, so that each counts
            p.add_(0.1 * torch.randn_like(p))
        idx = torch.randint(0, 65, (3, 17))
        logits, loss = model(idx)
        assert logits.shape == (3, 17, 65) and loss is None
        torch.testing.assert_close(logits, written_out_gpt(model, idx), atol=1e-5, rtol=1e-5)


def test_the_blocks_are_torch_s_own_layers_and_transformers_gpt2():
    from lmbook.models.hf import to_hf

    model = tiny().eval()
    idx = torch.randint(0, 65, (2, 12))
    with torch.no_grad():
        x = torch.randn(2, 12, 32)
        block = model.h[0]
        ln = torch.nn.functional.layer_norm(x, (32,), block.ln_1.weight, block.ln_1.bias, eps=1e-5)
        torch.testing.assert_close(block.ln_1(x), ln)
        mlp = torch.nn.Sequential(block.mlp.c_fc, torch.nn.GELU(approximate="tanh"), block.mlp.c_proj)
        torch.testing.assert_close(block.mlp(x), mlp(x))
        mha = torch.nn.MultiheadAttention(32, 2, batch_first=True)  # torch's attention with our weights
        mha.in_proj_weight.copy_(block.attn.c_attn.weight)
        mha.in_proj_bias.copy_(block.attn.c_attn.bias)
        mha.out_proj.weight.copy_(block.attn.c_proj.weight)
        mha.out_proj.bias.copy_(block.attn.c_proj.bias)
        mask = torch.ones(12, 12, dtype=torch.bool).triu(1)
        torch.testing.assert_close(block.attn(x), mha(x, x, x, attn_mask=mask, need_weights=False)[0],
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(idx)[0], to_hf(model).eval()(idx).logits, atol=1e-5, rtol=1e-5)


def test_loss_is_the_mean_cross_entropy_and_ignores_minus_one():
    model = tiny()
    idx, targets = torch.randint(0, 65, (2, 9)), torch.randint(0, 65, (2, 9))
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    logp = torch.log_softmax(logits, -1)
    keep = targets != -1
    expected = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    torch.testing.assert_close(loss, expected)


def test_future_tokens_do_not_change_earlier_logits():
    model = tiny().eval()
    idx = torch.randint(0, 65, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 65
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_a_bidirectional_model_sees_the_future_and_refuses_a_cache():
    torch.manual_seed(0)
    model = Encoder(GPTConfig.preset("tiny")).eval()
    idx = torch.randint(0, 65, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 65
    assert not torch.allclose(model(idx)[0][:, :12], model(changed)[0][:, :12])
    with pytest.raises(ValueError, match="no cache"):
        model.make_cache()


def test_features_are_what_the_lm_head_reads():
    model = tiny().eval()
    idx = torch.randint(0, 65, (2, 10))
    h = model.features(idx)
    assert h.shape == (2, 10, 32)
    torch.testing.assert_close(model.lm_head(h), model(idx)[0])
    torch.testing.assert_close(h.mean(-1), torch.zeros(2, 10), atol=1e-5, rtol=0)  # after the final LayerNorm


def test_initial_loss_is_close_to_log_vocab():
    model = tiny()
    idx, targets = torch.randint(0, 65, (8, 32)), torch.randint(0, 65, (8, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) < 0.1


def test_weights_are_tied_and_counted_once():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())


def test_gpt2_initialisation_scales_residual_projections():
    model = GPT(GPTConfig.preset("tiny", n_layer=8, n_embd=256, n_head=4))
    assert abs(model.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(model.h[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.001


def test_tiny_model_overfits_one_batch():
    model = tiny(dropout=0.0)
    idx = torch.randint(0, 65, (4, 32), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_prompt_longer_than_the_context_is_refused_with_advice():
    model = tiny()
    with pytest.raises(ValueError, match=r"context of 32.*idx\[:, -32:\]"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("chunks", [[20], [7, 5, 1, 1, 1], [1] * 12, [10, 10, 12]])
def test_kv_cache_gives_the_logits_of_full_forward_passes(chunks):
    model = tiny().eval()
    idx = torch.randint(0, 65, (3, sum(chunks)))
    full, _ = model(idx)
    cache, pieces, start = model.make_cache(), [], 0
    for n in chunks:
        logits, _ = model(idx[:, start : start + n], cache=cache)
        pieces.append(logits)
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == sum(chunks)


def test_kv_cache_refuses_to_overflow():
    model = tiny().eval()
    cache = model.make_cache()
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="new cache"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


def test_flops_per_token_formula():
    from lmbook.runs.ch07_sweep import flops_per_token

    model = tiny()
    c = model.config
    non_position = model.num_params() - c.block_size * c.n_embd
    assert flops_per_token(model, 16) == 6 * non_position + 12 * c.n_layer * 16 * c.n_embd
    assert flops_per_token(model) == 6 * non_position + 12 * c.n_layer * c.block_size * c.n_embd


def test_evaluating_restores_the_mode_even_when_the_block_fails():
    model = tiny().train()
    with pytest.raises(RuntimeError, match="inside"):
        with evaluating(model):
            assert not model.training and not model.h[0].training
            raise RuntimeError("inside")
    assert model.training and model.h[0].training
    with evaluating(model.eval()):
        pass
    assert not model.training


def test_ids_that_are_not_a_batch_of_integers_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))  # floats
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(4, dtype=torch.long))  # no batch dimension
    with pytest.raises(ValueError, match="no token"):
        model(torch.zeros(2, 0, dtype=torch.long))


@pytest.mark.parametrize("bad", [65, -1, 1000])
def test_ids_outside_the_vocabulary_are_refused_by_both_kinds_of_model(bad):
    from lmbook.models.rnn import RNNLM, RNNConfig

    torch.manual_seed(0)
    for model in (tiny(), RNNLM(RNNConfig.preset("tiny"))):
        idx = torch.tensor([[1, 2, bad, 3]])
        with pytest.raises(ValueError, match=r"token ids must lie in range\(65\).*from -?\d+ to \d+"):
            model(idx)
        model(torch.tensor([[0, 64]]))  # the ends of the range are fine
