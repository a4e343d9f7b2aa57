"""`phi1 data pack` throughput against the tokenizers library's own `encode_batch_fast`, and pack's peak
memory on one huge document.

    python bench/pack_bench.py [--mb 20] [--doc-mb 50] [--rounds 3] [--workers 1,2] [--tokenizer DIR]

Corpus: this machine's standard library `*.py` files, sorted by path, up to `--mb` MB of text, written
as one JSONL file. The same tokenizer (trained here on four stdlib packages, vocab 8192, unless
`--tokenizer`) and the same texts go to, side by side in one run:

- ours: `phi1.data.pack.pack` on the JSONL file: it reads and parses the file, hashes each document
  for the split, encodes, and writes the shards. Once per `--workers` value (1 is the default).
- theirs: `Tokenizer.encode_batch_fast(texts, add_special_tokens=False)` on the texts already in
  memory, with the library's default thread pool, nothing read and nothing written: in batches of
  ~1 MB (pack's chunk size) and in one call over all texts. The ratio is against the faster of the two.
- and once, for context: `Tokenizer.encode_batch` (with offsets), which pack called before.

Rounds alternate ours and theirs, so a noisy neighbour hurts both alike, and the best round of each
counts. MB/s are MB of document text (UTF-8) per second; the ratio is ours / theirs. CPU seconds (all
threads and worker processes, best round) are shown too: on a shared machine the wall clock depends on
what else runs, the CPU time much less. The ids pack wrote are checked against theirs (plus the EOS after
each document).

Then one `--doc-mb` MB document (stdlib files joined into one JSONL record) is packed in a subprocess,
and its peak RSS is shown next to that of packing a one-line document (interpreter and libraries).
The result also goes to `--json` (default bench/results/pack_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PHI1_NO_PROGRESS", "1")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_texts(limit_bytes: float) -> list[str]:
    """Non-empty stdlib *.py files, sorted by path, up to `limit_bytes` of UTF-8 (all of them if fewer)."""
    texts, n = [], 0
    for f in sorted(STDLIB.rglob("*.py")):
        if "site-packages" in f.parts:
            continue
        try:
            t = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if t:
            texts.append(t)
            n += len(t.encode())
            if n >= limit_bytes:
                break
    return texts


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (pack's worker processes), user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_of_pack(tokenizer: Path, inp: Path, out: Path) -> dict:
    """Pack `inp` in a fresh interpreter; its own peak RSS (MB), seconds and counts.

    The peak is the child's VmHWM: ru_maxrss (getrusage, wait4, /usr/bin/time) would also count this
    process's RSS at the fork, which holds the whole corpus and its encodings.
    """
    script = textwrap.dedent(f"""
        import json, resource
        from phi1.data.pack import pack
        m = pack({str(tokenizer)!r}, [{str(inp)!r}], {str(out)!r}, overwrite=True)
        try:
            kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        except OSError:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"seconds": m["seconds"], "documents": m["splits"]["train"]["documents"],
                          "tokens": m["splits"]["train"]["tokens"], "peak_rss_mb": kb / 1024}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pack of {inp} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=20.0, help="MB of stdlib code for the throughput runs")
    ap.add_argument("--doc-mb", type=float, default=50.0, help="size of the single document for peak RSS (0: skip)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and theirs (best counts)")
    ap.add_argument("--workers", default="1", help="pack --workers values to time, comma-separated (e.g. 1,2)")
    ap.add_argument("--skip-encode-batch", action="store_true", help="skip the encode_batch (with offsets) run")
    ap.add_argument("--tokenizer", help="tokenizer directory (default: train one on a few stdlib packages)")
    ap.add_argument("--work", help="work directory (default: a temp dir)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "pack_bench.json"),
                    help="where the JSON result goes")
    args = ap.parse_args(argv)
    if os.environ.pop("TOKENIZERS_PARALLELISM", None) is not None:
        print("# TOKENIZERS_PARALLELISM unset for this run: both sides use the library's default threads")

    import tokenizers

    from phi1.data.pack import pack
    from phi1.data.shards import open_split
    from phi1.tokenizer import load_tokenizer, train_tokenizer

    work = Path(args.work or tempfile.mkdtemp(prefix="phi1-pack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.tokenizer:
        tok_dir = Path(args.tokenizer)
    else:
        tok_dir = work / "tok"
        train_tokenizer([STDLIB / p for p in ("json", "email", "collections", "asyncio")], vocab_size=8192,
                        out_dir=tok_dir)
    tok = load_tokenizer(tok_dir)
    backend = tok.backend

    texts = stdlib_texts(args.mb * 1e6)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    docs = work / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# pack vs tokenizers {tokenizers.__version__} on {platform.processor() or platform.machine()}, "
          f"{cores} cores, Python {platform.python_version()}")
    print(f"# {mb:.1f} MB of stdlib code in {len(texts)} documents ({docs.stat().st_size / 1e6:.1f} MB of JSONL); "
          f"tokenizer {tok_dir} (vocab {len(tok)}); best of {args.rounds} alternating rounds")

    batches, cur, size = [], [], 0
    for t in texts:
        cur.append(t)
        size += len(t)
        if size >= 1 << 20:
            batches.append(cur)
            cur, size = [], 0
    batches += [cur] if cur else []
    fast = backend.encode_batch_fast

    def batched():
        for b in batches:
            fast(b, add_special_tokens=False)  # dropped at once, as pack drops a chunk once it is written

    theirs = {"encode_batch_fast, 1 MB batches": batched,
              "encode_batch_fast, one call": lambda: fast(texts, add_special_tokens=False)}
    runs = {f"pack workers={w}": (lambda w=w: pack(tok_dir, [docs], work / f"pack-w{w}", workers=w, overwrite=True))
            for w in worker_counts}
    runs.update(theirs)
    best = dict.fromkeys(runs, float("inf"))
    best_cpu = dict.fromkeys(runs, float("inf"))
    for _ in range(max(1, args.rounds)):
        for name, run in runs.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
            best_cpu[name] = min(best_cpu[name], cpu_seconds() - c0)
    # Untimed: their ids (+ EOS per document) against what each pack wrote.
    theirs_ids = np.concatenate([np.fromiter((i for e in fast(b, add_special_tokens=False)
                                              for i in [*e.ids, tok.eos_id]), dtype=np.uint32) for b in batches])
    same = all(np.array_equal(np.concatenate(open_split(work / f"pack-w{w}", "train").arrays), theirs_ids)
               for w in worker_counts)
    if not args.skip_encode_batch:
        c0, t0 = cpu_seconds(), time.perf_counter()
        for b in batches:
            backend.encode_batch(b, add_special_tokens=False)
        best["encode_batch, 1 MB batches (context)"] = time.perf_counter() - t0
        best_cpu["encode_batch, 1 MB batches (context)"] = cpu_seconds() - c0

    ref = mb / min(best[name] for name in theirs)
    ref_cpu = min(best_cpu[name] for name in theirs)
    rows = []
    print(f"{'':<40}{'seconds':>9}{'MB/s':>8}{'vs fast':>9}{'CPU s':>8}{'CPU vs fast':>13}")
    for name, s in best.items():
        c = best_cpu[name]
        rows.append({"what": name, "seconds": round(s, 2), "mb_per_s": round(mb / s, 3),
                     "ratio_to_encode_batch_fast": round(mb / s / ref, 3), "cpu_seconds": round(c, 2),
                     "cpu_ratio_to_encode_batch_fast": round(ref_cpu / c, 3)})
        print(f"{name:<40}{s:>9.2f}{mb / s:>8.2f}{mb / s / ref:>8.2f}x{c:>8.2f}{ref_cpu / c:>12.2f}x")
    print(f"ids identical to encode_batch_fast + EOS per document: {'yes' if same else 'NO'}")
    result = {"machine": {"cores": cores, "platform": platform.platform(), "python": platform.python_version(),
                          "tokenizers": tokenizers.__version__},
              "corpus_mb": round(mb, 2), "documents": len(texts), "tokens": int(len(theirs_ids)) - len(texts),
              "vocab": len(tok), "rounds": args.rounds, "throughput": rows, "ids_identical": same}

    if args.doc_mb > 0:
        files = [t.strip() for t in stdlib_texts(args.doc_mb * 1e6) if t.strip()]
        parts, n, i = [], 0, 0
        while n < args.doc_mb * 1e6:
            parts.append(files[i % len(files)] + "\n")
            n += len(parts[-1].encode())
            i += 1
        big = work / "one-document.jsonl"
        big.write_text(json.dumps({"id": "one", "text": "".join(parts)}) + "\n")
        del parts
        tiny = work / "tiny.jsonl"
        tiny.write_text(json.dumps({"id": "tiny", "text": "x = 1\n"}) + "\n")
        base = peak_rss_of_pack(tok_dir, tiny, work / "pack-tiny")
        one = peak_rss_of_pack(tok_dir, big, work / "pack-one")
        doc_mb = n / 1e6
        print(f"one {doc_mb:.1f} MB document: peak RSS {one['peak_rss_mb']:.0f} MB (a one-line document: "
              f"{base['peak_rss_mb']:.0f} MB), {one['tokens']} tokens in {one['seconds']:.1f} s "
              f"({doc_mb / one['seconds']:.2f} MB/s)")
        result["one_document"] = {"mb": round(doc_mb, 1), "peak_rss_mb": round(one["peak_rss_mb"]),
                                  "baseline_peak_rss_mb": round(base["peak_rss_mb"]), "tokens": one["tokens"],
                                  "seconds": round(one["seconds"], 2), "mb_per_s": round(doc_mb / one["seconds"], 3)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"# written {args.json}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
