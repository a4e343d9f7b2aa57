"""Decode speed: phi1's generation core versus transformers' generate on the same model directory.

Greedy, prompt 128 tokens, 256 new tokens (EOS ignored so every run does the
same work), batch 1 and 16, in one run; prints tokens/s for phi1 and two transformers
references -- plain `generate` (dynamic cache, eager) and `generate` with its static cache and
a compiled forward (`generation_config.cache_implementation = "static"` plus a
`CompileConfig`, transformers' documented fast path; --skip-hf-static leaves it out) -- the
ratio against each, and the achieved weight-read bandwidth (bytes of weights x decode steps/s).

    python bench/decode.py                                   # CPU, tiny preset made in a temp dir
    python bench/decode.py --preset phi-1 --device cuda --dtype bf16 --compile
    python bench/decode.py --model path/to/model_dir --device cuda --dtype bf16
    python bench/decode.py --backend llama.cpp    # CPU, batch 1: phi1 eager / compiled / int8 vs llama.cpp f16, q4_0

`--backend llama.cpp` exports the model to GGUF (phi1 export gguf) and decodes the same prompt in
llama.cpp through llama-cpp-python (pip install -e '.[llamacpp]'), with as many threads as torch.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch


def make_model_dir(preset: str, root: Path) -> Path:
    from phi1.model.create import init_model_dir
    from phi1.model.family import config_from_preset
    from phi1.tokenizer import train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train_tokenizer([stdlib / "json", stdlib / "email"], vocab_size=2048, out_dir=root / "tok")
    vocab = max(config_from_preset(preset).vocab_size, 2048)  # keep the preset's LM-head size: it is read every step
    return init_model_dir(preset, root / "tok", root / preset, seed=0, vocab_size=vocab)


def prompt_ids(tok, n: int, rows: int) -> list[list[int]]:
    """`rows` different real-code prompts of exactly n tokens (no EOS inside)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(p.read_text(errors="replace") for p in sorted((stdlib / "json").glob("*.py")))
    ids = [i for i in tok.encode(text) if i != tok.eos_id]
    return [ids[r * 37 : r * 37 + n] for r in range(rows)]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_ours(model, prompts, new, compile_):
    """(seconds of a timed run, ids, seconds of the warm-up run). Compiled, the warm-up decodes the timed
    length, so every bucket the timed run meets is compiled before it starts."""
    from phi1.infer.generate import SamplingParams, generate_ids

    params = SamplingParams(max_new_tokens=new)
    dev = model.lm_head.weight.device
    sync(dev)
    t = time.perf_counter()
    generate_ids(model, prompts, SamplingParams(max_new_tokens=8 if not compile_ else new), None,
                 compile=compile_)  # warm up (and compile)
    sync(dev)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    out = generate_ids(model, prompts, params, None, compile=compile_)  # eos None: never stop early
    sync(dev)
    dt = time.perf_counter() - t
    assert all(len(ids) == new for ids, _ in out)
    return dt, [ids for ids, _ in out], warm


@torch.inference_mode()
def time_hf(hf, prompts, new, pad_id, static: bool = False):
    """(seconds of a timed run, ids, seconds of the warm-up run). The static-cache model is warmed at the
    timed length: its cache is sized prompt + max_new_tokens, and a smaller warm-up would leave the timed
    run a new cache shape to compile."""
    dev = hf.device
    x = torch.tensor(prompts, device=dev)  # equal lengths: no padding needed
    kw = dict(do_sample=False, min_new_tokens=new, max_new_tokens=new, pad_token_id=pad_id,
              attention_mask=torch.ones_like(x))
    sync(dev)
    t = time.perf_counter()
    hf.generate(x, **(kw if static else {**kw, "min_new_tokens": 8, "max_new_tokens": 8}))
    sync(dev)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    out = hf.generate(x, **kw)
    sync(dev)
    dt = time.perf_counter() - t
    return dt, out[:, x.shape[1]:].tolist(), warm


def make_hf_static(hf, backend: str):
    """`hf` set up as transformers documents for fast decoding: a static KV cache and the decode
    forward compiled by `generate` (fullgraph, dynamic=False; CUDA graphs on CUDA). On CPU
    transformers does not auto-compile, so `_compile_all_devices` asks it to (CPU dry runs)."""
    from transformers import CompileConfig

    hf.generation_config.cache_implementation = "static"
    cuda = hf.device.type == "cuda"
    cc = CompileConfig(fullgraph=True, dynamic=False, backend=backend,
                       mode="reduce-overhead" if cuda and backend == "inductor" else None)
    if not cuda:
        cc._compile_all_devices = True
    hf.generation_config.compile_config = cc
    return hf


