"""The two kernels of incremental decoding: prefill into cache rows, and one decode step.

Both the batch generator (`generate.py`) and the serving engine (`engine.py`)
call these, so the compiled fast path is written once. The decode step can be
compiled (`torch.compile(dynamic=False)`; on CUDA mode="reduce-overhead", i.e. CUDA graphs): graphs
need fixed shapes, so the compiled step runs every cache row and attends over a bucketed length
(`kv_buckets`: at most 8 lengths, multiples of 256, up to the cache's; slots past each row's position
are masked), one graph per bucket, instead of a kv_len that grows every token.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from phi1.model.base import KVCache


def weight_bytes(model) -> int:
    """Bytes of parameters a decode step reads (each weight once per step, whatever the batch)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel() * p.element_size()
    return n


def _row_view(cache: KVCache, start: int, n: int) -> KVCache:
    # A KVCache whose buffers are views of rows [start, start + n) of `cache`, so
    # the model's own update() writes straight into those rows of the shared cache.
    view = KVCache.__new__(KVCache)
    nn.Module.__init__(view)
    view.register_buffer("k", cache.k[start : start + n], persistent=False)
    view.register_buffer("v", cache.v[start : start + n], persistent=False)
    return view


@contextlib.contextmanager
def cache_rows(model, start: int, n: int):
    """Within the block, batch row i of the model's cache means cache row start + i."""
    blocks = list(model.layers)
    saved = [b.attn.kv_cache for b in blocks]
    if start == 0:
        yield
        return
    try:
        for b, c in zip(blocks, saved):
            b.attn.kv_cache = _row_view(c, start, n)
        yield
    finally:
        for b, c in zip(blocks, saved):
            b.attn.kv_cache = c


