"""Incremental decoding with a static KV cache: the one generation core for CLI, server and eval.

Prompts of different lengths share a batch without left padding: each row has
its own positions, right padding is written past a row's end and overwritten
by that row's own tokens as it decodes, and the attention mask admits only
cache slots at or before each query's position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import os

import torch

from phi1.errors import Phi1Error
from phi1.infer.decode import DecodeStep, longrope_switch, prefill, refill_row
from phi1.infer.sampling import sample_next
from phi1.infer.textstream import ids_for_prefix, truncate_at_stop


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class SamplingParams:
    """How a completion is sampled: the one place these defaults live (library, `phi1 generate`)."""

    max_new_tokens: int = 256  # tokens generated at most
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens holding this much probability
    top_k: int = 0  # only the k most likely tokens (0 = all)
    stop: Sequence[str] = field(default_factory=tuple)  # strings that end the completion
    seed: int | None = None  # the sampling seed (None: random)

    def validate(self) -> None:
        from phi1.infer.settings import sampling_problem

        problem = sampling_problem(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.seed)
        if problem is not None:
            raise Phi1Error(problem)


def _ensure_cache(model, batch: int, length: int) -> None:
    shape = model.cache_shape
    if shape is None or shape[0] < batch or shape[1] < length:
        # Grow to the model's context so later calls reuse the allocation.
        model.setup_caches(max(batch, shape[0] if shape else 0), model.config.max_position_embeddings)


def decode_step_for(model, compile: bool | None = None) -> DecodeStep:
    """The model's decode step, built once per model so a compiled graph is reused across calls."""
    if compile is None:
        compile = os.environ.get("PHI1_COMPILE") == "1" and model.lm_head.weight.device.type == "cuda"
    step = getattr(model, "_phi1_decode_step", None)
    if step is None or step.compiled != bool(compile):
        step = DecodeStep(model, compile=bool(compile))
        model._phi1_decode_step = step
    return step


