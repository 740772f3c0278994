"""lmbook.models.lora: a zero update at first, only the adapters train, and merging changes nothing."""

import io

import pytest
import torch
import torch.nn as nn

from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.lora import LoRALinear, apply_lora, count_parameters, merge_lora


def tiny_gpt(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=50, block_size=16)).eval()


def test_zero_initialised_update_leaves_the_output_unchanged():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    lora = LoRALinear(base, r=3, alpha=6)
    x = torch.randn(5, 12)
    assert torch.equal(lora(x), base(x))
    assert lora.A.abs().sum() > 0 and lora.B.abs().sum() == 0 and lora.scaling == 2.0


def test_apply_lora_keeps_the_model_and_trains_only_adapters():
    model = tiny_gpt()
    idx = torch.randint(50, (2, 16))
    before = model(idx)[0]
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    names = apply_lora(model, targets=("attn.c_attn", "mlp.c_fc"), r=2, alpha=4)
    assert names == ["h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.attn.c_attn", "h.1.mlp.c_fc"]
    assert torch.equal(model(idx)[0], before)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    trained, total = count_parameters(model)
    wrapped = (model.h[0].attn.c_attn.base, model.h[0].mlp.c_fc.base)
    assert trained == 2 * sum(2 * (m.in_features + m.out_features) for m in wrapped)  # 2 layers, rank 2
    assert trained < total / 10

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(idx, idx)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(model(idx)[0], before)  # the adapters learned something
    after = model.state_dict()
    for name, value in frozen.items():  # every original weight is where it was
        renamed = name.replace("c_attn.", "c_attn.base.").replace("c_fc.", "c_fc.base.")
        assert torch.equal(after[renamed if renamed in after else name], value), name


def test_merged_weights_give_the_same_output():
    torch.manual_seed(1)
    lora = LoRALinear(nn.Linear(10, 6), r=2, alpha=3)
    with torch.no_grad():
        lora.B.normal_()
    x = torch.randn(4, 10)
    merged = lora.merged()
    assert isinstance(merged, nn.Linear)
    assert torch.allclose(merged(x), lora(x), atol=1e-6)
    assert not torch.allclose(merged(x), lora.base(x))


def test_merge_lora_on_a_gpt():
    model = tiny_gpt()
    apply_lora(model, r=2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.B.normal_(std=0.1)
    idx = torch.randint(50, (2, 16))
    adapted = model(idx)[0]
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(model(idx)[0], adapted, atol=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rank r must be an integer of at least 1"):
        LoRALinear(nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="rank r must be an integer of at least 1"):
        apply_lora(tiny_gpt(), r=0)
    with pytest.raises(ValueError, match="nothing to adapt"):
        apply_lora(tiny_gpt(), targets=("no.such.layer",))
    with pytest.raises(ValueError, match=r"targets=\('0',\) name no nn.Linear.*choose targets among.*"
                                         r"\(h.0.attn.c_attn, h.0.attn.c_proj, h.0.mlp.c_fc, h.0.mlp.c_proj, "
                                         r"h.1.attn.c_attn, h.1.attn.c_proj, \.\.\.\)"):
        apply_lora(tiny_gpt(), targets="0")  # what the layer names end with, not a block's number
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))


def test_a_bare_string_target_is_one_name_not_its_characters():
    names = apply_lora(tiny_gpt(), targets="attn.c_attn")
    assert names and all(n.endswith("attn.c_attn") for n in names)  # a string read as characters took mlp.c_fc too
    assert names == apply_lora(tiny_gpt(), targets=["attn.c_attn"])
    for bad in ((), ("",), (3,)):
        with pytest.raises(ValueError, match="targets must be one or more non-empty layer names"):
            apply_lora(tiny_gpt(), targets=bad)


@pytest.mark.parametrize("arguments, message", [
    (dict(alpha=0.0), "alpha must be a finite number > 0"),
    (dict(alpha=-1.0), "alpha must be a finite number > 0"),
    (dict(alpha=float("nan")), "alpha must be a finite number > 0"),
    (dict(alpha=True), "alpha must be a finite number > 0"),  # a flag is not a scale (True would mean alpha = 1)
    (dict(r=0), "rank r must be an integer"),
    (dict(r=2.0), "rank r must be an integer"),
    (dict(targets=("no.such.layer",)), "nothing to adapt"),
    (dict(targets=("attn.c_attn", 3)), "targets must be one or more non-empty layer names"),
    (dict(targets=("lm_head",)), "tied weights"),
])
def test_a_refused_call_leaves_the_model_as_it_was(arguments, message):
    model = tiny_gpt()
    model.h[0].requires_grad_(False)  # a model partly frozen already: that too is left as it was
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **arguments)
    after = dict(model.named_parameters())
    assert list(after) == list(before) and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(after[n].requires_grad == grad and torch.equal(after[n], w) for n, (grad, w) in before.items())


