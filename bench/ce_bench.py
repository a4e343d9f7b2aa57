"""The chunked cross-entropy (phi1.model.phi.chunked_cross_entropy) against F.cross_entropy on upcast
logits, the path transformers and nanoGPT use: forward + backward time and peak memory, side by side.

Each side runs in its own process (peak RSS on CPU, max_memory_allocated on CUDA, both over a baseline
taken after the logits exist), on the same logits (N, V) in the training dtype.

    python bench/ce_bench.py                                  # CPU, N 8192, V 51200, bf16
    python bench/ce_bench.py --device cuda --n 16384 --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(impl: str, n: int, v: int, dtype: str, device: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from phi1.model.losses import chunked_cross_entropy

    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    g = torch.Generator().manual_seed(0)
    logits = torch.empty(n, v, dtype=dt, device=device)
    for s in range(0, n, 256):  # filled in row blocks: no full-size fp32 temporary inflates the baseline
        logits[s:s + 256] = (torch.randn(min(256, n - s), v, generator=g) * 0.1).to(device=device, dtype=dt)
    logits.requires_grad_()
    t = torch.randint(0, v, (n,), generator=g).to(device)
    fn = chunked_cross_entropy if impl == "phi1" else (lambda x, y: F.cross_entropy(x.float(), y))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeats):
        logits.grad = None
        t0 = time.perf_counter()
        fn(logits, t).mul(65536.0).backward()  # at fp16's starting loss scale
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"impl": impl, "s": min(times), "extra_gb": (peak - base) / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--v", type=int, default=51200)
    ap.add_argument("--dtype", default="bf16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.n, a.v, a.dtype, a.device, a.repeats)))
        return 0
    logits_gb = a.n * a.v * {"fp16": 2, "bf16": 2, "fp32": 4}[a.dtype] / 1e9
    print(f"cross-entropy forward + backward, N {a.n} x V {a.v} {a.dtype} on {a.device} (logits {logits_gb:.2f} GB); "
          f"best of {a.repeats}; memory beyond the logits")
    res = {}
    for impl in ("phi1", "F.cross_entropy(logits.float())"):
        r = subprocess.run([sys.executable, __file__, "--one", impl if impl == "phi1" else "torch", "--n", str(a.n),
                            "--v", str(a.v), "--dtype", a.dtype, "--device", a.device, "--repeats", str(a.repeats)],
                           capture_output=True, text=True, check=True)
        res[impl] = json.loads(r.stdout)
        print(f"{impl:<34} {res[impl]['s'] * 1e3:>9.1f} ms {res[impl]['extra_gb']:>7.2f} GB")
    ours, ref = res["phi1"], res["F.cross_entropy(logits.float())"]
    print(f"ratio phi1 / F.cross_entropy: time {ours['s'] / ref['s']:.2f}x, memory beyond the logits "
          f"{ours['extra_gb'] / ref['extra_gb']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
