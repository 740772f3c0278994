"""The models ``bench_decode.py`` decodes, and what int8 weights do to their outputs.

- :func:`build`: a GPT shape (``lmbook.runs.common.named_config``) converted with ``to_hf``, or a Llama shape of
  :data:`LLAMA_SHAPES` converted with ``to_hf_llama``: random weights (seed 0), the same on both sides.
- :func:`int8_quality`: for chapter 3's char GPT, the trained model of the zoo (``trained("gpt-char")``, at the
  current ``LMBOOK_SIZE``; trained now if absent) scored on Tiny Shakespeare's held-out split in bits per
  character, in float32 and with int8 weights, and the share of greedy tokens on which both agree; for other
  shapes (no trained model offline) the relative change of the logits, ``max|int8 - fp32| / max|fp32|``, on the
  random weights decoded.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lmbook.decoding.generate import generate
from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.hf import to_hf, to_hf_llama
from lmbook.models.llama import Llama, LlamaConfig
from lmbook.models.quantize import quantize_int8
from lmbook.runs.common import named_config

GPT_SHAPES = ("shakespeare-char", *GPTConfig.PRESETS)  # chapter 3's full char GPT, "tiny" and GPT-2 124M ("gpt2")
LLAMA_SHAPES = {
    # chapter 3's char GPT's shape as a Llama: 6 layers, 6 heads over 2 key/value heads, 384 wide, context 256
    "llama-char": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_kv_head=2, n_embd=384),
    # GPT-2 124M's shape as a Llama (12 heads over 4 key/value heads, SwiGLU of 2,048), untied as Llama is
    "llama-gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_kv_head=4, n_embd=768,
                       tie_embeddings=False),
    "llama-tiny": dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32),  # for tests
}


def check_shapes(shapes: list[str], llama: bool) -> None:
    known = tuple(LLAMA_SHAPES) if llama else GPT_SHAPES
    unknown = [s for s in shapes if s not in known]
    if unknown:
        family = "Llama" if llama else "GPT"
        hint = "" if llama else " (Llama shapes need --llama)"
        raise SystemExit(f"unknown {family} shape(s) {', '.join(unknown)}: choose from {', '.join(known)}{hint}.")


def build(shape: str, llama: bool, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """lmbook's model of ``shape`` (random weights, seed 0) and ``transformers``' model with the same weights."""
    torch.manual_seed(0)
    if llama:
        model = Llama(LlamaConfig(**LLAMA_SHAPES[shape], dropout=0.0)).to(device).eval()
        hf_model = to_hf_llama(model).eval()
    else:
        model = GPT(named_config(shape, dropout=0.0)).to(device).eval()
        hf_model = to_hf(model).eval()
    return model.to(dtype), hf_model.to(dtype)  # both sides in the same precision


def agreement(a: torch.Tensor, b: torch.Tensor, prompt_length: int) -> float:
    """The share of new tokens (after ``prompt_length``) on which two decodings agree, position by position."""
    return (a[:, prompt_length:].cpu() == b[:, prompt_length:].cpu()).float().mean().item()


def logits_change(model: nn.Module, int8_model: nn.Module, idx: torch.Tensor) -> float:
    """``max|int8 logits - fp32 logits| / max|fp32 logits|`` over the positions of ``idx``."""
    with torch.inference_mode():
        ref, got = model(idx)[0].float(), int8_model(idx)[0].float()
    return ((got - ref).abs().max() / ref.abs().max()).item()


def trained_quality(device: torch.device, kernels: bool = False, prompts: int = 8, prompt_length: int = 16,
                    new_tokens: int = 64) -> dict:
    """Chapter 3's trained char GPT in float32 and int8: held-out bits per character, and greedy agreement from
    ``prompts`` held-out prompts (evenly spaced in the split) over ``new_tokens`` tokens."""
    from lmbook.evaluation.metrics import split_loss
    from lmbook.runs.zoo import trained
    from lmbook.runtime import size
    from lmbook.text.data import shakespeare_chars

    print(f"int8 quality: chapter 3's char GPT trained at size {size()!r} (loaded, or trained now)", flush=True)
    model = trained("gpt-char", device).model.eval()
    val = shakespeare_chars()[2]
    int8_model = quantize_int8(model)
    block = model.context_length
    result = {"model": f"gpt-char trained at size {size()!r}", "params": sum(p.numel() for p in model.parameters()),
              "held_out_chars": len(val), "block_size": block}
    result["bpc_fp32"] = split_loss(model, val, block) / math.log(2)
    result["bpc_int8"] = split_loss(int8_model, val, block) / math.log(2)
    result["bpc_change"] = result["bpc_int8"] - result["bpc_fp32"]
    if kernels:
        from decode_kernels import with_kernels

        result["bpc_int8_kernels"] = split_loss(with_kernels(int8_model), val, block) / math.log(2)
    starts = torch.linspace(0, len(val) - prompt_length - 1, prompts).long()
    idx = torch.stack([val[s : s + prompt_length] for s in starts.tolist()]).to(device)
    fp = generate(model, idx, new_tokens, do_sample=False)
    q = generate(int8_model, idx, new_tokens, do_sample=False)
    result.update(greedy_prompts=prompts, greedy_new_tokens=new_tokens,
                  greedy_agreement=agreement(fp, q, prompt_length))
    print(f"    held-out bits per char: fp32 {result['bpc_fp32']:.4f}, int8 {result['bpc_int8']:.4f} "
          f"(change {result['bpc_change']:+.4f})"
          + (f", int8 with the C kernels {result['bpc_int8_kernels']:.4f}" if kernels else "")
          + f"; greedy tokens agreeing: {result['greedy_agreement']:.1%} "
          f"({prompts} prompts x {new_tokens} tokens)", flush=True)
    return result


def int8_quality(shape: str, model: nn.Module, int8_model: nn.Module, idx: torch.Tensor, device: torch.device,
                 kernels: bool = False) -> dict:
    """What int8 weights change (see the module's docstring): trained bits per char for the char GPT, else the
    relative change of the logits on ``idx`` with the random weights."""
    result = {"logits_change": logits_change(model, int8_model, idx), "logits_of": "random weights"}
    print(f"int8 quality, {shape}: relative change of the logits, max|int8 - fp32| / max|fp32| = "
          f"{result['logits_change']:.2e} (random weights, {idx.size(1)} positions)", flush=True)
    if shape == "shakespeare-char":
        result["trained"] = trained_quality(device, kernels)
    return result
