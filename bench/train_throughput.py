"""Training-step throughput: phi1's model vs transformers' (Phi or Phi3ForCausalLM), side by side.

Both models get the same weights, batch, precision, optimizer (AdamW, decay on
matrices only, fused on CUDA), gradient clipping and compile setting. Ours is timed
first and its `result` line printed before transformers' model is loaded (a timeout
later loses nothing of ours); then transformers', then the ratio. Each side reports
its compile time (first step beyond a steady one) apart from the steady-state median,
tokens/s, achieved TFLOP/s, MFU (GPU only: against the datasheet's dense bf16 peak in
phi1.train.metrics, 989 TFLOP/s for H100 SXM/H200) and peak memory. `--compile`
compiles ours per block, as the trainer does, and transformers' the same way (each
decoder layer). `--skip-hf` times ours alone.

    python bench/train_throughput.py                       # CPU, tiny preset, fp32
    python bench/train_throughput.py --preset tiny3        # the same for the phi-3 family
    python bench/train_throughput.py --preset phi-1-small --seq-len 2048 --batch 8 \\
        --device cuda --dtype bf16 --compile               # one GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import platform
import statistics
import tempfile
import time

import torch

from phi1.model.family import build_model, config_from_preset
from phi1.model.hf import save_model_dir
from phi1.train.distributed import World, prepare_model
from phi1.train.metrics import peak_flops

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_step(model, forward, device: torch.device, dtype: torch.dtype):
    """One training step as the trainer does it: autocast forward, backward, clip, AdamW."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.98), eps=1e-7, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def amp():
        return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step(x, y) -> float:
        with amp():
            loss = forward(x, y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name, model, step, feed, args, device, fpt, peak) -> float:
    """Time one side: the first step (compile included), warm-up, then rounds of timed steps. Prints one
    `result` line (key=value) at once, so a later timeout never loses it; returns tokens/s."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    first_loss = float(step(*feed))
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        step(*feed)
    times = []
    for _ in range(args.rounds):
        sync(device)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step(*feed)
            sync(device)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tps = args.batch * args.seq_len / med
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    mfu = fpt * tps / peak if peak else float("nan")
    # compile_s: the first step's time beyond a steady one (torch.compile's tracing and codegen, autotuning)
    print(f"result impl={name} first_loss={first_loss:.5f} compile_s={max(0.0, first - med):.1f} "
          f"ms_per_step={med * 1e3:.1f} tokens_per_s={tps:.0f} tflops={fpt * tps / 1e12:.2f} mfu={mfu:.4f} "
          f"peak_gb={mem:.2f}", flush=True)
    return tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--skip-hf", action="store_true", help="time phi1 only (no transformers model)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cfg = config_from_preset(args.preset)
    if getattr(cfg, "pad_token_id", None) is not None and cfg.pad_token_id >= cfg.vocab_size:
        cfg = cfg.replace(pad_token_id=None)
    peak = peak_flops(device)
    fpt = cfg.flops_per_token(args.seq_len)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"train step: preset={args.preset} ({cfg.num_parameters() / 1e6:.1f}M params) seq_len={args.seq_len} "
          f"batch={args.batch} dtype={args.dtype} compile={args.compile} on {where}; torch {torch.__version__}"
          + (f"; MFU against {peak / 1e12:.0f} TFLOP/s, the datasheet's dense bf16 peak" if peak else ""), flush=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=g).to(device)
    inp, tgt = x[:, :-1], x[:, 1:]
    torch.manual_seed(0)
    ours = build_model(cfg)
    tmp = tempfile.TemporaryDirectory()
    if not args.skip_hf:
        save_model_dir(ours, tmp.name)  # the same weights for transformers, loaded after ours is timed
    ours.to(device).train()
    ours = prepare_model(ours, World(device=device), activation_checkpointing=False, compile=args.compile)
    # ours first, printed before transformers is even loaded: a timeout in its compile loses nothing of ours
    tps = {"phi1": measure("phi1", ours, make_step(ours, lambda a, b: ours(a, b)[1], device, dtype),
                           (inp, tgt), args, device, fpt, peak)}
    del ours
    gc.collect()  # ours (weights, AdamW state) leaves the GPU before transformers' model arrives
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM

        theirs = AutoModelForCausalLM.from_pretrained(tmp.name, dtype=torch.float32, attn_implementation="sdpa")
        theirs.to(device).train()
        if args.compile:  # compiled the same way as ours: each decoder layer, not the whole model
            for layer in theirs.model.layers:
                layer.compile()
        # transformers shifts labels itself (T-1 predictions from the same T-token forward)
        tps["transformers"] = measure("transformers", theirs,
                                      make_step(theirs, lambda a, b: theirs(input_ids=a, labels=a).loss, device, dtype),
                                      (inp, None), args, device, fpt, peak)
        print(f"result ratio={tps['phi1'] / tps['transformers']:.3f}", flush=True)
        print(f"ratio phi1/transformers tokens/s: {tps['phi1'] / tps['transformers']:.2f}x")
    tmp.cleanup()


if __name__ == "__main__":
    main()
