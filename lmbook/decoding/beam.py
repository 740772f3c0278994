"""Beam search (chapter 5): follow the ``num_beams`` most likely partial sequences instead of one.

The algorithm is ``transformers``' own (its ``_beam_search``), written out so that the same
weights give the same sequences and the same scores:

1. Each running beam's next-token log-probabilities (``log_softmax`` of the logits, then the
   repetition penalty and no-repeat-n-gram) are added to the beam's score; beams 1.. start at
   -1e9 so that the first step expands only beam 0.
2. The best ``2 * num_beams`` (``(1 + number of end ids) * num_beams`` with several end ids)
   candidates over all beams and tokens are kept. A candidate among the best ``num_beams`` that
   ends in an end id, or reaches the maximum length, is *finished* with the score
   ``sum log p / new_tokens ** length_penalty``; the best ``num_beams`` unfinished ones run on.
3. Search stops when ``num_beams`` hypotheses are finished (``early_stopping=True``), when no
   running beam can beat the worst finished one any more (``False``: its score divided by the
   current length; ``"never"``: by the maximum length when ``length_penalty > 0``), or at the
   maximum length.

:func:`lmbook.decoding.generate.generate` calls :func:`beam_search` when ``num_beams > 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .shared import GenerationConfig, Reader, process_scores

NEG = -1.0e9  # the score of an impossible beam, as transformers writes it


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (N, K) of ``x`` (N, M, ...) along dim 1: (N, K, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


@torch.inference_mode()
def beam_search(model, prompts: torch.Tensor, config: GenerationConfig,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``config.num_return_sequences`` sequences per prompt (N * R, L) and their scores (N * R,).

    ``prompts`` (N, T) may be left-padded, with ``mask`` (N, T) 0 on the padding. A sequence that
    finished early is filled with ``config.pad_id`` (-1 when there is no end id and no pad id).
    """
    N, T = prompts.shape
    nb, lp, early = config.num_beams, config.length_penalty, config.early_stopping
    max_len = config.total_length(T)
    device = prompts.device
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=device)
    keep = max(2, 1 + len(config.eos_ids)) * nb  # candidates per prompt and step
    top_nb = torch.arange(keep, device=device) < nb  # only the best num_beams candidates may finish
    fill = config.pad_id if config.pad_id is not None else -1

    room = min(max_len, max(2 * T, T + 64))  # the sequences grow as they fill, up to max_len
    running = torch.full((N, nb, room), fill, dtype=torch.long, device=device)  # (N, nb, L)
    running[:, :, :T] = prompts[:, None]
    running_scores = torch.zeros(N, nb, device=device)
    running_scores[:, 1:] = NEG  # the first step expands beam 0 only
    finished = running.clone()  # (N, nb, L): the best finished hypotheses so far
    finished_scores = torch.full((N, nb), NEG, device=device)
    finished_len = torch.full((N, nb), T, dtype=torch.long, device=device)
    is_finished = torch.zeros(N, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(N, 1, dtype=torch.bool, device=device)  # can a running beam still beat them?
    flat_mask = None if mask is None else mask.repeat_interleave(nb, dim=0)  # (N * nb, T)
    reader = Reader(model, config.use_cache)
    rows = torch.arange(N, device=device)[:, None] * nb  # (N, 1) first flat row of each prompt

    for cur in range(T, max_len):
        if cur == running.size(2):  # full: double the room (an end reached early costs only what was decoded)
            grow = min(max_len, 2 * cur) - cur
            running, finished = F.pad(running, (0, grow), value=fill), F.pad(finished, (0, grow), value=fill)
        flat = running[:, :, :cur].reshape(N * nb, cur)  # (N * nb, cur)
        m = None if flat_mask is None else F.pad(flat_mask, (0, cur - T), value=1)
        logprobs = F.log_softmax(reader(flat, m), dim=-1)  # (N * nb, V)
        logprobs = process_scores(logprobs, flat, config, sampling=False, mask=m)
        V = logprobs.size(-1)
        totals = (logprobs.view(N, nb, V) + running_scores[:, :, None]).view(N, nb * V)
        cand_scores, cand = torch.topk(totals, keep)  # (N, keep), best first
        origin, token = cand // V, cand % V  # which beam each candidate extends, with which token
        cand_seqs = _take(running, origin)  # (N, keep, L)
        cand_seqs[:, :, cur] = token
        done = torch.isin(token, eos) | (cur + 1 >= max_len)  # (N, keep)

        # the best num_beams candidates that have not finished run on
        alive = cand_scores + done.float() * NEG
        best = torch.topk(alive, nb).indices  # (N, nb)
        running, running_scores = _take(cand_seqs, best), _take(alive, best)
        reader.reorder((rows + _take(origin, best)).view(-1))

        # finished candidates among the best num_beams join the finished hypotheses if they beat them
        scores = cand_scores / ((cur + 1 - T) ** lp)
        scores += (is_finished.all(dim=-1, keepdim=True) & (early is True)).float() * NEG
        scores += (~improvable).float() * NEG
        scores += (~(done & top_nb)) * NEG
        merged = torch.topk(torch.cat([finished_scores, scores], dim=1), nb).indices  # (N, nb)
        finished = _take(torch.cat([finished, cand_seqs], dim=1), merged)
        finished_scores = _take(torch.cat([finished_scores, scores], dim=1), merged)
        finished_len = _take(torch.cat([finished_len, torch.full_like(scores, cur + 1, dtype=torch.long)], 1), merged)
        is_finished = _take(torch.cat([is_finished, done & top_nb], dim=1), merged)

        # could the best running beam still beat the worst finished one?
        hypothetical = max_len - T if early == "never" and lp > 0 else cur + 1 - T
        best_possible = running_scores[:, :1] / (hypothetical**lp)  # (N, 1)
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)  # (N, nb)
        improvable = improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        if not improvable.any() or (is_finished.all() and early is True) or done.all():
            break

    R = config.num_return_sequences
    length = int(finished_len[:, :R].max())
    return finished[:, :R, :length].reshape(N * R, length), finished_scores[:, :R].reshape(N * R)
