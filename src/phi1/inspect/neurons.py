"""MLP neurons: the top-k activating tokens of every neuron of chosen layers, over a corpus of
any size, in memory bounded by (layers x neurons x k x context), not by the corpus.

An activation is the MLP's post-nonlinearity value (phi: gelu(fc1(ln(x)))) of one neuron at
one token. Each batch of windows is reduced to its own top k per neuron and merged into the
running top k; ties are broken by the earlier corpus position, so the result equals a full
sort of all activations by (activation descending, position ascending).

A neuron is monosemantic when one token class (`tokenclass.py`) covers at least `threshold`
of its top-k tokens; the summary also gives the share expected by chance from the corpus's
own class frequencies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from phi1.errors import ConfigError, Phi1Error
from phi1.inspect.corpus import batches, token_stream, windows
from phi1.inspect.hooks import Capture, adapter_for, model_device, resolve_layers
from phi1.inspect.tokenclass import CLASSES, chance_monosemantic, token_class

_NO_POS = torch.iinfo(torch.int64).max


@dataclass
class TopK:
    """The running top k of every neuron of one layer (all tensors have N rows)."""

    values: torch.Tensor      # (N, k) float32, -inf where empty
    positions: torch.Tensor   # (N, k) int64 corpus token index, _NO_POS where empty
    contexts: torch.Tensor    # (N, k, C) int64 token ids around the position, -1 past a window's edge
    weights: torch.Tensor     # (N, k, C) float32 this neuron's activation at each context token

    @classmethod
    def empty(cls, n: int, k: int, c: int, device) -> "TopK":
        return cls(torch.full((n, k), float("-inf"), device=device),
                   torch.full((n, k), _NO_POS, dtype=torch.long, device=device),
                   torch.full((n, k, c), -1, dtype=torch.long, device=device),
                   torch.zeros((n, k, c), device=device))


def _order(values: torch.Tensor, positions: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the first k by (value descending, position ascending), per row."""
    by_pos = positions.argsort(dim=1, stable=True)
    v = values.gather(1, by_pos)
    by_val = v.argsort(dim=1, descending=True, stable=True)
    return by_pos.gather(1, by_val)[:, :k]


def batch_topk(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, flat indices), each (N, k), of the top k of each neuron of acts (M, N); ties to the lower index."""
    M = acts.shape[0]
    kk = min(k, M)
    vals, idx = acts.topk(min(kk + 1, M), dim=0)                      # (kk + 1, N)
    # Equal values straddling the cut (the (k+1)-th equals the k-th): topk's choice among them is
    # arbitrary, so those neurons take their earliest tied rows. Common in layer 0 of a parallel
    # block, whose MLP sees only the token itself.
    tied = (vals[kk] == vals[kk - 1]).nonzero().flatten() if M > kk else vals.new_zeros(0, dtype=torch.long)
    vals, idx = vals[:kk], idx[:kk]
    thr = vals[-1]
    if len(tied):
        a, t = acts[:, tied], thr[tied]
        above, equal = a > t, a == t
        room = kk - above.sum(0)                                      # places left for the tied value
        keep = above | (equal & (equal.cumsum(0) <= room))            # exactly kk per neuron
        earliest = keep * torch.arange(M, 0, -1, device=acts.device)[:, None]
        order = earliest.topk(kk, dim=0).indices
        idx[:, tied], vals[:, tied] = order, a.gather(0, order)
    vals, idx = vals.T, idx.T
    fix = _order(vals, idx, kk)                                       # equal values in index order
    return vals.gather(1, fix), idx.gather(1, fix)


class NeuronRanker:
    """Feed batches of (ids, acts); keeps the top k per neuron with their contexts."""

    def __init__(self, n_neurons: int, k: int, left: int, right: int, device):
        self.k, self.left, self.right = k, left, right
        self.top = TopK.empty(n_neurons, k, left + 1 + right, device)

    def add(self, ids: torch.Tensor, acts: torch.Tensor, first_pos: torch.Tensor) -> None:
        """ids (B, T); acts (B, T, N); first_pos (B,) corpus index of each window's first token."""
        B, T, N = acts.shape
        vals, flat = batch_topk(acts.reshape(B * T, N), self.k)       # (N, kk)
        b, t = flat // T, flat % T
        pos = first_pos[b] + t
        span = torch.arange(-self.left, self.right + 1, device=ids.device)
        at = t[..., None] + span                                      # (N, kk, C) positions in the window
        inside = (at >= 0) & (at < T)
        at_c = at.clamp(0, T - 1)
        bb = b[..., None].expand_as(at_c)
        ctx = torch.where(inside, ids[bb, at_c], torch.full_like(at_c, -1))
        neuron = torch.arange(N, device=ids.device)[:, None, None].expand_as(at_c)
        w = torch.where(inside, acts[bb, at_c, neuron], torch.zeros((), device=acts.device))
        top = self.top
        values = torch.cat([top.values, vals], 1)
        positions = torch.cat([top.positions, pos], 1)
        pick = _order(values, positions, self.k)
        self.top = TopK(values.gather(1, pick), positions.gather(1, pick),
                        _gather3(torch.cat([top.contexts, ctx], 1), pick),
                        _gather3(torch.cat([top.weights, w], 1), pick))


