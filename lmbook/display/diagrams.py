"""Architecture diagrams drawn from the models themselves (chapters 2, 3 and 5).

Each figure reads its names and sizes from a model or a computation of the package, so it cannot drift
from the code: the RNN unrolled in time with its parameters' names and shapes (:func:`rnn_unrolled`),
attention as the matrices it multiplies with the causal mask it applies (:func:`attention_matrices`), the
GPT as its modules in order with their shapes (:func:`gpt_diagram`), and the tree that beam search grows,
with the beams it keeps (:func:`beam_search_tree`, :func:`draw_beam_tree`). The ``*_parts`` functions
return what a figure will say, for tests and for the prose.

matplotlib only; each function draws on a given ``ax`` (or makes a figure) and returns it.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyBboxPatch
from torch import nn

from ..models.attention import attention, causal_mask
from ..training.finetune import SequenceClassifier
from .show import plural
from ..models.gpt import GPT, Block
from ..interface import evaluating
from ..models.rnn import RNNLM, SimpleRNN

BOX = {"boxstyle": "round,pad=0.02,rounding_size=0.08", "linewidth": 1}


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str = "#dbe8f6", size: float = 8):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, facecolor=colour, edgecolor="0.3", **BOX))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, family="monospace")


def _arrow(ax, start, end, text: str = "", colour: str = "0.25", size: float = 7, **style):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=colour, lw=1.1, **style))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, text, fontsize=size, ha="center",
                va="bottom", color=colour, family="monospace", bbox={"fc": "white", "ec": "none", "pad": 0.5})


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(n) for n in t.shape)


# --- chapter 2: the RNN unrolled in time ----------------------------------------------
def rnn_parts(model: RNNLM) -> dict:
    """What :func:`rnn_unrolled` labels, read from ``model``: each part's parameter name and shape."""
    if not isinstance(model, RNNLM):
        raise TypeError(f"model must be an lmbook.models.rnn.RNNLM, not {type(model).__name__}.")
    params = dict(model.named_parameters())
    layers = model.config.n_layer
    if isinstance(model.rnn, SimpleRNN):
        cell = "RNN cell (tanh)"
        recurrent = [f"rnn.cells.{i}.W_hh" for i in range(layers)]
        inputs = [f"rnn.cells.{i}.W_xh" for i in range(layers)]
    else:
        cell = type(model.rnn).__name__  # LSTM or GRU: torch.nn's names, gates stacked in the rows
        recurrent = [f"rnn.weight_hh_l{i}" for i in range(layers)]
        inputs = [f"rnn.weight_ih_l{i}" for i in range(layers)]
    return {
        "cell": cell,
        "state": "(h, c)" if cell == "LSTM" else "h",
        "embedding": ("wte.weight", _shape(params["wte.weight"])),
        "recurrent": [(name, _shape(params[name])) for name in recurrent],
        "input": [(name, _shape(params[name])) for name in inputs],
        "output": ("lm_head.weight", _shape(params["lm_head.weight"])),
    }


