"""Attention heads: patterns, mean attention distance, entropy, a label per head, and what
long-range heads attend to over a corpus.

Statistics are taken over query positions i >= window + 1 of every window (so that "local",
"previous token" and "first token" are different keys) and averaged over all such queries:

- previous-token mass: p(i, i-1); first-token mass: p(i, 0); local mass: sum of p(i, j) for
  i - window <= j <= i;
- mean attention distance: sum_j p(i, j) (i - j);
- entropy: -sum_j p(i, j) ln p(i, j) in nats, and normalised by ln(i + 1), the entropy of
  uniform attention over the i + 1 visible keys (1.0 = uniform).

Labels (`HeadRules`, first rule that holds): previous-token, first-token/sink, local,
long-range/semantic. A long-range head whose normalised entropy is >= `diffuse` spreads its
attention nearly uniformly (typical of untrained heads) and is flagged `diffuse`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from phi1.errors import ConfigError, Phi1Error
from phi1.inspect.corpus import batches, token_stream, windows
from phi1.inspect.hooks import Capture, adapter_for, model_device, resolve_layers

LABELS = ("previous-token", "first-token/sink", "local", "long-range/semantic")


@dataclass(frozen=True)
class HeadRules:
    """Thresholds of the head labels (docs/inspect.md)."""

    window: int = 3          # "within a few tokens": keys i-window .. i
    previous: float = 0.5    # mean p(i, i-1) >= this: previous-token
    sink: float = 0.5        # mean p(i, 0) >= this: first-token/sink
    local: float = 0.7       # mean mass within the window >= this: local
    diffuse: float = 0.9     # a long-range head with normalised entropy >= this is flagged diffuse

    def validate(self) -> "HeadRules":
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"window: {self.window!r} is not allowed; use an integer >= 1")
        for name in ("previous", "sink", "local", "diffuse"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"{name}: {v!r} is not allowed; use a fraction in (0, 1]")
        return self

    def label(self, prev: float, sink: float, local: float) -> str:
        if prev >= self.previous:
            return LABELS[0]
        if sink >= self.sink:
            return LABELS[1]
        if local >= self.local:
            return LABELS[2]
        return LABELS[3]


@dataclass
class AttentionReport:
    model: str
    layers: list[int]
    n_heads: int
    rules: HeadRules
    windows: int = 0
    tokens: int = 0
    heads: list[dict] = field(default_factory=list)
    grid: dict[int, torch.Tensor] = field(default_factory=dict)   # layer -> (H, g, g) of the first window
    grid_tokens: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"model": self.model, "layers": self.layers, "heads_per_layer": self.n_heads,
                "windows": self.windows, "tokens": self.tokens, "rules": asdict(self.rules),
                "labels": list(LABELS), "grid_tokens": self.grid_tokens, "heads": self.heads}


class _Accumulator:
    """Per-head sums over queries, and attention mass received per key token for long-range reading."""

    STATS = ("prev", "sink", "local", "distance", "entropy", "norm_entropy")

    def __init__(self, layers: list[int], n_heads: int, vocab: int, rules: HeadRules, device):
        self.index = {layer: i for i, layer in enumerate(layers)}
        self.rules = rules
        L, H = len(layers), n_heads
        self.sums = {k: torch.zeros(L, H, dtype=torch.float64, device=device) for k in self.STATS}
        self.queries = 0
        self.received = torch.zeros(L, H, vocab, dtype=torch.float32, device=device)
        self.pairs = torch.zeros(vocab, dtype=torch.float64, device=device)
        self.ids: torch.Tensor | None = None

    def start_batch(self, ids: torch.Tensor) -> None:
        """Before each batch: count, per key token, the (query, key) pairs the long-range tally reads."""
        self.ids = ids
        B, T = ids.shape
        w = self.rules.window
        q0 = w + 1
        self.queries += B * max(0, T - q0)
        per_key = (T - 1 - w - torch.arange(T, device=ids.device)).clamp(min=0).double()   # (T,) queries i > j + w
        per_key[0] = 0  # key 0 is the sink, not content
        self.pairs.index_add_(0, ids.reshape(-1), per_key.repeat(B))

    def add(self, layer: int, probs: torch.Tensor) -> None:
        B, H, T, _ = probs.shape
        li, w = self.index[layer], self.rules.window
        q0 = w + 1
        dev = probs.device
        if T > q0:
            P = probs[:, :, q0:, :]                                               # (B, H, Q, T)
            qpos = torch.arange(q0, T, device=dev)
            kpos = torch.arange(T, device=dev)
            rel = qpos[:, None] - kpos[None, :]                                   # (Q, T) i - j
            s = self.sums
            s["prev"][li] += P.gather(-1, (qpos - 1).view(1, 1, -1, 1).expand(B, H, -1, 1)).sum((0, 2, 3)).double()
            s["sink"][li] += P[..., 0].sum((0, 2)).double()
            s["local"][li] += (P * ((rel >= 0) & (rel <= w))).sum((0, 2, 3)).double()
            s["distance"][li] += (P * rel.clamp(min=0)).sum((0, 2, 3)).double()
            ent = -torch.special.xlogy(P, P).sum(-1)                              # (B, H, Q)
            s["entropy"][li] += ent.sum((0, 2)).double()
            s["norm_entropy"][li] += (ent / torch.log(qpos + 1.0)).sum((0, 2)).double()
        far = (torch.arange(T, device=dev)[:, None] - torch.arange(T, device=dev)[None, :]) > w  # (T, T) i - j > w
        far[:, 0] = False
        mass = (probs * far).sum(2)                                               # (B, H, T) received per key
        idx = self.ids.reshape(1, -1).expand(H, -1)
        self.received[li].scatter_add_(1, idx, mass.permute(1, 0, 2).reshape(H, -1))


def inspect_attention(model, tokenizer, docs, *, layers=None, seq_len: int = 256, batch_size: int = 4,
                      max_tokens: int | None = None, grid_tokens: int = 32, rules: HeadRules | None = None,
                      top: int = 10, model_name: str = "") -> AttentionReport:
    """Stream `docs` (see phi1.inspect.corpus) through the model; one report over every head of `layers`."""
    rules = (rules or HeadRules()).validate()
    adapter = adapter_for(model)
    n_layers = len(adapter.layers(model))
    layers = resolve_layers(layers, n_layers)
    ctx = model.config.max_position_embeddings
    if seq_len < rules.window + 2:
        raise ConfigError(f"--seq-len {seq_len}: too short; head labels need at least {rules.window + 2} tokens")
    seq_len = min(seq_len, ctx)
    H = adapter.n_heads(model)
    dev = model_device(model)
    vocab = max(len(tokenizer), model.config.vocab_size)
    acc = _Accumulator(layers, H, vocab, rules, dev)
    rep = AttentionReport(model=model_name, layers=layers, n_heads=H, rules=rules)

    def on_attention(layer: int, probs: torch.Tensor) -> None:
        acc.add(layer, probs)
        if layer not in rep.grid:
            rep.grid[layer] = probs[0, :, :grid_tokens, :grid_tokens].cpu()

    with Capture(model, attention_layers=layers, on_attention=on_attention) as cap:
        for batch in batches(windows(token_stream(docs, tokenizer), seq_len, max_tokens), batch_size):
            ids = torch.tensor(batch, dtype=torch.long, device=dev)
            if not rep.grid_tokens:
                rep.grid_tokens = [tokenizer.decode([t]) for t in batch[0][:grid_tokens]]
            acc.start_batch(ids)
            cap.run(ids)
            rep.windows += len(batch)
            rep.tokens += ids.numel()
    if rep.tokens == 0:
        raise Phi1Error("the text has no tokens; give a non-empty prompt or file")
    if acc.queries == 0:
        raise Phi1Error(f"the text has {rep.tokens} tokens; head statistics need at least {rules.window + 2} "
                        "(in one window)")
    rep.heads = _heads(acc, layers, H, rules, tokenizer, top)
    return rep


def _heads(acc: _Accumulator, layers: list[int], H: int, rules: HeadRules, tokenizer, top: int) -> list[dict]:
    means = {k: (v / acc.queries).cpu().tolist() for k, v in acc.sums.items()}
    pairs = acc.pairs.cpu()
    heads = []
    for li, layer in enumerate(layers):
        for h in range(H):
            m = {k: means[k][li][h] for k in acc.STATS}
            label = rules.label(m["prev"], m["sink"], m["local"])
            row = {"layer": layer, "head": h, "label": label,
                   "diffuse": label == LABELS[3] and m["norm_entropy"] >= rules.diffuse,
                   "mean_distance": m["distance"], "entropy": m["entropy"], "normalized_entropy": m["norm_entropy"],
                   "previous_mass": m["prev"], "first_token_mass": m["sink"], "local_mass": m["local"]}
            if label == LABELS[3]:
                row["top_tokens"] = _top_tokens(acc.received[li, h].double().cpu(), pairs, tokenizer, top)
            heads.append(row)
    return heads


def _top_tokens(received: torch.Tensor, pairs: torch.Tensor, tokenizer, top: int) -> list[dict]:
    """The key tokens that received the most long-range attention (distance > window, not the first token)."""
    total, total_pairs = float(received.sum()), float(pairs.sum())
    if total <= 0:
        return []
    base = total / total_pairs
    vals, idx = received.topk(min(top, int((received > 0).sum())))
    out = []
    for v, i in zip(vals.tolist(), idx.tolist()):
        mean_w = v / float(pairs[i]) if pairs[i] > 0 else 0.0
        out.append({"token": tokenizer.decode([i]), "id": i, "share": v / total,
                    "mean_weight": mean_w, "lift": mean_w / base if base > 0 else 0.0})
    return out


# ---- outputs -------------------------------------------------------------------------


SHORT = {LABELS[0]: "previous", LABELS[1]: "sink", LABELS[2]: "local", LABELS[3]: "long-range"}


def _tick(token: str) -> str:
    t = token.replace("\n", "\u21b5").replace("\t", "\u2192").replace(" ", "\u00b7")
    return t if len(t) <= 7 else t[:6] + "\u2026"


def plot_grid(rep: AttentionReport, path) -> None:
    """Rows = layers, columns = heads; each cell the first window's attention (query down, key across)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    from phi1.utils.io import atomic_write

    rows, cols = len(rep.layers), rep.n_heads
    cell = min(3.4, 60.0 / max(rows, cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1.2, cell * rows + 0.6), squeeze=False,
                             layout="constrained")
    by_key = {(r["layer"], r["head"]): r for r in rep.heads}
    ticks = [_tick(t) for t in rep.grid_tokens] if rows * cols <= 16 and len(rep.grid_tokens) <= 48 else None
    colors = {LABELS[0]: "#c0392b", LABELS[1]: "#8e44ad", LABELS[2]: "#d35400", LABELS[3]: "#1f618d"}
    size = max(5.0, min(10.0, cell * 3.0))
    im = None
    for r, layer in enumerate(rep.layers):
        for h in range(cols):
            ax = axes[r][h]
            im = ax.imshow(rep.grid[layer][h].numpy(), cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=1),
                           interpolation="nearest")
            info = by_key[(layer, h)]
            tag = SHORT[info["label"]] + (" (diffuse)" if info["diffuse"] else "")
            ax.set_title(f"L{layer} H{h}: {tag}\ndist {info['mean_distance']:.1f}, entropy {info['entropy']:.2f}",
                         fontsize=size, color=colors[info["label"]])
            ax.set_xticks([])
            ax.set_yticks([])
            if ticks and h == 0:
                ax.set_yticks(range(len(ticks)), ticks, fontsize=5)
            if ticks and r == rows - 1:
                ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=5)
    fig.suptitle(f"{rep.model}: attention over the first {len(rep.grid_tokens)} tokens "
                 "(rows: queries, columns: keys)", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight")
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100 if rows * cols <= 64 else 72)
    plt.close(fig)


