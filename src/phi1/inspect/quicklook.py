"""A small look inside a model for `phi1 demo`'s report: the attention grid and one layer's neurons.

Computed on a fixed prompt and a short slice of the run's own corpus so the report stays fast
and is the same every time it is rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

# A fixed prompt, so that reports of different runs show the same text.
PROMPT = '''def running_mean(values):
    """Return the running mean of a list of numbers."""
    total = 0.0
    means = []
    for i, v in enumerate(values):
        total += v
        means.append(total / (i + 1))
    return means
'''
NEURON_ROWS = 24


def report_blocks(model_dir: Path, texts: Iterable[str], fig_dir: Path, max_tokens: int = 4096) -> list[tuple]:
    """Doc blocks ("p", text) / ("image", path, alt) / ("table", header, rows) for the report."""
    if not (Path(model_dir) / "config.json").is_file():
        return [("p", "The run has no model yet (no model/config.json), so there is nothing to look inside.")]
    from phi1.inspect.attention import inspect_attention, plot_grid, summary_counts
    from phi1.inspect.corpus import text_documents
    from phi1.inspect.neurons import inspect_neurons, summary_line
    from phi1.model import load_for_inference

    model, tok = load_for_inference(model_dir, device="cpu", dtype="float32")
    att = inspect_attention(model, tok, text_documents([PROMPT]), grid_tokens=48, model_name="the final model")
    png = Path(fig_dir) / "attention_heads.png"
    plot_grid(att, png)
    counts = ", ".join(f"{k} {v}" for k, v in summary_counts(att).items())
    blocks: list[tuple] = [
        ("p", f"Attention of every head on a fixed {att.tokens}-token prompt ({counts}; the labelling rules are in "
              "docs/inspect.md). Full analysis: `phi1 inspect attention --model "
              f"{model_dir} --text FILE --out DIR`."),
        ("image", png, "attention of each head (rows: layers, columns: heads; query down, key across)"),
        ("table", ["layer", "head", "label", "mean distance", "entropy", "previous", "first token", "local"],
         [[r["layer"], r["head"], r["label"] + (" (diffuse)" if r["diffuse"] else ""), f"{r['mean_distance']:.2f}",
           f"{r['entropy']:.3f}", f"{r['previous_mass']:.3f}", f"{r['first_token_mass']:.3f}",
           f"{r['local_mass']:.3f}"] for r in att.heads]),
    ]
    texts = [t for t in texts if t.strip()]
    if not texts:
        blocks.append(("p", "No corpus records to read neuron activations from."))
        return blocks
    neu = inspect_neurons(model, tok, text_documents(texts), layers="middle", k=8, context=6, seq_len=256,
                          max_tokens=max_tokens, model_name="the final model")
    layer = neu.layers[0]
    rows = sorted(neu.per_layer[layer], key=lambda r: -(r["top"][0]["activation"] if r["top"] else 0))
    blocks += [
        ("p", f"MLP neurons over the first {neu.tokens} tokens of the corpus, {summary_line(neu, layer)}. "
              f"The {NEURON_ROWS} neurons with the highest activations, each with its "
              f"top {neu.k} tokens (full pages: `phi1 inspect neurons`)."),
        ("table", ["neuron", "top class (share)", "monosemantic", "top tokens"],
         [[r["neuron"], f"{r['class']} ({r['class_share']:.0%})", "yes" if r["monosemantic"] else "no",
           " ".join(repr(e["token"]) for e in r["top"])] for r in rows[:NEURON_ROWS]]),
    ]
    return blocks