def test_merge_and_unmerge_restore_the_base_weights_exactly():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=2)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)  # a trained adapter: B is no longer zero
    x = torch.randint(0, 65, (2, 9))
    adapted = model(x)[0]
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.merge()
    torch.testing.assert_close(model(x)[0], adapted, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="merged already"):
        layers[0].merge()
    for layer in layers:
        layer.unmerge()
    with pytest.raises(ValueError, match="not merged"):
        layers[0].unmerge()
    for name, tensor in before.items():  # bit for bit, not up to rounding
        key = name if name in model.state_dict() else name.replace(".weight", ".base.weight").replace(
            ".bias", ".base.bias")
        assert torch.equal(model.state_dict()[key], tensor), name
    torch.testing.assert_close(model(x)[0], adapted)


def test_merging_a_copy_leaves_the_adapted_model_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    apply_lora(model, r=2)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)
    x = torch.randint(0, 65, (2, 9))
    merged = merge_lora(model, copy=True)
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    torch.testing.assert_close(merged(x)[0], model(x)[0], atol=1e-4, rtol=1e-4)


def test_adapting_twice_or_a_tied_layer_is_refused():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="tied weights"):
        apply_lora(model, targets=("lm_head",))
    assert model.lm_head.weight is model.wte.weight and model.wte.weight.requires_grad  # nothing was changed
    apply_lora(model)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model)
    with pytest.raises(ValueError, match="rank r must be an integer"):
        apply_lora(GPT(GPTConfig.preset("tiny")), r=0)


def test_an_adapted_model_does_not_convert_until_merged():
    from lmbook.models.hf import to_hf

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    apply_lora(model)
    with pytest.raises(ValueError, match="merge_lora"):
        to_hf(model)
    x = torch.randint(0, 65, (1, 7))
    merged = merge_lora(model, copy=True)
    torch.testing.assert_close(to_hf(merged).eval()(x).logits, merged.eval()(x)[0], atol=1e-5, rtol=1e-5)


def trained_adapters(seed: int) -> GPT:
    model = tiny_gpt(seed)
    apply_lora(model, r=2)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALinear):
                layer.B.normal_(std=0.1)  # as after training: the update is not zero
    return model


@pytest.mark.parametrize("saved_merged", [False, True])
@pytest.mark.parametrize("loaded_merged", [False, True])
def test_a_saved_state_gives_the_same_function_merged_or_not(saved_merged, loaded_merged):
    source, idx = trained_adapters(0), torch.randint(50, (2, 16))
    expected = source(idx)[0]
    plain = {k: v.clone() for k, v in source.state_dict().items()}
    if saved_merged:
        for layer in source.modules():
            if isinstance(layer, LoRALinear):
                layer.merge()
        state = source.state_dict()
        assert state.keys() == plain.keys() and all(torch.equal(v, plain[k]) for k, v in state.items())
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = trained_adapters(1)  # other weights, other adapters
    layers = [m for m in target.modules() if isinstance(m, LoRALinear)]
    if loaded_merged:
        for layer in layers:
            layer.merge()
    target.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(target(idx)[0], expected, atol=1e-5, rtol=1e-5)  # the update counted once
    for layer in layers:
        layer.unmerge() if loaded_merged else layer.merge()
    torch.testing.assert_close(target(idx)[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merge_lora(target)(idx)[0], expected, atol=1e-5, rtol=1e-5)


def test_merge_lora_takes_copy_as_a_flag():
    model = trained_adapters(0)
    with pytest.raises(TypeError, match="copy must be True or False, not 'yes'"):
        merge_lora(model, copy="yes")
    assert any(isinstance(m, LoRALinear) for m in model.modules())


def test_lora_on_the_llama_equals_peft_on_the_same_weights():
    """The book's adapters copied into PEFT's LoraConfig model: the same logits. PEFT's A is (r, in) and B (out, r),
    as ours for an nn.Linear (no transpose), and it scales by alpha / r too."""
    pytest.importorskip("peft")
    import copy as copy_module

    from peft import LoraConfig, get_peft_model

    from lmbook.models.hf import to_hf_llama
    from lmbook.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    ours = Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()
    theirs = get_peft_model(to_hf_llama(copy_module.deepcopy(ours)),  # get_peft_model changes its argument: a copy
                            LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    names = apply_lora(ours, targets=("self_attn.q_proj", "self_attn.v_proj"), r=4, alpha=12)
    assert names == [f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"]
    with torch.no_grad():
        for name in names:
            layer = ours.get_submodule(name)
            layer.B.normal_(std=0.5)  # a trained adapter: the update matters
            peft_layer = theirs.base_model.model.model.get_submodule(name)
            assert peft_layer.scaling["default"] == layer.scaling == 3.0
            peft_layer.lora_A["default"].weight.copy_(layer.A)  # (r, in)
            peft_layer.lora_B["default"].weight.copy_(layer.B)  # (out, r)
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs.eval()(input_ids=x).logits
        got = ours(x)[0]
        with theirs.disable_adapter():
            base = theirs(input_ids=x).logits
    assert (got - base).abs().max() > 1e-2  # the adapters change the logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