@torch.inference_mode()
def generate_ids(model, prompts: list[list[int]], params: SamplingParams, eos_id: int | None,
                 stop_check=None, sync_every: int | None = None,
                 compile: bool | None = None) -> list[tuple[list[int], str]]:
    """Generate for one batch of token-id prompts; returns (new ids, finish_reason) per row.

    `stop_check(row, new_ids) -> bool` is called at sync points for rows still
    running; returning True ends that row (the caller truncates the text).
    On CUDA the host looks at tokens only every `sync_every` steps, so decoding
    does not wait on a GPU->CPU copy per token. `compile` (CUDA only; default:
    the PHI1_COMPILE=1 environment variable) runs the decode step compiled (a CUDA graph per
    kv-length bucket, see `phi1.infer.decode.DecodeStep`).
    """
    params.validate()
    dev = model.lm_head.weight.device
    B = len(prompts)
    lens = [len(p) for p in prompts]
    if min(lens) == 0:
        raise Phi1Error("a prompt encodes to zero tokens; give at least one token")
    ctx = model.config.max_position_embeddings
    T0 = max(lens)
    if T0 >= ctx:
        raise Phi1Error(f"prompt has {T0} tokens, the model's context is {ctx}; shorten the prompt")
    max_new = min(params.max_new_tokens, ctx - T0)
    if sync_every is None:
        sync_every = 1 if dev.type == "cpu" else 16
    _ensure_cache(model, B, ctx)

    pad = eos_id if eos_id is not None else 0
    temperature = torch.full((B,), float(params.temperature), device=dev)
    top_k = torch.full((B,), int(params.top_k), device=dev, dtype=torch.long)
    top_p = torch.full((B,), float(params.top_p), device=dev)
    sampling = params.temperature > 0  # known on the host: no per-token sync to find out
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(params.seed))
    step_fn = decode_step_for(model, compile)
    switch = longrope_switch(model)
    rows = model.cache_shape[0]
    extra = torch.zeros(rows - B, dtype=torch.long, device=dev) if step_fn.fixed_shape and rows > B else None

    # Prefill: one pass over the (right-padded) prompts; logits only at each row's last token.
    logits = prefill(model, prompts, pad)                                     # (B, V)
    nxt = sample_next(logits, temperature, top_k, top_p, gen, any_sampling=sampling)   # (B,)
    lens_t = torch.tensor(lens, device=dev)
    out = torch.full((B, max_new), pad, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    cur = lens_t.clone()                                                      # next write position per row
    host_done = [False] * B
    n_host = [0] * B                                                          # tokens accepted per row
    reasons = ["length"] * B
    for step in range(max_new):
        out[:, step] = nxt
        if eos_id is not None:
            done |= nxt == eos_id
        last_step = step == max_new - 1
        if (step + 1) % sync_every == 0 or last_step:
            done_l = done.tolist()
            out_l = out[:, : step + 1].tolist()
            for i in range(B):
                if host_done[i]:
                    continue
                ids = out_l[i]
                if done_l[i]:
                    k = ids.index(eos_id) if eos_id in ids else len(ids)
                    n_host[i], host_done[i], reasons[i] = k, True, "stop"
                    continue
                n_host[i] = len(ids)
                if stop_check is not None and stop_check(i, ids):
                    host_done[i], reasons[i] = True, "stop"
                    done[i] = True
            if all(host_done) or last_step:
                break
        # Decode one token for every row at its own position.
        kv_len = T0 + step + 1
        if extra is None:
            logits = step_fn(nxt, cur, kv_len)                               # (B, V)
        else:  # fixed shapes: every cache row steps (the spare ones at position 0), so one graph per bucket
            logits = step_fn(torch.cat([nxt, extra]), torch.cat([cur, extra]), kv_len)[:B]
        if switch is not None:  # a LongRoPE row reaching its long range is recomputed, as transformers does
            for i in (cur == switch).nonzero().flatten().tolist():
                logits[i] = refill_row(model, i, prompts[i] + out[i, : step + 1].tolist())
        cur = cur + 1
        nxt = sample_next(logits, temperature, top_k, top_p, gen, any_sampling=sampling)
    results = []
    out_l = out.tolist()
    for i in range(B):
        results.append((out_l[i][: n_host[i]], reasons[i]))
    return results


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, stop: Sequence[str] = (), seed: int | None = None,
             batch_size: int = 16, *, compile: bool | None = None) -> list[Completion]:
    """Complete each prompt; stop strings are cut from the returned text (as OpenAI's API does).

    `compile=True` (CUDA) runs the decode step as a CUDA graph; see `generate_ids`.
    """
    params = SamplingParams(max_new_tokens, temperature, top_p, top_k, tuple(stop), seed)
    params.validate()
    if batch_size < 1:
        raise Phi1Error(f"batch_size = {batch_size}: must be at least 1")
    encoded = tokenizer.encode_batch(list(prompts))
    prefix = getattr(model, "prefix_ids", None)
    if prefix:  # a transformers model whose tokenizer starts every text with BOS
        encoded = [list(prefix) + e for e in encoded]
    results: list[Completion] = []
    stop = tuple(s for s in stop if s)

    def stop_check(_row, ids):
        return bool(stop) and truncate_at_stop(tokenizer.decode(ids), stop)[1]

    # Sort by length so each batch pads little; restore the order at the end.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    by_index: dict[int, Completion] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if hasattr(model, "generate_ids"):  # any other causal LM: transformers' generate (phi1.model.anylm)
            outs = model.generate_ids([encoded[i] for i in idx], max_new_tokens=max_new_tokens,
                                      temperature=temperature, top_p=top_p, top_k=top_k, eos_id=tokenizer.eos_id,
                                      stop_check=stop_check if stop else None,
                                      seed=None if seed is None else seed + start)
        else:
            outs = generate_ids(model, [encoded[i] for i in idx], params, tokenizer.eos_id,
                                stop_check=stop_check if stop else None, compile=compile)
        for i, (ids, reason) in zip(idx, outs):
            text = tokenizer.decode(ids)
            text, hit = truncate_at_stop(text, stop)
            if hit:
                reason = "stop"
                ids = ids_for_prefix(tokenizer, ids, text)
            by_index[i] = Completion(text, ids, reason, len(encoded[i]), len(ids))
    results = [by_index[i] for i in range(len(encoded))]
    return results

