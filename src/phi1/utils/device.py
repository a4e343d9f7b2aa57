"""The one place that turns a device name and a dtype name into torch objects.

Device: auto (cuda when available, else cpu) | cpu | cuda | cuda:N | mps.
Dtype: auto (bfloat16 on a CUDA device that supports it, else float32) or a name in DTYPES.
A bad or unavailable name is one Phi1Error line naming what is allowed. torch is imported only
when a name is resolved, so checking a config stays cheap.
"""

from __future__ import annotations

import re

from phi1.errors import Phi1Error

# name -> torch attribute; the short names are the training config's precision names.
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
DTYPE_CHOICES = "auto, " + ", ".join(DTYPES)

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def add_device_flags(parser) -> None:
    """--device and --dtype for a command that loads a model; left out, the loader's auto applies."""
    parser.add_argument("--device", help="auto (default: cuda when available) | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", help="auto (default: bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | "
                        "float16")


def device_options(args) -> dict:
    """The --device / --dtype given on the command line (those left out: the loader's defaults)."""
    return {k: getattr(args, k) for k in ("device", "dtype") if getattr(args, k, None) is not None}


def device_ok(name: object) -> bool:
    """Whether `name` is a device name this project accepts (without looking at the hardware)."""
    return isinstance(name, str) and _DEVICE.fullmatch(name) is not None


def check_device(name: object, what: str = "--device") -> None:
    if not device_ok(name):
        raise Phi1Error(f"{what} {name!r}: unknown device; choose one of {DEVICE_CHOICES}")


def check_dtype(name: object, what: str = "--dtype") -> None:
    if name != "auto" and name not in DTYPES:
        raise Phi1Error(f"{what} {name!r}: unknown dtype; choose one of {DTYPE_CHOICES}")


def resolve_device(name: str = "auto", local_rank: int = 0, what: str = "--device"):
    """torch.device for `name`; auto and a bare `cuda` mean this process's GPU (cuda:`local_rank`)."""
    import torch

    check_device(name, what)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Phi1Error(f"{what} {name}: CUDA is not available on this machine; use {what} cpu (or auto)")
        index = int(name[5:]) if name.startswith("cuda:") else local_rank
        if index >= torch.cuda.device_count():
            raise Phi1Error(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                            f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise Phi1Error(f"{what} mps: MPS is not available on this machine; use {what} cpu (or auto)")
    return torch.device(name)


def torch_dtype(name: str, what: str = "--dtype"):
    """torch dtype for a name in DTYPES (not auto)."""
    import torch

    if name not in DTYPES:
        raise Phi1Error(f"{what} {name!r}: unknown dtype; choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def resolve_dtype(name: str, device, what: str = "--dtype"):
    """torch dtype for `name` on `device` (a torch.device); auto = bfloat16 on CUDA with bf16, else float32."""
    import torch

    check_dtype(name, what)
    if name == "auto":
        cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return torch_dtype(name, what)


def dtype_name(dtype) -> str:
    """The canonical name of a torch dtype ("bfloat16"), as used in cache keys and records."""
    return str(dtype).removeprefix("torch.")


def resolve_device_dtype(device: str = "auto", dtype: str = "auto"):
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)
