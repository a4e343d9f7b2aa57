"""Helpers for bench/gpu_check.sh (not a user command).

    python bench/gpu_smoke.py prep OUTDIR               # tokenizer, packed shards, a model dir under OUTDIR/work
    python bench/gpu_smoke.py greedy OUTDIR --device cuda --dtype bf16
                                                        # compiled == eager greedy ids of our model
    python bench/gpu_smoke.py summary OUTDIR            # OUTDIR/summary.md from OUTDIR/results.tsv

Everything is written under OUTDIR. results.tsv: one line per check, tab-separated
`check  status  number  target`, appended by gpu_check.sh.
"""

from __future__ import annotations

import argparse
import re
import sys
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def prep(out: Path, preset: str) -> int:
    from phi1.data.pack import pack
    from phi1.model.create import init_model_dir
    from phi1.tokenizer import train_tokenizer

    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    src = [STDLIB / "json", STDLIB / "email"]
    train_tokenizer(src, vocab_size=1024, out_dir=work / "tok")
    pack(work / "tok", src, work / "shards", workers=1, val_fraction=0.1)
    init_model_dir(preset, work / "tok", work / "model", seed=0, max_position_embeddings=512)
    print(f"prepared {work}")
    return 0


def greedy(out: Path, device: str, dtype: str, new: int, batch: int) -> int:
    """Our model's greedy ids, eager and with the compiled decode step, must agree token for token."""
    import torch

    from phi1.infer.decode import DecodeStep
    from phi1.infer.generate import SamplingParams, generate_ids
    from phi1.model import load_for_inference

    model, tok = load_for_inference(out / "work" / "model", device, dtype)
    text = (STDLIB / "json" / "decoder.py").read_text()
    ids = [i for i in tok.encode(text) if i != tok.eos_id]
    prompts = [ids[r * 31: r * 31 + 24] for r in range(batch)]
    params = SamplingParams(max_new_tokens=new)
    eager = [i for i, _ in generate_ids(model, prompts, params, None, compile=False)]
    if model.lm_head.weight.device.type == "cuda":
        compiled = [i for i, _ in generate_ids(model, prompts, params, None, compile=True)]
        how = "CUDA graphs (reduce-overhead)"
    else:  # CPU dry run: the same compiled step through dynamo, with a cheap backend (no C++ build)
        model._phi1_decode_step = DecodeStep(model, mode="compiled", backend="aot_eager")
        compiled = [i for i, _ in generate_ids(model, prompts, params, None)]
        how = "torch.compile backend aot_eager (CPU)"
    del torch
    same = eager == compiled
    print(f"greedy batch {batch}, {new} new tokens, {device} {dtype}, compiled via {how}: "
          f"{'same ids' if same else 'DIFFERENT ids'}")
    if not same:
        for r, (a, b) in enumerate(zip(eager, compiled)):
            if a != b:
                k = next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)
                print(f"  row {r}: first difference at token {k}: eager {a[k:k + 8]} compiled {b[k:k + 8]}")
        return 1
    return 0


ROWS = [  # (check key written by gpu_check.sh, what it shows)
    ("env", "environment (env.txt)"),
    ("smoke-greedy", "smoke: compiled == eager greedy ids"),
    ("smoke-train-fp16", "smoke: phi1 train fp16 (eval + checkpoint)"),
    ("smoke-train-bf16", "smoke: phi1 train bf16 (eval + checkpoint)"),
    ("train-phi-1", "train phi-1 ours / transformers compiled"),
    ("train-phi-1-small", "train phi-1-small ours / transformers compiled"),
    ("decode-b1", "decode phi-1 batch 1"),
    ("decode-b32", "decode phi-1 batch 32"),
]


def summary(out: Path, wall: int | None = None) -> int:
    got: dict[str, list[str]] = {}
    tsv = out / "results.tsv"
    for line in (tsv.read_text().splitlines() if tsv.exists() else []):
        parts = line.split("\t")
        if parts and parts[0]:
            got[parts[0]] = (parts + ["", "", ""])[1:4]
    env = (out / "env.txt").read_text(errors="replace") if (out / "env.txt").exists() else ""
    mode = re.search(r"^mode: (.*)$", env, re.M)
    gpu = re.search(r"^gpu (.*)$", env, re.M)
    head = f"mode {mode.group(1) if mode else '?'}, {gpu.group(1) if gpu else 'no GPU'}"
    if wall is not None:
        head += f", wall time {wall} s"
    lines = ["# GPU check summary", "", head + "; PASS/MISS against the target, FAIL = the step failed, "
             "INFO = reported only", "", "| check | status | number | target |", "|---|---|---|---|"]
    bad = 0
    for key, title in ROWS:
        status, number, target = got.pop(key, ["FAIL", "not run", ""])
        bad += status not in ("PASS", "INFO")
        lines.append(f"| {title} | {status} | {number} | {target} |")
    for key, (status, number, target) in got.items():
        lines.append(f"| {key} | {status} | {number} | {target} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if bad == 0 else 1


# ---- judging the bench scripts' output (used by gpu_check.sh) ----------------------------------------

PHI1_WEIGHT_BYTES = 2.84e9  # phi-1's weights in bf16: what one decode step must read at batch 1
HBM_BYTES_S = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
               ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12)]  # datasheet HBM bandwidth, first match wins