def rnn_unrolled(model: RNNLM, tokens: list[str] | None = None, steps: int = 4, ax=None):
    """``model`` unrolled over ``steps`` tokens: embedding, each recurrent layer passing its state to the
    right, and the output layer; arrows carry the names of the parameters they apply, the legend their shapes."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps must be an integer of at least 2, not {steps!r}.")
    if tokens is not None and len(tokens) < steps:
        raise ValueError(f"tokens holds {len(tokens)} tokens, fewer than steps={steps}.")
    parts = rnn_parts(model)
    layers = len(parts["recurrent"])
    if ax is None:
        _, ax = plt.subplots(figsize=(2.3 * steps + 4.5, 1.25 * layers + 3.3))
    sub = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
    xs = [3.0 + 2.6 * t for t in range(steps)]
    top = 2 + layers
    state = parts["state"]
    for t, x in enumerate(xs):
        label = repr(tokens[t])[1:-1] if tokens is not None else f"x{t + 1}".translate(sub)
        _box(ax, x, 0, 1.2, 0.5, label, colour="#eeeeee")
        _box(ax, x, 1, 1.2, 0.5, "wte", colour="#f6e7d2")
        _arrow(ax, (x, 0.25), (x, 0.75))
        for layer in range(layers):
            y = 2 + layer
            _box(ax, x, y, 1.2, 0.5, f"{state}{t + 1}".translate(sub), colour="#dbe8f6")
            ax.annotate("", xy=(x, y - 0.25), xytext=(x, y - 0.75), arrowprops={"arrowstyle": "->", "color": "0.25"})
            if t == 0:
                ax.text(x - 0.08, y - 0.5, parts["input"][layer][0].split(".")[-1], fontsize=7, ha="right",
                        va="center", family="monospace", color="0.25")
            if t > 0:
                _arrow(ax, (xs[t - 1] + 0.6, y), (x - 0.6, y), parts["recurrent"][layer][0].split(".")[-1])
        _box(ax, x, top, 1.2, 0.5, "lm_head", colour="#e2f0dc")
        _arrow(ax, (x, top - 0.75), (x, top - 0.25))
        nxt = repr(tokens[t + 1])[1:-1] if tokens is not None and t + 1 < len(tokens) else f"x{t + 2}".translate(sub)
        ax.text(x, top + 0.5, f"P(next) → {nxt}", ha="center", fontsize=7, family="monospace")
    for layer in range(layers):
        _box(ax, 1.0, 2 + layer, 1.3, 0.5, f"{state}₀ = 0", colour="white", size=7)
        _arrow(ax, (1.65, 2 + layer), (xs[0] - 0.6, 2 + layer))
    legend = [f"{parts['cell']}, {plural(layers, 'layer')}", "the same parameters at every step:",
              f"{parts['embedding'][0]} {parts['embedding'][1]}"]
    legend += [f"{name} {shape}" for name, shape in parts["input"] + parts["recurrent"]]
    legend.append(f"{parts['output'][0]} {parts['output'][1]}")
    ax.text(xs[-1] + 1.0, top + 0.3, "\n".join(legend), fontsize=7, va="top", family="monospace")
    ax.set_xlim(0.2, xs[-1] + 4.6)
    ax.set_ylim(-0.5, top + 0.9)
    ax.axis("off")
    ax.set_title("The recurrent model unrolled in time", fontsize=9)
    return ax


# --- chapter 3: attention as matrices ---------------------------------------------------
def attention_matrices(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                       tokens: list[str] | None = None):
    """One head's attention on ``q``, ``k`` (T, d_k) and ``v`` (T, d_v) as the matrices it computes: the
    scaled scores with the causal mask (masked cells blank), the weights, and the output, all from
    :func:`lmbook.models.attention.attention`. Returns the figure; its axes are in the order drawn."""
    if q.dim() != 2 or k.shape != q.shape or v.dim() != 2 or v.size(0) != q.size(0):
        raise ValueError(f"q and k must be (T, d_k) and v (T, d_v), not {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}.")
    T, d_k = q.shape
    out, weights = attention(q, k, v, causal=causal)  # (T, d_v), (T, T)
    scores = q @ k.T / math.sqrt(d_k)  # (T, T), as attention computes them before the mask
    if causal:
        scores = scores.masked_fill(~causal_mask(T, scores.device), float("nan"))  # drawn blank: -inf
    panels = [
        (f"Q  ({T}, {d_k})", q),
        (f"Kᵀ  ({d_k}, {T})", k.T),
        (f"QKᵀ/√d_k  ({T}, {T})" + (", masked" if causal else ""), scores),
        (f"softmax: weights  ({T}, {T})", weights),
        (f"V  ({T}, {v.size(1)})", v),
        (f"weights · V  ({T}, {v.size(1)})", out),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.8),
                             gridspec_kw={"width_ratios": [m.size(1) + 1 for _, m in panels]})
    labels = [repr(t)[1:-1] for t in tokens] if tokens is not None else [str(i) for i in range(T)]
    for ax, (title, matrix) in zip(axes, panels):
        data = matrix.detach().float().cpu().numpy()
        is_weights = matrix is weights
        ax.imshow(data, cmap="Blues" if is_weights else "RdBu", vmin=0 if is_weights else None,
                  vmax=1 if is_weights else None)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if matrix.shape == (T, T):
            ax.set_yticks(range(T), labels, fontsize=7, family="monospace")
            ax.set_xticks(range(T), labels, fontsize=7, family="monospace")
            for i in range(T):
                for j in range(T):
                    if causal and j > i:
                        ax.text(j, i, "−∞" if not is_weights else "0", ha="center", va="center", fontsize=6,
                                color="0.5")
                    elif is_weights:
                        ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if data[i, j] > 0.6 else "black")
    fig.suptitle("Attention as matrices: row i is the query of position i, column j a key"
                 + (" (j > i masked: the future)" if causal else ""), fontsize=9)
    fig.tight_layout()
    return fig


# --- chapter 3: the GPT ------------------------------------------------------------------
def _describe(name: str, module: nn.Module) -> str:
    if isinstance(module, nn.LayerNorm):
        return f"{name}: LayerNorm({module.normalized_shape[0]})"
    if isinstance(module, nn.Embedding):
        return f"{name}: {type(module).__name__}({module.num_embeddings}, {module.embedding_dim})"
    if isinstance(module, nn.Linear):
        return f"{name}: Linear({module.in_features} → {module.out_features})"
    inner = [_describe(n, m) for n, m in module.named_children() if not isinstance(m, nn.Dropout)]
    head = f"{name}: {type(module).__name__}"
    if hasattr(module, "n_head"):
        head += f", {module.n_head} heads" + ("" if getattr(module, "is_causal", True) else ", no causal mask")
    return head + ("\n  " + "\n  ".join(inner) if inner else "")


def gpt_parts(model: GPT | SequenceClassifier) -> dict:
    """What :func:`gpt_diagram` labels, read from ``model``: the modules in the order they are registered (the
    order ``forward`` applies them), each with its shape; dropout left out. A :class:`SequenceClassifier` is its
    backbone's embeddings and blocks, then its pooling and its head (chapter 4)."""
    classifier = model if isinstance(model, SequenceClassifier) else None
    gpt = classifier.backbone if classifier is not None else model
    if not isinstance(gpt, GPT):
        raise TypeError(f"model must be an lmbook.models.gpt.GPT or a SequenceClassifier, not {type(model).__name__}.")
    block = gpt.h[0]
    if type(block) is not Block:
        raise ValueError(f"gpt_diagram draws GPT-2's pre-LN Block, not {type(block).__name__}.")
    c = gpt.config
    parts = {
        "input": f"idx  (B, T), T ≤ {c.block_size}",
        "embeddings": [_describe("wte", gpt.wte), _describe("wpe", gpt.wpe)],
        "block": [_describe(n, m) for n, m in block.named_children() if not isinstance(m, nn.Dropout)],
        "n_layer": len(gpt.h),
        "final": [_describe("ln_f", gpt.ln_f), _describe("lm_head", gpt.lm_head)],
        "tied": gpt.lm_head.weight is gpt.wte.weight,
        "output": f"logits  (B, T, {c.vocab_size})",
        "stream": f"(B, T, {c.n_embd})",
    }
    if classifier is not None:
        pool = {"mean": "mean over the real tokens", "last": "the last real token"}[classifier.pool]
        parts.update(final=[_describe("ln_f", gpt.ln_f), f"pool: {pool}  (B, {c.n_embd})",
                            _describe("head", classifier.head)],
                     tied=False, output=f"class logits  (B, {classifier.head.out_features})")
    return parts


