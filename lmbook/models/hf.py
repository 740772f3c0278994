"""Converting between our :class:`~lmbook.models.gpt.GPT` and Hugging Face's ``GPT2LMHeadModel``.

Chapter 4 loads the released GPT-2 weights into our own code with :func:`load_gpt2`
and checks that both implementations give the same logits; chapter 5 uses
:func:`to_hf` to check that our decoding matches ``transformers``' ``generate``.

Chapter 8's :class:`~lmbook.models.llama.Llama` converts to and from ``LlamaForCausalLM``
(:func:`to_hf_llama`, :func:`from_hf_llama`): its layers carry Llama's names and shapes.

Our layers carry GPT-2's names, so the mapping is one to one. The only twist:
GPT-2 stores its linear layers as ``Conv1D`` with weights of shape (in, out),
while ``nn.Linear`` keeps (out, in), so those weights are transposed.

``transformers`` takes a couple of seconds to import, so it is imported inside
the functions that need it and ``import lmbook.models.hf`` stays cheap.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import torch

from lmbook.models.gpt import GPT, GPTConfig
from lmbook.models.llama import Llama, LlamaConfig

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

# The activations that compute GELU's tanh approximation, as our MLP does.
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _name_pairs(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, transposed?) for every parameter; lm_head is left out as it is tied to wte."""
    pairs = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False)]
    for i in range(n_layer):
        for ln in ("ln_1", "ln_2"):
            for kind in ("weight", "bias"):
                pairs.append((f"h.{i}.{ln}.{kind}", f"transformer.h.{i}.{ln}.{kind}", False))
        for linear in LINEARS:
            pairs.append((f"h.{i}.{linear}.weight", f"transformer.h.{i}.{linear}.weight", True))
            pairs.append((f"h.{i}.{linear}.bias", f"transformer.h.{i}.{linear}.bias", False))
    pairs += [("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False)]
    return pairs


def to_hf_config(config: GPTConfig) -> GPT2Config:
    """The ``GPT2Config`` that computes exactly what a ``GPT`` with ``config`` computes."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,  # GPT-2's default: 4 * n_embd, as in our MLP
        activation_function="gelu_new",  # GELU's tanh approximation
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        scale_attn_weights=True,  # scores divided by sqrt(head size)
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        add_cross_attention=False,
        tie_word_embeddings=True,
        loss_type="ForCausalLM",  # next-token cross-entropy, said outright (transformers warns when it must guess)
        # No special tokens: the book's vocabularies (characters, its own BPE) have no end-of-text token, and
        # naming an ordinary one (a character) would make transformers' generate stop on it. GPT-2's own
        # <|endoftext|> (50256) is passed to generate as eos_token_id where it is meant.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def to_hf(model: GPT) -> GPT2LMHeadModel:
    """A new ``GPT2LMHeadModel`` with a copy of ``model``'s weights, on the same device, dtype and mode.

    GPT-2 always has biases: a model built with ``bias=False`` gets zero biases, which computes the same.
    """
    from transformers import GPT2LMHeadModel

    if type(model) is not GPT:  # a variant (models.variants) or the encoder (models.mlm) computes something else
        raise ValueError(
            f"GPT-2 has no twin for a {type(model).__name__}: only lmbook.models.gpt.GPT itself (causal attention, "
            "learned positions, pre-LayerNorm blocks) converts to GPT2LMHeadModel."
        )
    ours = dict(model.named_parameters())
    pairs = _name_pairs(model.config.n_layer)
    expected = {our for our, _, _ in pairs} | {"lm_head.weight"}
    adapted = sorted({name.rsplit(".", 2)[0] for name in ours if ".base." in name or name.endswith((".A", ".B"))})
    if adapted:
        raise ValueError(f"the model carries LoRA adapters ({', '.join(adapted)}): GPT-2 has no place for them. "
                         "Merge them into the weights first: lmbook.models.lora.merge_lora(model) (or merge a copy).")
    unknown = sorted(set(ours) - expected)
    if unknown:
        raise ValueError(f"cannot convert: parameters {unknown} have no place in GPT2LMHeadModel.")
    if model.lm_head.weight is not model.wte.weight:
        raise ValueError("the output layer is no longer tied to the token embedding (lm_head.weight is not "
                         "wte.weight): GPT-2 ties them. Tie them again (model.lm_head.weight = model.wte.weight).")
    weight = model.wte.weight
    hf_model = GPT2LMHeadModel(to_hf_config(model.config)).to(device=weight.device, dtype=weight.dtype)
    theirs = dict(hf_model.named_parameters())
    with torch.no_grad():
        for our_name, hf_name, transposed in pairs:
            if our_name not in ours:
                if model.config.bias or not our_name.endswith(".bias"):
                    raise ValueError(f"cannot convert: the model has no parameter {our_name}.")
                theirs[hf_name].zero_()  # a bias=False model: a zero bias computes the same
                continue
            source = ours[our_name]
            theirs[hf_name].copy_(source.t() if transposed else source)
    hf_model.loss_type = "ForCausalLM"  # said outright on the model too, or transformers warns at each loss
    hf_model.train(model.training)
    return hf_model


def _unsupported(hf_model: GPT2LMHeadModel) -> list[str]:
    """What in ``hf_model`` our ``GPT`` cannot compute; empty when the conversion is exact."""
    c = hf_model.config
    problems = []
    if c.model_type != "gpt2":
        problems.append(f"model_type={c.model_type!r} (only 'gpt2' is supported)")
    if c.activation_function not in SUPPORTED_ACTIVATIONS:
        problems.append(f"activation_function={c.activation_function!r} (ours is GELU's tanh approximation: "
                        f"one of {SUPPORTED_ACTIVATIONS})")
    if c.n_inner not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (our MLP is 4 * n_embd = {4 * c.n_embd} wide)")
    if not c.scale_attn_weights:
        problems.append("scale_attn_weights=False (we always divide scores by sqrt(head size))")
    if c.scale_attn_by_inverse_layer_idx:
        problems.append("scale_attn_by_inverse_layer_idx=True")
    if c.reorder_and_upcast_attn:
        problems.append("reorder_and_upcast_attn=True")
    if c.add_cross_attention:
        problems.append("add_cross_attention=True (ours is a decoder without cross-attention)")
    head, embedding = hf_model.lm_head.weight, hf_model.transformer.wte.weight
    if not c.tie_word_embeddings or (head is not embedding and not torch.equal(head, embedding)):
        problems.append("untied input and output embeddings (ours shares one matrix)")
    if not c.resid_pdrop == c.embd_pdrop == c.attn_pdrop:
        problems.append(f"different dropouts resid_pdrop={c.resid_pdrop}, embd_pdrop={c.embd_pdrop}, "
                        f"attn_pdrop={c.attn_pdrop} (ours has one rate for all three)")
    return problems


def from_hf(hf_model: GPT2LMHeadModel) -> GPT:
    """A new ``GPT`` with a copy of ``hf_model``'s weights, on the same device, dtype and mode.

    Raises ``ValueError`` if the Hugging Face model computes something our ``GPT`` cannot.
    """
    problems = _unsupported(hf_model)
    if problems:
        raise ValueError("cannot convert this GPT2LMHeadModel to lmbook's GPT: " + "; ".join(problems))
    c = hf_model.config
    config = GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        dropout=c.resid_pdrop,
        bias=True,  # GPT-2's layers always have biases
        layer_norm_eps=c.layer_norm_epsilon,
    )
    weight = hf_model.transformer.wte.weight
    model = GPT(config).to(device=weight.device, dtype=weight.dtype)
    ours, theirs = dict(model.named_parameters()), dict(hf_model.named_parameters())
    with torch.no_grad():
        for our_name, hf_name, transposed in _name_pairs(config.n_layer):
            source = theirs[hf_name]
            ours[our_name].copy_(source.t() if transposed else source)
    model.train(hf_model.training)
    return model


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a connection to the Hugging Face Hub (``HF_ENDPOINT``, else huggingface.co) opens within
    ``timeout`` seconds: one quick try, where ``transformers`` would retry for half a minute."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:  # no route, no name, refused, timed out
        return False


def load_gpt2(name_or_path: str = "gpt2") -> GPT:
    """GPT-2 as our ``GPT``: from the Hugging Face Hub (``"gpt2"``, ``"gpt2-medium"``, ...) or a local directory.

    The directory is one written by ``GPT2LMHeadModel.save_pretrained`` (or ``to_hf(model).save_pretrained``).
    Without a network (or with ``HF_HUB_OFFLINE=1``) a Hub model loads from the local cache when it is there;
    otherwise the error says so at once, in one line, instead of after the Hub client's retries.
    """
    from huggingface_hub import is_offline_mode
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from transformers import GPT2LMHeadModel

    name_or_path = os.path.expanduser(name_or_path)
    offline = is_offline_mode()
    unreachable = not offline and not os.path.isdir(name_or_path) and not hub_reachable()
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_path, local_files_only=offline or unreachable)
    except OSError as err:
        # transformers turns every failure into an OSError; its cause tells them apart.
        if isinstance(err.__cause__, HFValidationError) and not os.path.isdir(name_or_path):
            raise FileNotFoundError(
                f"cannot load {name_or_path!r}: there is no directory at that path, and it is not a model id "
                "on the Hugging Face Hub either (like 'gpt2'). Pass the path of a directory written by "
                "save_pretrained, or a Hub model id."
            ) from err
        if offline or unreachable or isinstance(err.__cause__, LocalEntryNotFoundError):
            why = ("offline mode is on (HF_HUB_OFFLINE=1)" if offline
                   else "the Hugging Face Hub could not be reached")
            raise OSError(
                f"cannot load {name_or_path!r}: {why} and its files are not in the local cache. Connect to the "
                "internet (and unset HF_HUB_OFFLINE) to download them once, or pass the path of a directory "
                "written by GPT2LMHeadModel.save_pretrained."
            ) from err
        raise
    return from_hf(hf_model)


# --- Training with transformers' own Trainer (chapter 4) -----------------------------
class TokenBlocks(torch.utils.data.Dataset):
    """Consecutive blocks of ``block_size`` token ids, as ``transformers`` models read them.

    Item ``i`` is ``{"input_ids": block, "labels": block}``: a ``GPT2LMHeadModel`` shifts the
    labels by one itself, so both are the same tokens.
    """

    def __init__(self, ids: torch.Tensor, block_size: int):
        ids = torch.as_tensor(ids, dtype=torch.long)
        n = len(ids) // block_size
        if n < 1:
            raise ValueError(f"{len(ids)} tokens do not fill one block of {block_size}: use more text or shorter ones.")
        self.blocks = ids[: n * block_size].view(n, block_size)  # (N, T)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def make_trainer(hf_model, train_dataset, output_dir: str | os.PathLike, max_steps: int, lr: float = 1e-4,
                 batch_size: int = 16, tokenizer=None, seed: int = 0, **arguments):
    """A ``transformers.Trainer`` for a causal language model, on the GPU if there is one, else the CPU.

    It records the training loss at every step and reports to no tracking service; ``arguments``
    override any other ``TrainingArguments``. ``tokenizer`` (a ``PreTrainedTokenizerFast``) is
    saved with the model.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments, default_data_collator

    settings = dict(
        output_dir=str(output_dir), max_steps=max_steps, learning_rate=lr, per_device_train_batch_size=batch_size,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=not torch.cuda.is_available(), seed=seed, disable_tqdm=True,
    )
    args = TrainingArguments(**{**settings, **arguments})
    trainer = Trainer(model=hf_model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=default_data_collator)
    trainer.remove_callback(PrinterCallback)  # the losses stay in trainer.state.log_history, unprinted
    return trainer


def training_losses(trainer) -> list[float]:
    """The training loss logged at each logging step of a finished ``Trainer`` run."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# --- The Llama-style model of chapter 8 and transformers' LlamaForCausalLM ----------------
def to_hf_llama_config(config: LlamaConfig):
    """The ``transformers`` ``LlamaConfig`` of the same shape (RoPE, RMSNorm and SwiGLU: the default choices)."""
    from transformers import LlamaConfig as HFLlamaConfig

    changed = [name for name, default in (("position", "rope"), ("norm", "rms"), ("mlp", "swiglu"), ("rope_scale", 1.0))
               if getattr(config, name) != default]
    if changed:
        chosen = {name: getattr(config, name) for name in changed}
        raise ValueError(f"LlamaForCausalLM has no twin for {chosen}: only the default choices (RoPE, RMSNorm, "
                         "SwiGLU) convert.")
    return HFLlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                         intermediate_size=config.intermediate_size, num_hidden_layers=config.n_layer,
                         num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
                         head_dim=config.head_dim, max_position_embeddings=config.block_size,
                         rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
                         tie_word_embeddings=config.tie_embeddings, attention_bias=config.bias, mlp_bias=config.bias,
                         hidden_act="silu", attention_dropout=config.dropout)


def to_hf_llama(model: Llama):
    """A new ``LlamaForCausalLM`` with a copy of ``model``'s weights (the names match, under ``model.``)."""
    from transformers import LlamaForCausalLM

    if type(model) is not Llama:
        raise ValueError(f"only lmbook.models.llama.Llama converts to LlamaForCausalLM, not a {type(model).__name__}.")
    weight = model.embed_tokens.weight
    hf_model = LlamaForCausalLM(to_hf_llama_config(model.config)).to(device=weight.device, dtype=weight.dtype)
    state = {(name if name.startswith("lm_head.") else f"model.{name}"): value
             for name, value in model.state_dict().items()}
    hf_model.load_state_dict(state, strict=True)
    hf_model.train(model.training)
    return hf_model


def from_hf_llama(hf_model) -> Llama:
    """A :class:`~lmbook.models.llama.Llama` with a copy of a ``LlamaForCausalLM``'s weights."""
    c = hf_model.config
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or c.hidden_act != "silu":
        raise ValueError(f"only default RoPE and SiLU convert, not rope_type={rope.get('rope_type')!r}, "
                         f"hidden_act={c.hidden_act!r}.")
    if c.attention_bias != c.mlp_bias:
        raise ValueError("the Llama here has biases everywhere or nowhere: attention_bias and mlp_bias differ.")
    config = LlamaConfig(vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
                         n_head=c.num_attention_heads, n_kv_head=c.num_key_value_heads, n_embd=c.hidden_size,
                         head_dim=c.head_dim, intermediate_size=c.intermediate_size,
                         rope_theta=float(rope.get("rope_theta", 10000.0)), rms_norm_eps=c.rms_norm_eps,
                         tie_embeddings=bool(c.tie_word_embeddings), bias=bool(c.attention_bias))
    weight = hf_model.model.embed_tokens.weight
    model = Llama(config).to(device=weight.device, dtype=weight.dtype)
    state = {name.removeprefix("model."): value for name, value in hf_model.state_dict().items()
             if not name.endswith("rotary_emb.inv_freq")}
    model.load_state_dict(state, strict=True)
    model.train(hf_model.training)
    return model