def hbm_bandwidth() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((bw for key, bw in HBM_BYTES_S if key.lower() in name.lower()), None)


def record(out: Path, key: str, status: str, number: str, target: str) -> None:
    with open(out / "results.tsv", "a") as f:
        f.write(f"{key}\t{status}\t{number}\t{target}\n")


def judge_train(out: Path, key: str, log: Path, rc: int, target: float, dry: bool) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    want = f"phi1 >= {target}x transformers compiled (tokens/s)"
    ratio = re.search(r"ratio phi1/transformers tokens/s: ([\d.]+)x", text)
    row = re.search(r"^phi1\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+(\S+)\s+(\S+)", text, re.M)
    if rc != 0 or not ratio or not row:
        why = "timed out" if rc in (124, 137) else f"rc={rc}" if rc else "no ratio in output"
        record(out, key, "FAIL", f"{why} ({log.name})", want)
        return 0
    r = float(ratio.group(1))
    number = (f"{r:.2f}x; phi1 {float(row.group(2)):,.0f} tok/s, {row.group(3)} TFLOP/s, MFU {row.group(4)}, "
              f"peak {row.group(5)} GB")
    if "compile=False" in text:
        number += "; both eager (compile off)"
    record(out, key, "INFO" if dry else "PASS" if r >= target else "MISS", number, want + (" (GPU only)" if dry else ""))
    return 0


def judge_decode(out: Path, log: Path, rc: int, dry: bool) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    rows = {}
    for m in re.finditer(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+|-)\s+([\d.]+|-)\s+(\S+)\s+(\S+)\s+([\d.]+)\s+(\S+)\s*$",
                         text, re.M):
        rows[int(m.group(1))] = m.groups()
    gpu, bw = hbm_bandwidth()
    limit = bw / PHI1_WEIGHT_BYTES if bw else None
    t1 = ("ours >= 75% of the weights-read limit (HBM / 2.84 GB)"
          + (f": {0.75 * limit:.0f} tok/s on {gpu}" if limit else " (GPU only)" if dry else f" ({gpu}: bandwidth unknown)"))
    t32 = "reported: ours / transformers static+compiled"
    for b, key, target in ((1, "decode-b1", t1), (32, "decode-b32", t32)):
        if rc != 0 or b not in rows:
            why = "timed out" if rc in (124, 137) else f"rc={rc}" if rc else f"no batch {b} row"
            record(out, key, "FAIL", f"{why} ({log.name})", target)
            continue
        _, ours, hf, st, vs_hf, vs_st, gbs, same = rows[b]
        number = f"ours {float(ours):,.1f} tok/s; {vs_hf} vs transformers, {vs_st} vs static+compiled; same ids: {same}"
        if b == 1 and limit:
            frac = float(ours) / limit
            number += f"; {frac:.0%} of limit {limit:.0f} tok/s"
            status = "INFO" if dry else "PASS" if frac >= 0.75 else "MISS"
        else:
            status = "INFO" if (dry or b == 32) else "MISS"  # batch 1 on a GPU whose bandwidth is unknown
        record(out, key, status, number, target)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["prep", "greedy", "summary", "judge-train", "judge-decode"])
    ap.add_argument("out", type=Path)
    ap.add_argument("rest", nargs="*", help="judge-train: KEY LOG RC TARGET DRY; judge-decode: LOG RC DRY")
    ap.add_argument("--wall", type=int, default=None)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args(argv)
    if a.what == "prep":
        return prep(a.out, a.preset)
    if a.what == "greedy":
        return greedy(a.out, a.device, a.dtype, a.new_tokens, a.batch)
    if a.what == "judge-train":
        key, log, rc, target, dry = a.rest
        return judge_train(a.out, key, Path(log), int(rc), float(target), dry == "1")
    if a.what == "judge-decode":
        log, rc, dry = a.rest
        return judge_decode(a.out, Path(log), int(rc), dry == "1")
    return summary(a.out, a.wall)


if __name__ == "__main__":
    sys.exit(main())
