"""lmbook.models.hf: our GPT and transformers' GPT2LMHeadModel compute the same thing, both ways round."""

import os

# huggingface_hub reads these once, when it is first imported: set them before anything imports it.
# Tests never reach the internet.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import math  # noqa: E402
import time  # noqa: E402

import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

from lmbook.models.gpt import GPT, GPTConfig  # noqa: E402
from lmbook.models.hf import (  # noqa: E402
    TokenBlocks, from_hf, load_gpt2, make_trainer, to_hf, to_hf_config, training_losses)

CONFIG = GPTConfig(vocab_size=97, block_size=24, n_layer=3, n_head=4, n_embd=48, dropout=0.0)


def random_gpt(config: GPTConfig = CONFIG, seed: int = 0) -> GPT:
    """A GPT whose every parameter is random, LayerNorms and biases included, so no mix-up can hide."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = ("ln_" in name) and name.endswith("weight")
            p.normal_(1.0 if is_norm_scale else 0.0, 0.3 if is_norm_scale else 0.1)
    return model.eval()


def tokens(config: GPTConfig = CONFIG, batch: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, config.block_size), generator=generator)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """Offline mode and an empty cache, even if huggingface_hub was imported before this module."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_logits_agree_and_save_pretrained_reloads(tmp_path):
    model = random_gpt()
    hf_model = to_hf(model)
    assert isinstance(hf_model, GPT2LMHeadModel) and not hf_model.training
    hf_model.save_pretrained(tmp_path)
    reloaded = load_gpt2(str(tmp_path))
    assert isinstance(reloaded, GPT) and not reloaded.training
    assert reloaded.config == CONFIG

    idx = tokens()
    with torch.no_grad():
        ours = model(idx)[0]
        theirs = hf_model(idx).logits
        again = reloaded(idx)[0]
    assert ours.abs().max() > 1.0  # the logits are far from zero, so agreeing means something
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - again).abs().max() <= 1e-4
    assert (theirs - again).abs().max() <= 1e-4


def test_float64_agreement_is_exact_to_rounding():
    """In float64 any real difference (eps, GELU variant, scaling) would stand far above 1e-10."""
    model = random_gpt(CONFIG.replace(layer_norm_eps=1e-2)).double()
    hf_model = to_hf(model)
    assert hf_model.dtype == torch.float64
    assert hf_model.config.layer_norm_epsilon == 1e-2
    idx = tokens()
    with torch.no_grad():
        diff = (model(idx)[0] - hf_model(idx).logits).abs().max()
    assert diff <= 1e-10
    assert from_hf(hf_model).wte.weight.dtype == torch.float64


def test_round_trip_gives_identical_state_dicts():
    model = random_gpt()
    back = from_hf(to_hf(model))
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_weights_are_copied_and_stay_tied():
    model = random_gpt()
    hf_model = to_hf(model)
    assert hf_model.lm_head.weight is hf_model.transformer.wte.weight
    assert hf_model.transformer.wte.weight.data_ptr() != model.wte.weight.data_ptr()  # a copy, not a view
    back = from_hf(hf_model)
    assert back.lm_head.weight is back.wte.weight
    assert back.wte.weight.data_ptr() != hf_model.transformer.wte.weight.data_ptr()


def test_linear_weights_are_transposed():
    model = random_gpt()
    hf_model = to_hf(model)
    ours, theirs = model.h[1].attn.c_attn.weight, hf_model.transformer.h[1].attn.c_attn.weight
    assert theirs.shape == (CONFIG.n_embd, 3 * CONFIG.n_embd)
    assert torch.equal(theirs, ours.t())


def test_losses_agree():
    """HF shifts labels inside: logits[:, :-1] against labels[:, 1:]. Ours takes the targets as given."""
    model = random_gpt()
    hf_model = to_hf(model)
    idx = tokens()
    with torch.no_grad():
        hf_loss = hf_model(idx, labels=idx).loss
        targets = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)  # the last position has none
        _, loss = model(idx, targets)
        _, shorter = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - hf_loss.item()) <= 1e-5
    assert abs(shorter.item() - hf_loss.item()) <= 1e-5
    assert abs(model(idx, idx)[1].item() - hf_loss.item()) > 1e-2  # unshifted targets would be caught


def test_config_mapping_and_training_mode():
    config = GPTConfig.preset("tiny", dropout=0.1, layer_norm_eps=1e-6)
    hf_config = to_hf_config(config)
    assert (hf_config.vocab_size, hf_config.n_positions, hf_config.n_layer, hf_config.n_head, hf_config.n_embd) == (
        65, 32, 2, 2, 32)
    assert hf_config.resid_pdrop == hf_config.embd_pdrop == hf_config.attn_pdrop == 0.1
    assert hf_config.bos_token_id is hf_config.eos_token_id is hf_config.pad_token_id is None  # no special token
    assert hf_config.tie_word_embeddings and hf_config.activation_function == "gelu_new"

    model = GPT(config).train()
    hf_model = to_hf(model)
    assert hf_model.training
    back = from_hf(hf_model)
    assert back.training and back.config == config


