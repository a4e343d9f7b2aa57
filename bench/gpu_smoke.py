"""Helpers for bench/gpu_check.sh (not a user command). Everything is written under OUTDIR.

    python bench/gpu_smoke.py prep OUTDIR --preset P     # tokenizer, packed shards, model dirs under OUTDIR/work
    python bench/gpu_smoke.py greedy OUTDIR ...          # compiled == eager greedy ids of our model
    python bench/gpu_smoke.py parity OUTDIR ...          # fp32 vs fp16 vs bf16 loss over 20 real training steps
    python bench/gpu_smoke.py judge KIND OUTDIR ...      # reads a bench script's output on stdin, row by row
    python bench/gpu_smoke.py memory OUTDIR RUN_DIR      # peak memory, headroom, checkpoint save (metrics.jsonl)
    python bench/gpu_smoke.py ckpt-load OUTDIR CKPT      # checkpoint load time (model + optimizer state)
    python bench/gpu_smoke.py recompiles OUTDIR          # recompiles of phi1's code in every step's log
    python bench/gpu_smoke.py summary OUTDIR             # OUTDIR/summary.md from OUTDIR/results.tsv

results.tsv: one line per row, tab-separated `key  status  number  target`, appended the moment a
figure exists (the judges read the bench scripts' `result` lines as they are printed), so a step that
times out, or a device call that is cut off, loses only the rows after it. Status: PASS / MISS (the
target is not met) / FAIL (the step failed or ended before this figure) / INFO (reported only; every
speed row of a CPU dry run) / SKIP (not possible here, with the reason).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def prep(out: Path, preset: str) -> int:
    """work/tok, work/shards (stdlib code), work/model (micro: the greedy smoke) and work/big (PRESET: the
    decode and serve rows; its vocabulary is the preset's, as in training)."""
    from phi1.data.pack import pack
    from phi1.model.create import init_model_dir
    from phi1.tokenizer import train_tokenizer

    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    src = [STDLIB / "json", STDLIB / "email", STDLIB / "collections", STDLIB / "asyncio"]
    train_tokenizer(src, vocab_size=1024, out_dir=work / "tok")
    pack(work / "tok", src, work / "shards", workers=1, val_fraction=0.1)
    init_model_dir("micro", work / "tok", work / "model", seed=0, max_position_embeddings=512)
    init_model_dir(preset, work / "tok", work / "big", seed=0)
    print(f"prepared {work}")
    return 0


ROWS = [  # (key, what it shows, target); keys are written by the steps of gpu_check.sh, in this order
    ("env", "environment: torch, transformers, GPU, packages", "torch + transformers import"),
    ("greedy", "greedy ids: compiled == eager", "identical ids"),
    ("parity-fp16", "loss parity fp16 vs fp32, 20 steps", "max rel. difference <= 1%, no skipped step"),
    ("parity-bf16", "loss parity bf16 vs fp32, 20 steps", "max rel. difference <= 2%"),
    ("train-phi-1", "train phi-1: phi1 (per-block compile)", "reported: tokens/s, MFU, compile s"),
    ("train-phi-1-vs-hf", "train phi-1: phi1 / transformers (compiled per layer)", ">= 1.15x"),
    ("train-phi-1-small", "train phi-1-small: phi1 (per-block compile)", "reported: tokens/s, MFU, compile s"),
    ("train-phi-1-small-vs-hf", "train phi-1-small: phi1 / transformers (compiled per layer)", ">= 1.15x"),
    ("memory", "phi1 train, phi-1 recipe shape: peak memory", "reserved peak <= 90% of the GPU (headroom >= 10%)"),
    ("ckpt-save", "checkpoint save (model + optimizer state)", "reported: s, GB/s"),
    ("ckpt-load", "checkpoint load (model + optimizer state)", "reported: s, GB/s"),
    ("decode-b1", "decode batch 1: phi1", "reported: tok/s, compile s"),
    ("decode-b1-vs-hf", "decode batch 1: phi1 / transformers static cache + compile", ">= 1.5x"),
    ("decode-b1-bandwidth", "decode batch 1: phi1 / weight-read limit", ">= 60% of HBM bandwidth / weight bytes"),
    ("decode-b32", "decode batch 32: phi1", "reported: tok/s, compile s"),
    ("decode-b32-vs-hf", "decode batch 32: phi1 / transformers static cache + compile", "reported"),
    ("serve-start", "phi1 serve start-up (load + warm-up)", "reported: s until /health"),
    ("serve-16", "phi1 serve: 16 concurrent streaming clients", "0 errors; tok/s, p50, time to first token"),
    ("window", "phi-3 SFT sliding window (T 4096, window 2047): masked SDPA (today) / FlexAttention",
     "reported: decides a switch to FlexAttention"),
    ("recompiles", "recompiles in phi1's code (all steps)", "0"),
]
TARGETS = {key: target for key, _, target in ROWS}


def record(out: Path, key: str, status: str, number: str, target: str | None = None) -> None:
    """Append one row to results.tsv and rewrite summary.md at once (the call may be cut off any time)."""
    target = TARGETS.get(key, "") if target is None else target
    with open(out / "results.tsv", "a") as f:
        f.write(f"{key}\t{status}\t{' '.join(str(number).split())}\t{target}\n")
    summary(out, quiet=True)


def results(out: Path) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    tsv = out / "results.tsv"
    for line in (tsv.read_text().splitlines() if tsv.exists() else []):
        parts = line.split("\t")
        if parts and parts[0]:
            got[parts[0]] = (parts + ["", "", ""])[1:4]  # a rerun of a row replaces its earlier line
    return got


def summary(out: Path, wall: int | None = None, quiet: bool = False) -> int:
    got = results(out)
    env = (out / "env.txt").read_text(errors="replace") if (out / "env.txt").exists() else ""
    mode = re.search(r"^mode: (.*)$", env, re.M)
    gpu = re.search(r"^gpu (.*)$", env, re.M)
    only = re.search(r"^only: (.*)$", env, re.M)
    head = f"mode {mode.group(1) if mode else '?'}, {gpu.group(1) if gpu else 'no GPU'}"
    if wall is not None:
        head += f", wall time {wall} s"
    lines = ["# GPU check summary", "", head + "; PASS/MISS against the target (ratios against the reference "
             "measured in the same run), FAIL = the step failed or ended first, INFO = reported only, SKIP = "
             "not possible here", "", "| check | status | number | target |", "|---|---|---|---|"]
    wanted = set(only.group(1).split(",")) if only else None
    bad = 0
    for key, title, _ in ROWS:
        if wanted is not None and not any(key == w or key.startswith(w + "-") for w in wanted) and key not in got:
            continue
        status, number, target = got.pop(key, ["FAIL", "not reached", TARGETS[key]])
        bad += status not in ("PASS", "INFO", "SKIP")
        lines.append(f"| {title} | {status} | {number} | {target} |")
    for key, (status, number, target) in got.items():
        lines.append(f"| {key} | {status} | {number} | {target} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if not quiet:
        print("\n".join(lines))
    return 0 if bad == 0 else 1


def _kv(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _status(ok: bool, dry: bool) -> str:
    return "INFO" if dry else "PASS" if ok else "MISS"


# ---- correctness rows ----------------------------------------------------------------------------------

def greedy(out: Path, device: str, dtype: str, new: int, batch: int) -> int:
    """Our model's greedy ids, eager and with the compiled decode step, must agree token for token."""
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
        how = "torch.compile aot_eager (CPU)"
    same = eager == compiled
    print(f"greedy batch {batch}, {new} new tokens, {device} {dtype}, compiled via {how}: "
          f"{'same ids' if same else 'DIFFERENT ids'}")
    first = ""
    for r, (a, b) in enumerate(zip(eager, compiled)):
        if a != b:
            k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            first = f"; row {r} differs first at token {k}"
            print(f"  row {r}: first difference at token {k}: eager {a[k:k + 8]} compiled {b[k:k + 8]}")
            break
    record(out, "greedy", "PASS" if same else "FAIL",
           f"batch {batch} x {new} tokens, {device} {dtype}, {how}: {'same ids' if same else 'DIFFERENT'}{first}")
    return 0 if same else 1


PARITY_TOL = {"fp16": 0.01, "bf16": 0.02}


def parity(out: Path, device: str, preset: str, seq: int, micro: int, steps: int) -> int:
    """fp32, fp16 and bf16 runs of phi1's real training step (autocast, GradScaler, clip, AdamW) from the
    same init on the same batches with dropout 0.1; each precision's row is recorded as soon as it ends."""
    import time

    import phi1
    from phi1.train.config import load_config
    from phi1.train.distributed import World
    from phi1.train.trainer import Trainer, seed_everything
    from phi1.utils.device import resolve_device

    recipe = Path(phi1.__file__).parent / "recipes" / "test-micro.yaml"
    work = out / "work"
    curves: dict[str, list[float]] = {}
    for prec in ("fp32", "fp16", "bf16"):
        sets = [f"run.out_dir={work / 'parity'}", f"run.name={prec}", f"run.device={device}",
                f"model.init={preset}", f"model.tokenizer={work / 'tok'}", f"data.train={work / 'shards'}",
                f"data.seq_len={seq}", f"train.precision={prec}", f"train.micro_batch={micro}",
                f"train.global_batch={micro}", f"train.max_steps={steps}", "schedule.warmup_steps=5",
                "optimizer.lr=1e-3", "model.attention_dropout=0.1", "model.resid_dropout=0.1", "eval.interval=0"]
        cfg = load_config(recipe, sets)
        seed_everything(cfg.run.seed)
        t0 = time.perf_counter()
        tr = Trainer(cfg, World(device=resolve_device(device, 0)))
        try:
            recs = [tr.train_step() for _ in range(steps)]  # the trainer's own step; no checkpoint written
        finally:
            tr.release()
        curves[prec] = [r["loss"] for r in recs]
        skipped = sum(bool(r.get("skipped")) for r in recs)
        print(f"{prec}: {time.perf_counter() - t0:.1f}s, loss {curves[prec][0]:.4f} -> {curves[prec][-1]:.4f}, "
              f"skipped steps {skipped}; curve {' '.join(f'{x:.4f}' for x in curves[prec])}", flush=True)
        if prec == "fp32":
            continue
        ref = curves["fp32"]
        worst = max(abs(a - b) / abs(b) for a, b in zip(curves[prec], ref))
        ok = worst <= PARITY_TOL[prec] and skipped == 0 and all(map(math.isfinite, curves[prec]))
        record(out, f"parity-{prec}", "PASS" if ok else "MISS",
               f"max rel. difference {worst:.2e} over {steps} steps ({preset}, seq {seq}, micro {micro}); "
               f"fp32 {ref[0]:.3f} -> {ref[-1]:.3f}; skipped {skipped}")
    return 0


# ---- judges of the bench scripts' `result` lines (stdin, as they are printed) ----------------------------

def _results_of(stream):
    """Echo every line of a bench script's output (into the step's log) and yield each `result` line's
    key=value pairs the moment it is printed."""
    for line in stream:
        print(line, end="", flush=True)
        if line.startswith("result "):
            yield _kv(line)


def _fail_missing(out: Path, keys) -> None:
    """A FAIL row for each of `keys` the step ended without."""
    got = results(out)
    for k in keys:
        if k not in got:
            record(out, k, "FAIL", "the step ended before this figure (see its log)")


def judge_train(out: Path, key: str, target: float, dry: bool, stream) -> int:
    theirs: dict = {}
    for kv in _results_of(stream):
        if kv.get("impl") == "phi1":
            mfu = float(kv["mfu"])
            record(out, key, "INFO" if dry else "PASS",
                   f"{float(kv['tokens_per_s']):,.0f} tok/s, {kv['tflops']} TFLOP/s"
                   + (f", MFU {mfu:.1%}" if mfu == mfu else "") + f", compile {kv['compile_s']} s, "
                   f"steady {kv['ms_per_step']} ms/step" + (f", peak {kv['peak_gb']} GB" if kv["peak_gb"] != "nan" else ""))
        elif kv.get("impl") == "transformers":
            theirs = kv
        elif "ratio" in kv:
            r = float(kv["ratio"])
            record(out, f"{key}-vs-hf", _status(r >= target, dry),
                   f"{r:.2f}x (transformers {float(theirs['tokens_per_s']):,.0f} tok/s, compile "
                   f"{theirs['compile_s']} s)", f">= {target}x" + (" (GPU only)" if dry else ""))
    _fail_missing(out, (key, f"{key}-vs-hf"))
    return 0


def judge_decode(out: Path, batches: list[int], dry: bool, stream) -> int:
    gpu, bw = hbm_bandwidth()
    for kv in _results_of(stream):
        b = int(kv["batch"])
        if kv["impl"] == "phi1":
            tok_s, gb_s = float(kv["tok_s"]), float(kv["gb_s"])
            record(out, f"decode-b{b}", "INFO" if dry else "PASS",
                   f"{tok_s:,.1f} tok/s, {kv['gb_s']} GB/s of weights, compile {kv['warm_s']} s")
            if b == 1:
                if bw:  # each step reads every weight once: the fraction of HBM bandwidth is the fraction of the limit
                    frac, weights = gb_s * 1e9 / bw, gb_s * 1e9 / tok_s
                    record(out, "decode-b1-bandwidth", _status(frac >= 0.6, dry),
                           f"{frac:.0%} of {bw / weights:,.0f} tok/s ({gpu}: {bw / 1e12:.2f} TB/s / "
                           f"{weights / 1e9:.2f} GB)")
                else:
                    record(out, "decode-b1-bandwidth", "SKIP" if dry else "MISS",
                           f"no HBM bandwidth known for {gpu}")
        elif kv["impl"] == "hf-static":
            r = float(kv["ratio"])
            target = 1.5 if b == 1 else None
            status = _status(r >= target, dry) if target else "INFO"
            record(out, f"decode-b{b}-vs-hf", status,
                   f"{r:.2f}x (transformers static+compile {float(kv['tok_s']):,.1f} tok/s, compile "
                   f"{kv['warm_s']} s); same greedy ids: {kv['same']}")
    _fail_missing(out, [k for b in batches for k in (f"decode-b{b}", f"decode-b{b}-vs-hf")
                        + (("decode-b1-bandwidth",) if b == 1 else ())])
    return 0


def judge_window(out: Path, stream) -> int:
    got = {kv.get("impl", "ratio"): kv for kv in _results_of(stream)}
    if "ratio" in got:
        m, f, c = got["sdpa-mask"], got["flex-window"], got["sdpa-causal"]
        record(out, "window", "INFO",
               f"{float(got['ratio']['ratio_mask_over_flex']):.2f}x: mask {m['ms']} ms, flex {f['ms']} ms (compile "
               f"{f['compile_s']} s, max diff {f['max_diff']}), causal bound {c['ms']} ms")
    _fail_missing(out, ("window",))
    return 0


def judge_serve(out: Path, clients: int, stream) -> int:
    for kv in _results_of(stream):
        if "server_ready_s" in kv:
            record(out, "serve-start", "INFO", f"{kv['server_ready_s']} s (model load + warm-up of every bucket)")
        elif kv.get("clients") == str(clients):
            ok = kv["errors"] == "0" and int(kv["requests"]) > 0
            record(out, f"serve-{clients}", "PASS" if ok else "FAIL",
                   f"{kv['requests']} requests, {kv['errors']} errors, {float(kv['tok_s']):,.1f} tok/s, p50 "
                   f"{kv['p50_s']} s, time to first token p50 {kv['ttft_p50_s']} s, mean batch {kv['mean_batch']}")
    _fail_missing(out, ("serve-start", f"serve-{clients}"))
    return 0


# ---- memory, checkpoints, recompiles --------------------------------------------------------------------

def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def memory(out: Path, run_dir: Path, dry: bool) -> int:
    """Peak memory and headroom, and the checkpoint's save time, from the run's metrics.jsonl."""
    import json

    recs = []
    if (run_dir / "metrics.jsonl").exists():
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in recs if "loss" in r]
    if not steps:
        record(out, "memory", "FAIL", "no training step in metrics.jsonl (see memory.log)")
    else:
        last = steps[-1]
        if "mem_reserved_peak_gb" in last:
            peak, res, total = last["mem_peak_gb"], last["mem_reserved_peak_gb"], last["mem_total_gb"]
            head = 1 - res / total
            record(out, "memory", _status(head >= 0.10, dry),
                   f"allocated peak {peak:.1f} GB, reserved peak {res:.1f} GB of {total:.1f} GB: headroom {head:.0%}; "
                   f"{last['tokens_per_s']:,.0f} tok/s, skipped {sum(bool(r.get('skipped')) for r in steps)}")
        else:
            record(out, "memory", "INFO", f"CPU: process RSS peak {last.get('mem_rss_peak_gb', float('nan')):.2f} GB")
    saves = [r for r in recs if "checkpoint_s" in r]
    ckpts = sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").exists() else []
    if saves and ckpts:
        size = _dir_bytes(ckpts[-1])
        s = saves[-1]["checkpoint_s"]
        record(out, "ckpt-save", "INFO", f"{s:.1f} s for {size / 1e9:.2f} GB ({size / 1e9 / s:.2f} GB/s), {ckpts[-1].name}")
    else:
        record(out, "ckpt-save", "FAIL", "no checkpoint_s in metrics.jsonl (see memory.log)")
    return 0


def ckpt_load(out: Path, ckpt: Path, device: str) -> int:
    """What a resume reads: the model directory onto the device and the optimizer state."""
    import time

    import torch

    from phi1.model.hf import load_model_dir
    from phi1.train.checkpoint import load_state

    t0 = time.perf_counter()
    model = load_model_dir(ckpt / "model").to(device)
    state, trainer = load_state(ckpt)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    size = _dir_bytes(ckpt)
    n = sum(p.numel() for p in model.parameters())
    record(out, "ckpt-load", "INFO", f"{dt:.1f} s for {size / 1e9:.2f} GB ({size / 1e9 / dt:.2f} GB/s), "
           f"{n / 1e6:,.1f}M parameters, step {state['step']}")
    return 0


def recompiles(out: Path) -> int:
    """`TORCH_LOGS=recompiles` lines in the steps' logs: phi1's own must be 0 (transformers' are listed)."""
    ours, theirs = {}, {}
    for log in sorted(out.glob("*.log")):
        text = log.read_text(errors="replace")
        for m in re.finditer(r"Recompiling function (\S+) in (\S+)", text):
            side = ours if "phi1" in m.group(2).replace("\\", "/").split("site-packages")[-1] else theirs
            side[log.stem] = side.get(log.stem, 0) + 1
    n = sum(ours.values())
    detail = ", ".join(f"{k} {v}" for k, v in ours.items()) or "none"
    other = ", ".join(f"{k} {v}" for k, v in theirs.items()) or "none"
    record(out, "recompiles", "PASS" if n == 0 else "MISS", f"phi1: {n} ({detail}); transformers: {other}")
    return 0


HBM_BYTES_S = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
               ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12)]  # datasheet HBM bandwidth, first match wins


