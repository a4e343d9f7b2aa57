"""How often each training window is seen when several sources are mixed by weight.

    python bench/mix_repeats.py [--windows 2000,500] [--weights 0.8,0.2] [--passes 7.6] [--seq-len 16]

Builds one token-shard directory per source (window w of a source holds the id w, so a window's
identity is visible in the batch itself), samples `--passes` passes over the lowest-weight source
through `phi1.data.loader.WindowSampler` (the trainer's own addressing, one global sample index at
a time), and prints, per source, the share of samples it got and the min / max / mean number of
times one of its windows was seen. The paper's setting is a 20%-weight source seen ~7.6 times.
Concatenating the sources instead would show every window `passes` times (rounded).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from phi1.data.loader import Source, WindowSampler
from phi1.data.shards import MANIFEST, MANIFEST_FORMAT, write_shard


def make_source(root: Path, windows: int, seq_len: int, offset: int) -> Path:
    """A shard dir whose window w (seq_len tokens plus the shared one) is filled with id offset + w."""
    root.mkdir(parents=True)
    ids = np.repeat(np.arange(offset, offset + windows, dtype=np.uint32), seq_len)
    ids = np.append(ids, np.uint32(offset + windows - 1))  # the last window's one extra target
    entry = write_shard(root / "train-0.bin", ids)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "tokenizer": {"fingerprint": "bench", "vocab_size": 1 << 20},
                "splits": {"train": {"documents": 1, "tokens": int(len(ids)),
                                     "shards": [{"file": "train-0.bin", "tokens": int(len(ids)), **entry}]}}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def measure(windows: list[int], weights: list[float], passes: float, seq_len: int, seed: int = 0) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        offsets = np.cumsum([0] + windows[:-1])
        dirs = [make_source(Path(tmp) / f"s{i}", n, seq_len, int(o)) for i, (n, o) in enumerate(zip(windows, offsets))]
        sampler = WindowSampler([Source(str(d), w) for d, w in zip(dirs, weights)], "train", seq_len, seed)
        share = np.array(weights) / sum(weights)
        low = int(np.argmin(np.array(windows) / share))  # the source that is cycled fastest
        total = int(round(passes * windows[low] / share[low]))
        seen = np.zeros(sum(windows), dtype=np.int64)
        for g in range(total):
            seen[int(sampler.sample(g)[0])] += 1
    out = []
    for i, (n, o) in enumerate(zip(windows, offsets)):
        s = seen[o:o + n]
        out.append({"source": i, "weight": float(share[i]), "windows": n, "samples": int(s.sum()),
                    "share": round(float(s.sum()) / total, 4), "min": int(s.min()), "max": int(s.max()),
                    "mean": round(float(s.mean()), 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="2000,500")
    ap.add_argument("--weights", default="0.8,0.2")
    ap.add_argument("--passes", type=float, default=7.6)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = measure([int(x) for x in a.windows.split(",")], [float(x) for x in a.weights.split(",")], a.passes,
                   a.seq_len, a.seed)
    print("| source | weight | windows | samples | share | seen min | seen max | seen mean |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['weight']:.2f} | {r['windows']} | {r['samples']} | {r['share']:.4f} | "
              f"{r['min']} | {r['max']} | {r['mean']} |")


if __name__ == "__main__":
    main()
