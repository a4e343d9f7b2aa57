"""Kept for callers outside the package (bench/decode.py): device and dtype choice lives in
phi1.utils.device; import it from there."""

from __future__ import annotations

from phi1.utils.device import DTYPES, resolve_device_dtype

__all__ = ["DTYPES", "resolve_device_dtype"]
