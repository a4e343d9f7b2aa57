"""The two kernels of incremental decoding: prefill into cache rows, and one decode step.

Both the batch generator (`generate.py`) and the serving engine (`engine.py`)
call these, so the compiled fast path is written once. The decode step can be
compiled on CUDA (`torch.compile(mode="reduce-overhead")`, i.e. CUDA graphs):
graphs need fixed shapes, so the compiled step attends over the whole cache
length (slots past each row's position are masked) instead of a kv_len that
grows every token, as gpt-fast does.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from phi1.model.phi import KVCache


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
        h = model.hidden_states(tokens, input_pos=pos, kv_len=T0)           # (B, T0, C)
    last = h[torch.arange(B, device=dev), lens_t - 1]                        # (B, C)
    return model.lm_head(last)                                               # (B, V)


def _step_full_cache(model, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return model(tokens[:, None], input_pos=pos[:, None])[:, -1]


class DecodeStep:
    """`step(tokens (B,), pos (B,), kv_len) -> logits (B, V)` for cache rows [0, B).

    mode "eager": attends to cache slots [0, kv_len), the least work per step.
    mode "full": fixed shapes, attends over the whole cache (kv_len ignored);
    the compiled graph's semantics without compiling, so CPU tests can check them.
    mode "compiled" (CUDA only): "full" compiled into one CUDA graph per batch size.
    """

    MODES = ("eager", "full", "compiled")

    def __init__(self, model, compile: bool = False, mode: str | None = None):
        self.model = model
        self.mode = mode or ("compiled" if compile else "eager")
        if self.mode not in self.MODES:
            raise ValueError(f"mode {self.mode!r}: choose one of {self.MODES}")
        self._fn = None
        if self.mode == "compiled":
            if model.lm_head.weight.device.type != "cuda":
                from phi1.errors import Phi1Error

                raise Phi1Error("--compile: the compiled decode step (CUDA graphs) needs --device cuda")
            self._fn = torch.compile(_step_full_cache, mode="reduce-overhead", fullgraph=True)

    @property
    def compiled(self) -> bool:
        return self.mode == "compiled"

    @property
    def fixed_shape(self) -> bool:
        """Whether every call should use the same batch size (the whole cache)."""
        return self.mode != "eager"

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        if self._fn is not None:
            # CUDA graph outputs are overwritten by the next replay: copy out.
            return self._fn(self.model, tokens, pos).clone()
        if self.mode == "full":
            return _step_full_cache(self.model, tokens, pos)
        return self.model(tokens[:, None], input_pos=pos[:, None], kv_len=kv_len)[:, -1]


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
