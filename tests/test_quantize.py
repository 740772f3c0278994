"""Chapter 8's int8 weight-only quantization against its written-out formula, on the book's GPT and Llama."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.lora import apply_lora
from lmbook.models.quantize import Int8Linear, int8_per_row, quantize_int8, weight_bytes


def test_each_row_is_rounded_to_its_own_scale_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(7, 13) * torch.logspace(-3, 1, 7)[:, None]  # rows of very different sizes
    w[3] = 0.0  # a zero row stays zero
    q, s = int8_per_row(w)
    assert q.dtype == torch.int8
    assert (q.abs().amax(dim=1)[[0, 1, 2, 4, 5, 6]] >= 127).all()  # each row's largest weight uses the full range
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()
    assert (q[3] == 0).all()


def test_the_layer_computes_x_times_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(24, 10)
    layer = Int8Linear(linear)
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dequantized(), linear.bias), atol=1e-5, rtol=1e-5)
    assert layer.qweight.element_size() == 1 and not layer.bias.requires_grad


@pytest.mark.parametrize("make", [
    lambda: GPT(GPTConfig.preset("tiny")),
    lambda: Llama(LlamaConfig.preset("tiny")),
], ids=["gpt", "llama"])
def test_a_quantized_model_stays_close_decodes_and_leaves_the_original_alone(make):
    torch.manual_seed(0)
    model = make().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = quantize_int8(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy was quantized
    assert not any(type(m) is nn.Linear for m in small.modules())
    x = torch.randint(0, 65, (2, 20))
    ref, got = model(x)[0], small(x)[0]
    assert (got - ref).abs().max() / ref.abs().max() < 2e-2
    assert weight_bytes(small) < 0.5 * weight_bytes(model)
    assert generate(small, [1, 2, 3], 5, do_sample=False).shape == (1, 8)


def test_bad_inputs_are_refused_with_what_to_do():
    with pytest.raises(TypeError, match="quantizes an nn.Linear"):
        Int8Linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="copy must be True or False"):
        quantize_int8(GPT(GPTConfig.preset("tiny")), copy="yes")
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_int8(nn.Embedding(3, 3))
    adapted = GPT(GPTConfig.preset("tiny"))
    apply_lora(adapted)
    with pytest.raises(ValueError, match="merge them first"):
        quantize_int8(adapted)


def test_the_written_out_layer_is_torchaos_int8_weight_only_on_the_same_weights():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    theirs = nn.Sequential(nn.Linear(48, 20))
    theirs[0].load_state_dict(linear.state_dict())
    quantize_(theirs, Int8WeightOnlyConfig())
    ours = Int8Linear(linear)
    assert torch.equal(theirs[0].weight.qdata, ours.qweight)
    torch.testing.assert_close(theirs[0].weight.scale.flatten(), ours.scale, atol=0, rtol=1e-6)
    x = torch.randn(5, 48)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