def _gather3(x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    return x.gather(1, pick[..., None].expand(-1, -1, x.shape[2]))


@dataclass
class NeuronReport:
    model: str
    layers: list[int]
    k: int
    threshold: float
    tokens: int = 0
    windows: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    per_layer: dict[int, list[dict]] = field(default_factory=dict)
    summary: dict[int, dict] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"model": self.model, "layers": self.layers, "top_k": self.k, "monosemantic_threshold": self.threshold,
                "tokens": self.tokens, "windows": self.windows, "corpus_token_classes": self.class_counts,
                "summary": {str(k): v for k, v in self.summary.items()},
                "neurons": {str(k): v for k, v in self.per_layer.items()}}


MAX_TOPK_BYTES = 4 << 30  # the top-k tables of all neurons: past this, --top-k is a typo


def inspect_neurons(model, tokenizer, docs, *, layers=None, k: int = 10, context: int = 8, seq_len: int = 256,
                    batch_size: int = 8, max_tokens: int | None = None, threshold: float = 0.8,
                    model_name: str = "") -> NeuronReport:
    """Stream `docs` through the model; the top-k tokens of every neuron of `layers` (default: the middle one)."""
    if k < 1:
        raise ConfigError(f"--top-k {k}: use an integer >= 1")
    if context < 0:
        raise ConfigError(f"--context {context}: use an integer >= 0")
    if seq_len < 1 or batch_size < 1:
        raise ConfigError("--seq-len and --batch-size must be >= 1")
    if not 0.5 < threshold <= 1:
        raise ConfigError(f"--threshold {threshold}: use a fraction in (0.5, 1]")
    adapter = adapter_for(model)
    layers = resolve_layers(layers, len(adapter.layers(model)), default="middle")
    seq_len = min(seq_len, model.config.max_position_embeddings)
    dev = model_device(model)
    N = adapter.n_neurons(model)
    need = len(layers) * N * k * (12 + 12 * (context + 1))  # values, positions, contexts and weights kept
    if need > MAX_TOPK_BYTES:
        raise ConfigError(f"--top-k {k}: keeping {k} activations of each of {N} neurons in {len(layers)} layer(s) "
                          f"needs about {need / 2**30:.1f} GiB; use a smaller --top-k (10 to 100 is usual)")
    rankers = {layer: NeuronRanker(N, k, context, context // 2, dev) for layer in layers}
    vocab = max(len(tokenizer), model.config.vocab_size)
    id_counts = torch.zeros(vocab, dtype=torch.long, device=dev)
    rep = NeuronReport(model=model_name, layers=layers, k=k, threshold=threshold)
    state: dict = {}

    def on_mlp(layer: int, acts: torch.Tensor) -> None:
        rankers[layer].add(state["ids"], acts, state["first"])

    with Capture(model, mlp_layers=layers, on_mlp=on_mlp) as cap:
        for batch in batches(windows(token_stream(docs, tokenizer), seq_len, max_tokens), batch_size):
            ids = torch.tensor(batch, dtype=torch.long, device=dev)
            state["ids"] = ids
            state["first"] = (rep.windows + torch.arange(len(batch), device=dev)) * seq_len
            cap.run(ids)
            id_counts += torch.bincount(ids.flatten(), minlength=vocab)
            rep.windows += len(batch)
            rep.tokens += ids.numel()
    if rep.tokens == 0:
        raise Phi1Error("the corpus has no tokens; give a non-empty text or JSONL file")
    strings = [tokenizer.decode([i]) if i < len(tokenizer) else "" for i in range(vocab)]
    special = frozenset({getattr(tokenizer, "eos_token", "<|endoftext|>")})
    classes = [token_class(s, special) for s in strings]
    counts = Counter()
    for i, c in enumerate(id_counts.tolist()):
        if c:
            counts[classes[i]] += c
    rep.class_counts = {c: counts.get(c, 0) for c in CLASSES}
    freq = {c: n / rep.tokens for c, n in rep.class_counts.items() if n}
    for layer in layers:
        rep.per_layer[layer] = _neuron_rows(rankers[layer].top, strings, classes, context, threshold)
        rep.summary[layer] = _summary(rep.per_layer[layer], k, threshold, freq)
    return rep


def _neuron_rows(top: TopK, strings: list[str], classes: list[str], left: int, threshold: float) -> list[dict]:
    values, positions = top.values.cpu().tolist(), top.positions.cpu().tolist()
    contexts, weights = top.contexts.cpu().tolist(), top.weights.cpu().tolist()
    rows = []
    for n in range(len(values)):
        entries = []
        for j, v in enumerate(values[n]):
            if v == float("-inf"):
                break
            ctx = contexts[n][j]
            keep = [i for i, t in enumerate(ctx) if t >= 0]
            center = keep.index(left)
            entries.append({"activation": v, "position": positions[n][j], "token": strings[ctx[left]],
                            "class": classes[ctx[left]], "context": [strings[ctx[i]] for i in keep],
                            "weights": [round(weights[n][j][i], 5) for i in keep], "center": center})
        cls = Counter(e["class"] for e in entries).most_common(1)
        same = Counter(e["token"] for e in entries).most_common(1)
        share = cls[0][1] / len(entries) if entries else 0.0
        rows.append({"neuron": n, "class": cls[0][0] if cls else None, "class_share": share,
                     "same_token_share": same[0][1] / len(entries) if entries else 0.0,
                     "monosemantic": bool(entries) and share >= threshold - 1e-12, "top": entries})
    return rows


def _summary(rows: list[dict], k: int, threshold: float, freq: dict[str, float]) -> dict:
    mono = [r for r in rows if r["monosemantic"]]
    by_class = Counter(r["class"] for r in mono)
    n_full = sum(1 for r in rows if len(r["top"]) == k)
    return {"neurons": len(rows), "monosemantic": len(mono),
            "monosemantic_fraction": len(mono) / len(rows) if rows else 0.0,
            "one_token": sum(1 for r in mono if r["same_token_share"] >= threshold - 1e-12),
            "by_class": dict(by_class.most_common()),
            "chance_fraction": chance_monosemantic(freq, k, threshold) if n_full == len(rows) else None}


# ---- outputs -------------------------------------------------------------------------


def summary_line(rep: NeuronReport, layer: int) -> str:
    s = rep.summary[layer]
    chance = f"; by chance from the corpus's token classes: {s['chance_fraction']:.1%}" \
        if s["chance_fraction"] is not None else ""
    classes = ", ".join(f"{c} {n}" for c, n in s["by_class"].items()) or "none"
    return (f"layer {layer}: {s['monosemantic']} of {s['neurons']} neurons monosemantic "
            f"({s['monosemantic_fraction']:.1%}; one token class covers >= {rep.threshold:.0%} of the top {rep.k}"
            f"{chance}), {s['one_token']} of them on one token alone; by class: {classes}")


def neurons_html(rep: NeuronReport, max_rows: int | None = 256) -> str:
    from phi1.inspect import html as H

    body = [f"<p>{rep.tokens} tokens in {rep.windows} windows. Each row is a neuron; each entry one of its top "
            f"{rep.k} activations, the token outlined, every token shaded by this neuron's activation there "
            "(relative to the neuron's highest). Hover an entry for its activation and corpus position.</p>"]
    for layer in rep.layers:
        rows = rep.per_layer[layer]
        shown = rows if max_rows is None else rows[:max_rows]
        body.append(f"<h2>Layer {layer}</h2><p>{H.esc(summary_line(rep, layer))}</p>")
        if len(shown) < len(rows):
            body.append(f"<p class='muted'>Showing neurons 0-{len(shown) - 1} of {len(rows)}; all are in neurons.json.</p>")
        trs = []
        for r in shown:
            peak = max((e["activation"] for e in r["top"]), default=0.0) or 1.0
            snips = " ".join(H.snippet(e["context"], [w / peak for w in e["weights"]], e["center"],
                                       f"activation {e['activation']:.4f} at token {e['position']}")
                             for e in r["top"])
            mark = "&#10003;" if r["monosemantic"] else ""
            trs.append([str(r["neuron"]), H.esc(f"{r['class']} ({r['class_share']:.0%})"), mark, snips])
        body.append(H.table(["neuron", "top class", "mono", "top activations"], trs, raw=True))
    return H.page(f"MLP neurons: {rep.model}", body)


def write_neurons(rep: NeuronReport, out_dir, max_rows: int | None = 256) -> dict:
    """neurons.json (every neuron) and neurons.html (up to `max_rows` per layer) in `out_dir`."""
    from pathlib import Path

    from phi1.utils.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    paths = {"json": out / "neurons.json", "html": out / "neurons.html"}
    atomic_write_json(paths["json"], rep.as_json(), indent=None)
    atomic_write_text(paths["html"], neurons_html(rep, max_rows))
    return paths