def time_steps(model, prompt, new, mode):
    """phi1 at batch 1: "eager", "compiled" (the fixed-shape decode step through torch.compile; on CPU
    inductor's C++ code, since the CUDA-graph step is CUDA only) or "int8"/"int4" (--quantize)."""
    from phi1.infer.decode import DecodeStep, _step_full_cache

    if mode == "compiled" and getattr(model, "_phi1_decode_step", None) is None:
        step = DecodeStep(model, mode="full")  # compiled once; later runs (and repeats) reuse its graph
        step._fn = torch.compile(_step_full_cache, fullgraph=True, dynamic=False)
        model._phi1_decode_step = step
    dt, ids, _ = time_ours(model, [prompt], new, False)
    return dt, ids


def time_llama_cpp(path, prompt, new, threads):
    from phi1.export import llamacpp

    llm = llamacpp.open_gguf(path, n_ctx=len(prompt) + new + 8, logits_all=False, n_threads=threads)
    try:
        llamacpp.greedy(llm, prompt, 8)  # warm up
        t = time.perf_counter()
        ids = llamacpp.greedy(llm, prompt, new)
        return time.perf_counter() - t, ids
    finally:
        llm.close()


def bench_llama_cpp(args, model_dir, tmp: Path) -> int:
    """tokens/s at batch 1 on CPU: phi1 eager, compiled, int8 and llama.cpp f16, q4_0 (same model, same prompt)."""
    from phi1.export.gguf_export import export_gguf
    from phi1.model import load_for_inference

    model, tok = load_for_inference(model_dir, "cpu", "float32")
    prompt = prompt_ids(tok, args.prompt_len, 1)[0]
    threads = torch.get_num_threads()
    files = {t: export_gguf(model_dir, tmp / f"model-{t}.gguf", t).path for t in ("f16", "q4_0")}
    print(f"# {model_dir.name}: {model.num_parameters() / 1e6:.1f}M params, CPU {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} cores, threads {threads}, torch {torch.__version__}")
    print(f"# greedy, batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, EOS ignored; "
          f"best of {args.repeats}")
    loaded: dict = {"eager": model}

    def phi1(kind):  # each kind its own model, loaded when its row runs (one compiled graph, reused by repeats)
        if kind not in loaded:
            loaded[kind] = load_for_inference(model_dir, "cpu", "float32",
                                              quantize=kind if kind.startswith("int") else None)[0]
        return time_steps(loaded[kind], prompt, args.new_tokens, "compiled" if kind == "compiled" else "eager")

    runs = [("phi1 eager fp32", lambda: phi1("eager")), ("phi1 compiled fp32", lambda: phi1("compiled")),
            ("phi1 eager --quantize int8", lambda: phi1("int8")), ("phi1 eager --quantize int4", lambda: phi1("int4"))]
    for t, f in files.items():
        runs.append((f"llama.cpp {t} ({f.stat().st_size / 2**20:.1f} MiB)",
                     lambda f=f: time_llama_cpp(f, prompt, args.new_tokens, threads)))
    print(f"{'backend':<34} {'tok/s':>8} {'greedy = phi1 fp32 eager (first 32)':>36}")
    ref = None
    for name, fn in runs:
        best, ids = float("inf"), None
        for _ in range(args.repeats):
            dt, out = fn()
            best, ids = min(best, dt), (out[0] if isinstance(out[0], list) else out)
        ref = ids if ref is None else ref
        print(f"{name:<34} {args.new_tokens / best:>8.1f} {'yes' if ids[:32] == ref[:32] else 'no':>36}")
        sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an existing model directory (default: make one from --preset)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true", help="CUDA: our decode step as a CUDA graph")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--skip-hf", action="store_true", help="time phi1 only (no transformers rows)")
    ap.add_argument("--skip-hf-static", action="store_true",
                    help="leave out the transformers static-cache + compiled row")
    ap.add_argument("--skip-hf-eager", action="store_true",
                    help="leave out the plain (dynamic cache, eager) transformers row")
    ap.add_argument("--hf-compile-backend", default="inductor",
                    help="torch.compile backend of the transformers static row (aot_eager: a cheap CPU dry run)")
    ap.add_argument("--backend", default="hf", choices=["hf", "llama.cpp"],
                    help="what phi1 is compared with: transformers (default) or llama.cpp (CPU, batch 1)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (after a warm-up run); the best counts")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU: torch threads (1 is steadier on a machine shared with other jobs)")
    args = ap.parse_args(argv)

    import transformers

    from phi1.infer.decode import weight_bytes
    from phi1.model import load_for_inference
    from phi1.model.runtime import resolve_device_dtype

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else make_model_dir(args.preset, Path(tmp))
        if args.backend == "llama.cpp":
            return bench_llama_cpp(args, model_dir, Path(tmp))
        dev, dt = resolve_device_dtype(args.device, args.dtype)
        model, tok = load_for_inference(model_dir, args.device, args.dtype)
        hf = hf_static = None
        if not args.skip_hf:
            if not args.skip_hf_eager:
                hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt).to(dev).eval()
            if not args.skip_hf_static:
                hf_static = make_hf_static(
                    transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt).to(dev).eval(),
                    args.hf_compile_backend)
        wbytes = weight_bytes(model)
        gpu = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
        print(f"# {model_dir.name}: {model.num_parameters() / 1e6:.1f}M params, {wbytes / 1e6:.1f} MB weights, "
              f"{dev} {dt}, {gpu}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"threads {torch.get_num_threads()}, compile={args.compile}")
        print(f"# greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, EOS ignored")
        print(f"# hf = transformers generate (dynamic cache, eager); hf-static = static cache + compiled "
              f"forward ({args.hf_compile_backend}); ratios are ours / theirs")
        refs = {"hf-static": hf_static, "hf": hf}  # the target's reference first
        for b in [int(x) for x in args.batches.split(",")]:
            prompts = prompt_ids(tok, args.prompt_len, b)
            # Ours first, its figure printed at once (a later timeout loses nothing of it); each side is
            # warmed (and compiled) before its timed runs; the best of --repeats counts.
            t_ours, warm_ours, ids_ours = float("inf"), None, None
            for _ in range(args.repeats):
                t, ids_ours, w = time_ours(model, prompts, args.new_tokens, args.compile)
                t_ours, warm_ours = min(t_ours, t), w if warm_ours is None else warm_ours
            ours = b * args.new_tokens / t_ours
            gbs = wbytes * args.new_tokens / t_ours / 1e9  # each decode step reads every weight once
            print(f"result batch={b} impl=phi1 tok_s={ours:.1f} gb_s={gbs:.2f} "
                  f"warm_s={max(0.0, warm_ours - t_ours):.1f}", flush=True)
            tps, same = {}, "-"
            for k, m in refs.items():
                if m is None:
                    continue
                best, warm, ids = float("inf"), None, None
                for _ in range(args.repeats):
                    t, ids, w = time_hf(m, prompts, args.new_tokens, tok.eos_id, static=k == "hf-static")
                    best, warm = min(best, t), w if warm is None else warm
                tps[k] = b * args.new_tokens / best
                # greedy agreement (first 32 tokens: long random-weight runs may drift on near-ties)
                agree = all(a[:32] == h[:32] for a, h in zip(ids_ours, ids))
                same = "yes" if agree and same != "NO" else "NO"
                print(f"result batch={b} impl={k} tok_s={tps[k]:.1f} warm_s={max(0.0, warm - best):.1f} "
                      f"ratio={ours / tps[k]:.3f} same={'yes' if agree else 'NO'}", flush=True)

            def col(k, w, fmt):
                return f"{fmt(tps[k]):>{w}}" if k in tps else f"{'-':>{w}}"
            print(f"{'batch':>5} {'ours tok/s':>11} {'hf tok/s':>10} {'hf-static tok/s':>16} {'vs hf':>6} "
                  f"{'vs static':>9} {'ours GB/s':>10} {'same':>5}")
            print(f"{b:>5} {ours:>11.1f} {col('hf', 10, lambda v: f'{v:.1f}')} "
                  f"{col('hf-static', 16, lambda v: f'{v:.1f}')} {col('hf', 6, lambda v: f'{ours / v:.2f}x')} "
                  f"{col('hf-static', 9, lambda v: f'{ours / v:.2f}x')} {gbs:>10.2f} {same:>5}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
