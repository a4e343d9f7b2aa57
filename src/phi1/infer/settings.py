"""Settings without heavy imports (no torch, no fastapi), so a CLI checks its flags before it loads
anything: the one check of sampling settings, shared by `phi1 generate`, `phi1 serve`'s engine,
`phi1 eval`, `phi1 synth` and the library's `generate`; and `ServeConfig`, `phi1 serve`'s settings."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from phi1.errors import Phi1Error

INT64_MAX = 2**63 - 1
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts


def sampling_problem(max_new_tokens, temperature, top_p, top_k, seed) -> str | None:
    """What is wrong with these settings, in one phrase naming the setting, or None when they can run."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        return f"max_new_tokens = {max_new_tokens!r}: must be an integer >= 1"
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        return f"temperature = {temperature!r}: must be a finite number >= 0 (0 = greedy)"
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not math.isfinite(top_p) \
            or not 0 < top_p <= 1:
        return f"top_p = {top_p!r}: must be in (0, 1]"
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= INT64_MAX:
        return f"top_k = {top_k!r}: must be an integer from 0 (off) to 2**63-1"
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not SEED_RANGE[0] <= seed < SEED_RANGE[1]):
        return f"seed = {seed!r}: must be an integer in [-2**63, 2**64)"
    return None


@dataclass
class ServeConfig:
    """Settings of `phi1 serve` (see docs/infer.md)."""

    model_dir: str
    host: str = "127.0.0.1"  # bind address (loopback only by default)
    port: int = 8000  # TCP port (0: any free one)
    api_key_env: str | None = None  # require 'Authorization: Bearer <key>', the key read from this environment variable
    max_batch_size: int = 8  # sequences decoded together (KV-cache slots)
    max_tokens_limit: int | None = None  # largest max_tokens a request may ask for (None: the model's context)
    max_n: int = 16  # most choices per request (prompts x n)
    max_body_mb: float = 8.0  # request bodies above this many MiB get 413
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16
    compile: bool = False  # CUDA: compile the decode step into a CUDA graph
    log_level: str = "info"  # debug | info | warning | error
    quantize: str | None = None  # int8 | int4: weight-only group-wise quantization of the linears (phi1.model.quantize)

    def validate(self) -> None:
        if not Path(self.model_dir, "config.json").exists():
            raise Phi1Error(f"--model {self.model_dir}: no config.json there; give a model directory")
        if not 0 <= self.port <= 65535:
            raise Phi1Error(f"--port {self.port}: must be 0..65535")
        if not 1 <= self.max_batch_size <= 1024:
            raise Phi1Error(f"--max-batch-size {self.max_batch_size}: must be 1..1024")
        if self.max_tokens_limit is not None and self.max_tokens_limit < 1:
            raise Phi1Error(f"--max-tokens-limit {self.max_tokens_limit}: must be at least 1")
        if self.max_n < 1:
            raise Phi1Error(f"--max-n {self.max_n}: must be at least 1")
        if not 0 < self.max_body_mb <= 4096:
            raise Phi1Error(f"--max-body-mb {self.max_body_mb}: must be above 0 and at most 4096")
        if self.quantize not in (None, "int8", "int4"):
            raise Phi1Error(f"--quantize {self.quantize}: choose int8 or int4")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise Phi1Error(f"--log-level {self.log_level}: choose debug, info, warning or error")

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise Phi1Error(f"--api-key-env {self.api_key_env}: that environment variable is unset or empty; "
                            "export the key in it first")
        return key
