"""Growing a model's vocabulary for new tokens (chapter 9: the chat template's role and end-of-turn tokens).

:func:`grow_embeddings` adds rows to the token embedding of the book's GPT (``wte``) or Llama (``embed_tokens``)
and to its output layer (``lm_head``, tied to the embedding or not), as ``transformers``'
``resize_token_embeddings`` does by default (``mean_resizing=True``): the old rows are kept bit for bit, and each
new row is the mean of the old rows plus a tiny draw from a normal distribution with 1e-9 times their covariance
(the mean alone when that covariance is not positive definite, as when there are fewer rows than dimensions). A
new token then starts as an average token: its logit is the average of the old tokens' logits, so adding it
barely moves the model's predictions over the old ones (Hewitt, 2021, "Initializing new word embeddings for
pretrained language models"). The draw comes from a seeded generator, where ``transformers`` uses torch's global one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..interface import check_int, check_seed

NOISE = 1e-9  # the new rows' covariance, as a share of the old rows' (transformers' epsilon)


def mean_rows(weight: torch.Tensor, added: int, generator: torch.Generator) -> torch.Tensor:
    """``added`` new rows for ``weight`` (V, C): the rows' mean plus a draw from N(0, NOISE * covariance), computed
    in float32 on the CPU and returned in ``weight``'s dtype and device (added, C)."""
    old = weight.detach().float().cpu()  # (V, C)
    mean = old.mean(dim=0)  # (C,)
    centered = old - mean
    covariance = centered.T @ centered / old.size(0)  # (C, C), over V as transformers divides
    root, info = torch.linalg.cholesky_ex(NOISE * covariance)
    if info != 0:  # not positive definite: the mean alone, as transformers does
        rows = mean.expand(added, -1)
    else:
        rows = mean + torch.randn(added, old.size(1), generator=generator) @ root.T  # (added, C)
    return rows.to(dtype=weight.dtype, device=weight.device)


def embedding_layers(model: nn.Module) -> tuple[nn.Embedding, nn.Linear]:
    """The token embedding and the output layer of the book's GPT (``wte``) or Llama (``embed_tokens``)."""
    embedding = getattr(model, "wte", getattr(model, "embed_tokens", None))
    head = getattr(model, "lm_head", None)
    if not isinstance(embedding, nn.Embedding) or not isinstance(head, nn.Linear) or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} has no token embedding (wte or embed_tokens, an nn.Embedding) and "
                        "output layer (lm_head, an nn.Linear): grow_embeddings takes the book's GPT or Llama. An "
                        "adapted output layer (LoRA) must be merged first (lmbook.models.lora.merge_lora).")
    return embedding, head


def grow_embeddings(model: nn.Module, new_vocab_size: int, seed: int = 0) -> nn.Module:
    """Grow ``model``'s vocabulary to ``new_vocab_size`` tokens, in place, and return it.

    New rows of the embedding (and of an untied output layer, drawn on its own) follow :func:`mean_rows`; old rows
    are unchanged, tying is kept and ``model.config.vocab_size`` is updated. The weights are new tensors: make the
    optimizer after growing. The same ``seed`` gives the same new rows.
    """
    embedding, head = embedding_layers(model)
    check_int("new_vocab_size", new_vocab_size)
    check_seed(seed)
    old_size = embedding.num_embeddings
    if new_vocab_size < old_size:
        raise ValueError(f"new_vocab_size={new_vocab_size} is below the model's {old_size} tokens: grow_embeddings "
                         "adds tokens and never removes any.")
    if head.weight.size(0) != old_size:
        raise ValueError(f"the output layer has {head.weight.size(0)} rows but the embedding {old_size}: they must "
                         "cover the same vocabulary.")
    if new_vocab_size == old_size:
        return model
    tied = head.weight is embedding.weight
    generator = torch.Generator().manual_seed(seed)
    added = new_vocab_size - old_size
    with torch.no_grad():
        old = embedding.weight
        embedding.weight = nn.Parameter(torch.cat([old, mean_rows(old, added, generator)]),
                                        requires_grad=old.requires_grad)  # (V + added, C)
        embedding.num_embeddings = new_vocab_size
        if tied:
            head.weight = embedding.weight
        else:
            old = head.weight
            head.weight = nn.Parameter(torch.cat([old, mean_rows(old, added, generator)]),
                                       requires_grad=old.requires_grad)
        head.out_features = new_vocab_size
    model.config.vocab_size = new_vocab_size
    return model
