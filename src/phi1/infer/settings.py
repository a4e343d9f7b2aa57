"""The one check of sampling settings, shared by `phi1 generate`, `phi1 serve`'s engine, `phi1 eval` and the
library's `generate` (no torch: the CLI checks its flags before it loads a model)."""

from __future__ import annotations

import math

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
