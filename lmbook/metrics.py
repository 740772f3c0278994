"""How well a language model predicts text, and how good the text it writes is.

Every measure here starts from the negative log-likelihood (NLL) a model gives to
text, in nats (natural logarithms, as ``torch.nn.functional.cross_entropy``
returns it). Chapter 1 defines perplexity and bits per character and computes
them by hand for an n-gram model; later chapters score the neural models with
the same functions and add measures of generated text.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

LN2 = math.log(2.0)  # nats in one bit


def _check_nll(value: float, name: str) -> float:
    value = float(value)  # also accepts a 0-d tensor or a NumPy number
    if math.isnan(value):
        raise ValueError(f"{name} is NaN: some probability was not a number.")
    if value < 0:
        raise ValueError(f"{name} = {value} is negative: a probability above 1 was scored.")
    return value


def nats_to_bits(nats: float) -> float:
    """``nats`` in bits: one bit is ln 2 nats."""
    return float(nats) / LN2


def perplexity(mean_nll_nats: float) -> float:
    """``exp(mean NLL per token)``: the number of equally likely tokens the model is as unsure as.

    A model that spreads its probability evenly over ``V`` tokens has a mean NLL of
    ``ln V`` and a perplexity of ``V``. A token given probability 0 makes the NLL, and
    the perplexity, infinite.
    """
    mean_nll_nats = _check_nll(mean_nll_nats, "mean_nll_nats")
    try:
        return math.exp(mean_nll_nats)
    except OverflowError:
        return math.inf


def bits_per_char(total_nll_nats: float, n_chars: int) -> float:
    """The NLL of a text in bits, divided by its number of characters.

    ``total_nll_nats`` is summed over the text's tokens, whatever they are
    (characters, words, BPE tokens): dividing by characters, not tokens, makes models
    with different tokenizers comparable on the same text.
    """
    total_nll_nats = _check_nll(total_nll_nats, "total_nll_nats")
    if n_chars <= 0:
        raise ValueError(f"n_chars must be positive, not {n_chars}.")
    return total_nll_nats / (n_chars * LN2)


@torch.no_grad()
def split_loss(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 256) -> float:
    """Mean loss over a whole split cut into consecutive windows of ``block_size`` (every token predicted once).

    Chapter 3 compares its GPT and the LSTM with it; ``benchmarks/speedrun_char_cpu.py`` reports it.
    """
    n = (len(data) - 1) // block_size
    device = next(model.parameters()).device
    x = data[: n * block_size].view(n, block_size).to(device)  # (N, T)
    y = data[1 : n * block_size + 1].view(n, block_size).to(device)  # (N, T), shifted by one
    was_training = model.training
    model.eval()
    total = sum(model(x[i : i + batch_size], y[i : i + batch_size])[1].item() * len(x[i : i + batch_size])
                for i in range(0, n, batch_size))
    model.train(was_training)
    return total / n