def prefill(model, prompts: list[list[int]], pad: int, start_row: int = 0) -> torch.Tensor:
    """Run prompts through the model into cache rows start_row.., return last-token logits (B, V).

    Prompts are right-padded; padding lands past each row's end in the cache and
    is overwritten by that row's own tokens before anything attends to it.
    """
    dev = model.lm_head.weight.device
    B = len(prompts)
    lens = [len(p) for p in prompts]
    T0 = max(lens)
    tokens = torch.full((B, T0), pad, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    tokens = tokens.to(dev, non_blocking=True)
    pos = torch.arange(T0, device=dev)[None, :].expand(B, T0)
    lens_t = torch.tensor(lens, device=dev)
    with cache_rows(model, start_row, B):
        # every row from position 0 over kv_len = T0: plain causal, so SDPA's is_causal (flash) path
        h = model.hidden_states(tokens, input_pos=pos, kv_len=T0, causal=True)  # (B, T0, C)
    last = h[torch.arange(B, device=dev), lens_t - 1]                        # (B, C)
    return model.lm_head(last)                                               # (B, V)


def kv_buckets(cache_len: int, n: int = 8, multiple: int = 256) -> list[int]:
    """The attended lengths a fixed-shape step uses: at most `n` equal steps (multiples of `multiple`)
    up to `cache_len`, the last one `cache_len` itself. One compiled graph per bucket."""
    step = max(multiple, -(-cache_len // n // multiple) * multiple)
    return sorted({min(b, cache_len) for b in range(step, cache_len + step, step)})


def _step_full_cache(model, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
    # kv_len None: the whole cache. A fixed-shape step passes its bucket (a constant of the graph).
    return model(tokens[:, None], input_pos=pos[:, None], kv_len=kv_len)[:, -1]


class DecodeStep:
    """`step(tokens (B,), pos (B,), kv_len) -> logits (B, V)` for cache rows [0, B).

    mode "eager": attends to cache slots [0, kv_len), the least work per step.
    mode "full": fixed shapes: attends over `bucket(kv_len)` slots (`kv_buckets`: at most 8 lengths up
    to the cache's), masking slots past each row's position; the compiled graph's math uncompiled.
    mode "compiled": "full" through torch.compile(dynamic=False), one graph per bucket (and batch size).
    On CUDA the default is mode="reduce-overhead" (CUDA graphs); `backend` / `compile_mode` choose
    others (CPU: backend="inductor", or a counting backend in tests).
    """

    MODES = ("eager", "full", "compiled")

    def __init__(self, model, compile: bool = False, mode: str | None = None, backend=None,
                 compile_mode: str | None = None):
        self.model = model
        self.mode = mode or ("compiled" if compile else "eager")
        if self.mode not in self.MODES:
            raise ValueError(f"mode {self.mode!r}: choose one of {self.MODES}")
        self._fn = None
        if self.mode == "compiled":
            cuda = model.lm_head.weight.device.type == "cuda"
            if backend is None and not cuda:
                from phi1.errors import Phi1Error

                raise Phi1Error("--compile: the compiled decode step (CUDA graphs) needs --device cuda")
            if compile_mode is None and backend in (None, "inductor") and cuda:
                compile_mode = "reduce-overhead"
            kw = {"mode": compile_mode} if compile_mode else {}
            self._fn = torch.compile(_step_full_cache, backend=backend or "inductor", fullgraph=True,
                                     dynamic=False, **kw)
            self._cuda_graphs = compile_mode == "reduce-overhead"

    @property
    def compiled(self) -> bool:
        return self.mode == "compiled"

    @property
    def fixed_shape(self) -> bool:
        """Whether every call should use the same batch size (the whole cache)."""
        return self.mode != "eager"

    def buckets(self) -> list[int]:
        return kv_buckets(self.model.cache_shape[1])

    def bucket(self, kv_len: int) -> int:
        for b in self.buckets():
            if b >= kv_len:
                return b
        return self.model.cache_shape[1]

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        if self.mode == "eager":
            return self.model(tokens[:, None], input_pos=pos[:, None], kv_len=kv_len)[:, -1]
        b = self.bucket(kv_len)
        if self._fn is None:
            return _step_full_cache(self.model, tokens, pos, b)
        # dynamic=False specializes on the bucket: allow one graph per bucket and a few batch sizes.
        with torch._dynamo.config.patch(recompile_limit=4 * len(self.buckets()) + 8):
            out = self._fn(self.model, tokens, pos, b)
        # CUDA graph outputs are overwritten by the next replay: copy out.
        return out.clone() if self._cuda_graphs else out

    def warmup(self, batch: int) -> int:
        """Compile (and run once) every bucket's graph for `batch` rows at position 0; returns how many.

        Writes cache slot 0 of rows [0, batch): call it before any sequence holds those rows."""
        if self._fn is None:
            return 0
        dev = self.model.lm_head.weight.device
        with torch.inference_mode():
            # Made under inference_mode, as the engine's and generate()'s step inputs are: dynamo guards on
            # a tensor's dispatch keys (and on aliasing: tokens and pos are two tensors, as when serving),
            # so a normal tensor here, or one tensor passed twice, would leave serving a graph to compile.
            tok = torch.zeros(batch, dtype=torch.long, device=dev)
            pos = torch.zeros(batch, dtype=torch.long, device=dev)
            for b in self.buckets():
                for _ in range(2 if self._cuda_graphs else 1):  # CUDA graphs record on the 2nd call
                    self(tok, pos, b)
        return len(self.buckets())


def longrope_switch(model) -> int | None:
    """The position whose token makes a LongRoPE model switch to its long factors (None: no switch).

    At that token transformers recomputes the whole sequence with the long factors (the cached
    keys were rotated with the short ones); `refill_row` does the same for one cache row.
    """
    cfg = model.config
    return cfg.original_max_position_embeddings if getattr(cfg, "longrope", False) else None


def refill_row(model, row: int, ids: list[int]) -> torch.Tensor:
    """Recompute cache row `row` from all of its tokens `ids`; the last token's logits (V,)."""
    return prefill(model, [ids], pad=0, start_row=row)[0]