def test_bias_free_model_converts_with_zero_biases():
    model = random_gpt(CONFIG.replace(bias=False))
    hf_model = to_hf(model)
    assert torch.count_nonzero(hf_model.transformer.h[0].mlp.c_fc.bias) == 0
    assert torch.count_nonzero(hf_model.transformer.ln_f.bias) == 0
    idx = tokens()
    with torch.no_grad():
        assert (model(idx)[0] - hf_model(idx).logits).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(activation_function="relu"), "activation_function='relu'"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
        (dict(n_inner=100), "n_inner=100"),
        (dict(tie_word_embeddings=False), "untied"),
    ],
)
def test_from_hf_rejects_what_gpt_cannot_compute(change, message):
    hf_config = to_hf_config(CONFIG)
    for field, value in change.items():
        assert hasattr(hf_config, field)  # a real GPT2Config field
        setattr(hf_config, field, value)
    hf_model = GPT2LMHeadModel(hf_config)
    with pytest.raises(ValueError, match=message):
        from_hf(hf_model)


def test_from_hf_rejects_separately_trained_output_embeddings():
    hf_model = to_hf(random_gpt())
    hf_model.lm_head.weight = torch.nn.Parameter(hf_model.lm_head.weight.detach().clone() + 1.0)
    with pytest.raises(ValueError, match="untied"):
        from_hf(hf_model)


def test_load_gpt2_offline_says_what_to_do(offline_hub):
    start = time.perf_counter()
    with pytest.raises(OSError, match="offline mode is on") as info:
        load_gpt2("gpt2")
    assert time.perf_counter() - start < 5.0  # no retries against a network that is not there
    assert "save_pretrained" in str(info.value) and "internet" in str(info.value)
    assert info.value.__cause__ is not None
    assert not any(offline_hub.rglob("*.safetensors"))


def test_load_gpt2_without_a_network_says_so_at_once_in_one_line(offline_hub, monkeypatch):
    """Offline mode off, but nothing answers at the Hub's address (a closed port on this machine)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(OSError, match="could not be reached and its files are not in the local cache") as info:
        load_gpt2("gpt2")
    assert time.perf_counter() - start < 5.0
    assert "\n" not in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


def test_hub_reachable_tries_the_endpoint_once(monkeypatch):
    import socket

    from lmbook.models.hf import hub_reachable

    with socket.create_server(("127.0.0.1", 0)) as server:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert not hub_reachable()


def test_load_gpt2_missing_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no directory at that path") as info:
        load_gpt2(str(missing))
    assert str(missing) in str(info.value)


# --- Training with transformers' Trainer, saving and reloading ---------------------------
def test_trainer_round_trip_gives_the_same_logits(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from lmbook.text.tokenizers import FastBPETokenizer

    text = "To be, or not to be, that is the question. Whether 'tis nobler in the mind to suffer. " * 20
    tokenizer = FastBPETokenizer.train(text, 300)
    ids = torch.tensor(tokenizer.encode(text))
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(config)
    hf_model = to_hf(model)
    before = {k: v.clone() for k, v in hf_model.state_dict().items()}
    hf_tokenizer = tokenizer.to_transformers()
    trainer = make_trainer(hf_model, TokenBlocks(ids, 16), tmp_path / "run", max_steps=4, lr=1e-2, batch_size=4,
                           tokenizer=hf_tokenizer)
    trainer.train()
    losses = training_losses(trainer)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert not torch.equal(hf_model.transformer.h[0].attn.c_attn.weight, before["transformer.h.0.attn.c_attn.weight"])

    saved = tmp_path / "saved"
    trainer.save_model(str(saved))  # the model and the tokenizer given as processing_class
    hf_model.eval()
    reloaded = GPT2LMHeadModel.from_pretrained(saved).eval()
    ours = load_gpt2(str(saved))  # the same directory, into our GPT
    reloaded_tokenizer = PreTrainedTokenizerFast.from_pretrained(saved)
    sample = "Whether 'tis nobler to suffer"
    assert reloaded_tokenizer(sample)["input_ids"] == tokenizer.encode(sample)
    idx = torch.tensor([tokenizer.encode(sample)])
    with torch.no_grad():
        trained = hf_model(idx).logits
        assert torch.allclose(reloaded(idx).logits, trained, atol=1e-5)
        assert torch.allclose(ours(idx)[0], trained, atol=1e-4)
        assert not torch.allclose(model.eval()(idx)[0], trained, atol=1e-3)  # training did change the model


def test_token_blocks():
    blocks = TokenBlocks(torch.arange(50), 16)
    assert len(blocks) == 3
    item = blocks[1]
    assert torch.equal(item["input_ids"], torch.arange(16, 32)) and torch.equal(item["labels"], item["input_ids"])
    with pytest.raises(ValueError, match="do not fill one block"):
        TokenBlocks(torch.arange(10), 16)


def test_only_gpt2s_architecture_converts():
    from lmbook.models.mlm import Encoder

    with pytest.raises(ValueError, match="GPT-2 has no twin for a Encoder"):
        to_hf(Encoder(CONFIG))


def test_the_converted_model_computes_its_loss_without_a_warning(caplog):
    import logging

    torch.manual_seed(0)
    ours = GPT(CONFIG).eval()
    model = to_hf(ours).eval()
    x = torch.randint(0, CONFIG.vocab_size, (1, 8))
    with caplog.at_level(logging.WARNING):
        loss = model(input_ids=x, labels=x).loss
    assert "loss_type" not in caplog.text
    with torch.no_grad():  # each token after the first predicted from those before it, written out
        logits = ours(x)[0][0, :-1]  # (7, V)
        written_out = -(logits.log_softmax(-1)[torch.arange(7), x[0, 1:]]).mean()
        torch.testing.assert_close(loss, written_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss, ours(x[:, :-1], x[:, 1:])[1], rtol=1e-5, atol=1e-6)  # lmbook's own loss