def hbm_bandwidth() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((bw for key, bw in HBM_BYTES_S if key.lower() in name.lower()), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["prep", "greedy", "parity", "judge", "memory", "ckpt-load", "recompiles",
                                     "summary", "row"])
    ap.add_argument("out", type=Path)
    ap.add_argument("rest", nargs="*", help="judge: train KEY TARGET | decode BATCHES | serve CLIENTS | window; "
                                            "memory: RUN_DIR; ckpt-load: CKPT; row: KEY STATUS NUMBER")
    ap.add_argument("--wall", type=int, default=None)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dry", action="store_true", help="a CPU dry run: speed rows are INFO")
    a = ap.parse_args(argv)
    if a.what == "prep":
        return prep(a.out, a.preset)
    if a.what == "greedy":
        return greedy(a.out, a.device, a.dtype, a.new_tokens, a.batch)
    if a.what == "parity":
        return parity(a.out, a.device, a.preset, a.seq, a.batch, a.steps)
    if a.what == "judge":
        kind, *rest = a.rest
        if kind == "train":
            return judge_train(a.out, rest[0], float(rest[1]), a.dry, sys.stdin)
        if kind == "decode":
            return judge_decode(a.out, [int(b) for b in rest[0].split(",")], a.dry, sys.stdin)
        if kind == "window":
            return judge_window(a.out, sys.stdin)
        return judge_serve(a.out, int(rest[0]), sys.stdin)
    if a.what == "memory":
        return memory(a.out, Path(a.rest[0]), a.dry)
    if a.what == "ckpt-load":
        return ckpt_load(a.out, Path(a.rest[0]), a.device)
    if a.what == "recompiles":
        return recompiles(a.out)
    if a.what == "row":
        record(a.out, a.rest[0], a.rest[1], " ".join(a.rest[2:]))
        return 0
    return summary(a.out, a.wall)


if __name__ == "__main__":
    sys.exit(main())