def heads_markdown(rep: AttentionReport) -> str:
    lines = [f"# Attention heads of {rep.model}", "",
             f"{rep.tokens} tokens in {rep.windows} windows; labels by the rules in docs/inspect.md "
             f"(window {rep.rules.window}, previous >= {rep.rules.previous}, first token >= {rep.rules.sink}, "
             f"local >= {rep.rules.local}).", "",
             "| layer | head | label | mean distance | entropy (nats) | normalised entropy | previous | first | local |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rep.heads:
        tag = r["label"] + (" (diffuse)" if r["diffuse"] else "")
        lines.append(f"| {r['layer']} | {r['head']} | {tag} | {r['mean_distance']:.2f} | {r['entropy']:.3f} | "
                     f"{r['normalized_entropy']:.3f} | {r['previous_mass']:.3f} | {r['first_token_mass']:.3f} | "
                     f"{r['local_mass']:.3f} |")
    far = [r for r in rep.heads if r.get("top_tokens")]
    if far:
        lines += ["", "## What the long-range heads attend to", ""]
        for r in far:
            toks = ", ".join(f"{t['token']!r} ({t['share']:.1%})" for t in r["top_tokens"])
            lines.append(f"- L{r['layer']} H{r['head']}: {toks}")
    return "\n".join(lines) + "\n"


def summary_counts(rep: AttentionReport) -> dict[str, int]:
    counts = {k: 0 for k in LABELS}
    for r in rep.heads:
        counts[r["label"]] += 1
    return counts


def attention_html(rep: AttentionReport, png_path) -> str:
    from phi1.inspect import html as H

    counts = summary_counts(rep)
    body = [f"<p>{H.esc(rep.tokens)} tokens in {H.esc(rep.windows)} windows; layers {H.esc(rep.layers)}. "
            + ", ".join(f"{H.esc(k)}: {v}" for k, v in counts.items()) + "</p>",
            H.png(png_path, "attention of the first window, one cell per head (rows: queries, columns: keys)")]
    rows = []
    for r in rep.heads:
        toks = " ".join(H.snippet([t["token"]], [min(1.0, t["share"] * 5)], -1, f"{t['share']:.1%} of the head's "
                                  f"long-range mass, lift {t['lift']:.2f}") for t in r.get("top_tokens", []))
        rows.append([H.esc(f"{r['layer']}"), H.esc(r["head"]),
                     H.esc(r["label"] + (" (diffuse)" if r["diffuse"] else "")),
                     f"{r['mean_distance']:.2f}", f"{r['entropy']:.3f}", f"{r['normalized_entropy']:.3f}",
                     f"{r['previous_mass']:.3f}", f"{r['first_token_mass']:.3f}", f"{r['local_mass']:.3f}", toks])
    body.append(H.table(["layer", "head", "label", "mean distance", "entropy", "normalised entropy", "previous",
                         "first token", "local", "most-attended tokens (long-range heads)"], rows, raw=True))
    body.append(f"<p class='muted'>Rules: window {rep.rules.window}; previous-token if mean p(i, i-1) &ge; "
                f"{rep.rules.previous}; first-token/sink if mean p(i, 0) &ge; {rep.rules.sink}; local if the mass "
                f"within {rep.rules.window} tokens &ge; {rep.rules.local}; otherwise long-range/semantic "
                f"(diffuse when normalised entropy &ge; {rep.rules.diffuse}). See docs/inspect.md.</p>")
    return H.page(f"Attention heads: {rep.model}", body)


def write_attention(rep: AttentionReport, out_dir) -> dict[str, Path]:
    """attention.png, heads.json, heads.md and attention.html in `out_dir`."""
    from phi1.utils.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    paths = {"png": out / "attention.png", "json": out / "heads.json", "md": out / "heads.md",
             "html": out / "attention.html"}
    plot_grid(rep, paths["png"])
    atomic_write_json(paths["json"], rep.as_json())
    atomic_write_text(paths["md"], heads_markdown(rep))
    atomic_write_text(paths["html"], attention_html(rep, paths["png"]))
    return paths
