"""Sliding-window attention for phi-3 SFT (window shorter than the sequence): what phi1 does today, an
explicit boolean mask through SDPA (no flash kernel), against FlexAttention with a sliding-window block
mask (compiled), with plain causal SDPA (flash) as the bound. Forward + backward, phi-3-mini's heads.

    python bench/window_attention.py --device cuda                 # T 4096, window 2047, 32 x 96, bf16
    python bench/window_attention.py --t 256 --window 100 --no-compile   # CPU smoke (flex eager)

Prints a `result` line per implementation (ms, max |difference| from the masked reference) and the ratio
mask / flex, the figure that decides whether phi1 should switch (docs/scaling.md, issue 27 part 4).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=96)
    ap.add_argument("--t", type=int, default=4096)
    ap.add_argument("--window", type=int, default=2047)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="flex_attention eager (CPU smoke runs)")
    ap.add_argument("--forward-only", action="store_true", help="no backward (FlexAttention has none on CPU)")
    a = ap.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = torch.device(a.device)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(a.batch, a.heads, a.t, a.head_dim, generator=g).to(dev, dt) for _ in range(3))
    do = torch.randn(a.batch, a.heads, a.t, a.head_dim, generator=g).to(dev, dt)
    i = torch.arange(a.t, device=dev)
    mask = (i[:, None] >= i[None]) & (i[:, None] - i[None] < a.window)

    def window(b, h, qi, ki):
        return (qi >= ki) & (qi - ki < a.window)

    block = create_block_mask(window, None, None, a.t, a.t, device=a.device)
    flex = flex_attention if a.no_compile else torch.compile(flex_attention, dynamic=False)
    impls = {
        "sdpa-mask": lambda x, y, z: F.scaled_dot_product_attention(x, y, z, attn_mask=mask),
        "flex-window": lambda x, y, z: flex(x, y, z, block_mask=block),
        "sdpa-causal (bound, no window)": lambda x, y, z: F.scaled_dot_product_attention(x, y, z, is_causal=True),
    }
    print(f"window attention: batch {a.batch}, {a.heads} heads x {a.head_dim}, T {a.t}, window {a.window}, "
          f"{a.dtype} on {dev}, torch {torch.__version__}; forward{'' if a.forward_only else ' + backward'}", flush=True)
    ref, times = None, {}

    def timed(fn, x, y, z):
        """(seconds, output) of one forward (+ backward) with the device synchronised around it."""
        x.grad = y.grad = z.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(x, y, z)
        if not a.forward_only:
            out.backward(do)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    for name, fn in impls.items():
        x, y, z = (t.detach().clone().requires_grad_(not a.forward_only) for t in (q, k, v))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first, out = timed(fn, x, y, z)  # compiles
            ts = []
            for _ in range(a.repeats):
                dt, out = timed(fn, x, y, z)
                ts.append(dt)
        ref = out.detach().float() if ref is None else ref
        diff = (out.detach().float() - ref).abs().max().item() if not name.startswith("sdpa-causal") else float("nan")
        times[name] = statistics.median(ts)
        print(f"result impl={name.split()[0]} ms={times[name] * 1e3:.2f} compile_s={max(0.0, first - times[name]):.1f} "
              f"max_diff={diff:.2e}", flush=True)
    print(f"result ratio_mask_over_flex={times['sdpa-mask'] / times['flex-window']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