def gpt_diagram(model: GPT | SequenceClassifier, ax=None):
    """The GPT as it is built: embeddings, ``n_layer`` pre-LN blocks (LayerNorm, attention, residual sum;
    LayerNorm, MLP, residual sum), the final LayerNorm and the output layer (or a classifier's pooling and
    head), with each module's shape."""
    parts = gpt_parts(model)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 9))
    x, w = 3.0, 4.2
    y = 0.0
    _box(ax, x, y, w, 0.5, parts["input"], colour="#eeeeee")
    y += 1.1
    _box(ax, x - 1.1, y, 2.0, 0.6, parts["embeddings"][0].replace(": ", "\n"), colour="#f6e7d2", size=7)
    _box(ax, x + 1.1, y, 2.0, 0.6, parts["embeddings"][1].replace(": ", "\n"), colour="#f6e7d2", size=7)
    _arrow(ax, (x, 0.25), (x, y - 0.3))
    y += 0.9
    ax.text(x, y, "+", ha="center", va="center", fontsize=14)
    _arrow(ax, (x, y - 0.55), (x, y - 0.2))
    ax.text(x + 0.3, y, parts["stream"], fontsize=7, va="center", family="monospace", color="0.35")
    block_bottom = y + 0.45
    y += 0.9
    sublayers = parts["block"]  # ln_1, attn, ln_2, mlp
    for i, text in enumerate(sublayers):
        lines = text.count("\n") + 1
        height = 0.3 + 0.22 * lines
        is_norm = "LayerNorm" in text.split("\n")[0]
        _box(ax, x, y + height / 2, w if not is_norm else 2.6, height, text, size=7,
             colour="#fbf3c8" if is_norm else "#dbe8f6")
        _arrow(ax, (x, y - 0.35), (x, y))
        y += height + 0.35
        if not is_norm:  # the residual sum around (LayerNorm, sublayer)
            ax.text(x, y, "+", ha="center", va="center", fontsize=14)
            _arrow(ax, (x, y - 0.35), (x, y - 0.2))
            start = y - height - 0.35 - (0.3 + 0.22 + 0.35) - 0.2
            ax.annotate("", xy=(x - 0.2, y), xytext=(x - w / 2 - 0.3, start),
                        arrowprops={"arrowstyle": "->", "color": "C3", "lw": 1.1,
                                    "connectionstyle": "angle,angleA=90,angleB=0"})
            ax.text(x - w / 2 - 0.35, (start + y) / 2, "residual", rotation=90, fontsize=7, color="C3",
                    ha="right", va="center")
            y += 0.5
    block_top = y - 0.2
    ax.add_patch(plt.Rectangle((x - w / 2 - 0.9, block_bottom), w + 1.8, block_top - block_bottom, fill=False,
                               ls="--", ec="0.5"))
    ax.text(x + w / 2 + 0.85, block_top - 0.1, f"h: {parts['n_layer']} × Block", ha="right", va="top", fontsize=8)
    y += 0.4
    for text in parts["final"]:
        label = text + ("\n(weight tied to wte)" if text.startswith("lm_head") and parts["tied"] else "")
        _box(ax, x, y, 3.0, 0.55, label, colour="#e2f0dc", size=7)
        _arrow(ax, (x, y - 0.65), (x, y - 0.28))
        y += 0.95
    _box(ax, x, y, w, 0.5, parts["output"], colour="#eeeeee")
    _arrow(ax, (x, y - 0.67), (x, y - 0.25))
    ax.set_xlim(x - w / 2 - 1.6, x + w / 2 + 1.0)
    ax.set_ylim(-0.5, y + 0.5)
    ax.axis("off")
    what = "The classifier" if isinstance(model, SequenceClassifier) else f"The {type(model).__name__}"
    ax.set_title(f"{what}, module by module (read from bottom to top)", fontsize=9)
    return ax


