"""Device and dtype choice: CUDA + bf16 when available, else CPU + fp32."""

from __future__ import annotations

import torch

from phi1.errors import Phi1Error

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Phi1Error(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    dev = torch.device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    else:
        if dtype not in DTYPES:
            raise Phi1Error(f"--dtype {dtype}: unknown; choose one of {sorted(DTYPES)} or auto")
        dt = DTYPES[dtype]
    return dev, dt