# --- chapter 5: beam search as a tree ------------------------------------------------------
@torch.no_grad()
def beam_search_tree(model, prompt: torch.Tensor, num_beams: int = 2, steps: int = 3, shown: int = 3) -> list[dict]:
    """The tree beam search grows from ``prompt`` (T,) over ``steps`` tokens, greedy beams without penalties or end
    tokens: at each step every kept beam's next-token log-probabilities are added to its score and the best
    ``num_beams`` of all extensions are kept. Returns the nodes drawn: each beam's ``shown`` likeliest
    extensions and every kept one, as dicts with ``path`` (token ids after the prompt), ``logprob`` (of the
    last token), ``total`` (the path's sum) and ``kept``. The kept paths of the last step are the sequences
    :func:`lmbook.decoding.generate.generate` returns with ``num_beams`` (a test checks it)."""
    for name, value, low in (("num_beams", num_beams, 1), ("steps", steps, 1), ("shown", shown, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer of at least {low}, not {value!r}.")
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 1 or len(prompt) == 0:
        raise ValueError("prompt must be a non-empty 1-D tensor of token ids.")
    device = next(model.parameters()).device
    beams = [((), 0.0)]
    nodes = []
    with evaluating(model):
        for _ in range(steps):
            rows = torch.stack([torch.cat([prompt.to(device), torch.tensor(p, dtype=torch.long, device=device)])
                                for p, _ in beams])  # (beams, T + step)
            logprobs = F.log_softmax(model(rows)[0][:, -1].float(), dim=-1)  # (beams, V)
            totals = logprobs + torch.tensor([s for _, s in beams], device=device)[:, None]
            best = torch.topk(totals.flatten(), min(num_beams, totals.numel())).indices.tolist()
            vocab = totals.size(1)
            kept = {(i // vocab, i % vocab) for i in best}
            for b, (path, _) in enumerate(beams):
                children = set(torch.topk(logprobs[b], min(shown, vocab)).indices.tolist())
                children |= {tok for beam, tok in kept if beam == b}
                for tok in sorted(children, key=lambda t: -logprobs[b, t].item()):
                    nodes.append({"path": path + (tok,), "logprob": logprobs[b, tok].item(),
                                  "total": totals[b, tok].item(), "kept": (b, tok) in kept})
            beams = [(beams[i // vocab][0] + (i % vocab,), totals.flatten()[i].item()) for i in best]
    return nodes


def draw_beam_tree(nodes: list[dict], tokenizer, ax=None):
    """The tree of :func:`beam_search_tree`: kept beams in colour with their summed log-probability, the
    extensions beam search looked at and dropped in grey."""
    if not nodes:
        raise ValueError("nodes is empty: draw the result of beam_search_tree.")
    depth = max(len(n["path"]) for n in nodes)
    order: dict[tuple, float] = {(): 0.0}
    leaves = 0
    by_parent: dict[tuple, list[dict]] = {}
    for n in nodes:
        by_parent.setdefault(n["path"][:-1], []).append(n)

    def place(path: tuple) -> float:  # depth-first: leaves one below another, a parent in the middle of its children
        nonlocal leaves
        children = by_parent.get(path, [])
        if not children:
            order[path] = -leaves
            leaves += 1
            return order[path]
        ys = [place(child["path"]) for child in children]
        order[path] = sum(ys) / len(ys)
        return order[path]

    place(())
    labels = {}
    for n in nodes:
        text = repr(tokenizer.decode([n["path"][-1]]))[1:-1] or "·"
        labels[n["path"]] = text + f"  {n['logprob']:.2f}" + (f"  [Σ {n['total']:.2f}]" if n["kept"] else "")
    # each level is a column of labels, and the edges run in the gap between one column's labels and the next
    label_width, gap = 1.0, 0.35  # in data units; the figure is sized so that the longest label fits its column
    column = label_width + gap
    inches_per_unit = max(map(len, labels.values())) * 0.075 / (label_width - 0.05)  # monospace 8 pt: ~0.067 in
    if ax is None:
        fig, ax = plt.subplots(figsize=(inches_per_unit * (column * depth + 0.7) / 0.96, 0.36 * leaves + 1.2))
        fig.subplots_adjust(left=0.02, right=0.98)  # the axes span the figure: the units above are its inches
    for n in nodes:
        path = n["path"]
        colour = "C0" if n["kept"] else "0.65"
        x = (len(path) - 1) * column  # where the parent's label ends (the prompt's: 0) and this edge starts
        ax.plot([x, x + gap], [order[path[:-1]], order[path]], color=colour, lw=2 if n["kept"] else 1, zorder=1)
        ax.text(x + gap + 0.03, order[path], labels[path], va="center", fontsize=8,
                family="monospace", color=colour, zorder=2)
    ax.text(-0.03, order[()], "prompt", ha="right", va="center", fontsize=9)
    ax.set_xlim(-0.6, column * depth + 0.1)
    ax.axis("off")
    ax.set_title("Beam search: log p of each token; kept beams in colour with their sum", fontsize=9)
    return ax
