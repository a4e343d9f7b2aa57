"""Weight-only group-wise quantization for inference: `--quantize int8|int4` in generate and serve.

Every linear layer's weight is cut into groups of `group_size` input columns; each group keeps
one scale (max |w| / 127 or / 7, symmetric) and its values as int8, or as int4 packed two per
byte. Activations, norms, biases and the embedding stay in the model's dtype; the matmul runs
on the weight dequantized to it (`QuantLinear`), so any device works and the saving is memory.
With int4 the LM head stays int8: a 4-bit output matrix costs the most accuracy per byte saved,
which is also why llama.cpp's 4-bit files keep it wider.

On CUDA, int8 goes through torchao (`Int8WeightOnlyConfig`, per-group), which has fused kernels
there. torchao 0.18 has no CPU int4 weight-only path (its int4 layouts need CUDA or the `mslk`
package) and its CPU int8 matmul measured slower than dequantize + matmul, so on CPU, and for
int4, the layer below is used.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from phi1.errors import Phi1Error

MODES = ("int8", "int4")
GROUP_SIZE = 64
_QMAX = {"int8": 127, "int4": 7}


class QuantLinear(nn.Module):
    """A linear layer holding its weight as group-wise int8 or packed int4 plus one scale per group."""

    def __init__(self, linear: nn.Linear, mode: str, group_size: int = GROUP_SIZE):
        super().__init__()
        w = linear.weight.detach()
        out_f, in_f = w.shape
        if in_f % group_size:
            raise ValueError(f"in_features {in_f} is not a multiple of group size {group_size}")
        self.in_features, self.out_features, self.mode, self.group_size = in_f, out_f, mode, group_size
        g = w.float().reshape(out_f, in_f // group_size, group_size)          # (O, G, gs)
        qmax = _QMAX[mode]
        scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax        # (O, G, 1)
        q = torch.round(g / scale).clamp_(-qmax, qmax).to(torch.int8).reshape(out_f, in_f)
        if mode == "int4":  # two signed nibbles per byte, low nibble first
            u = (q + 8).to(torch.uint8)
            q = (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(w.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """An empty tensor with the layer's device and dtype, for code that reads `lm_head.weight.device`;
        the weight itself is `dequantize()`."""
        return self.scale.new_empty(0)

    def dequantize(self) -> torch.Tensor:
        q = self.qweight
        if self.mode == "int4":
            q = torch.stack(((q & 0xF).to(torch.int8) - 8, (q >> 4).to(torch.int8) - 8), dim=-1)
            q = q.reshape(self.out_features, self.in_features)
        g = q.reshape(self.out_features, -1, self.group_size).to(self.scale.dtype) * self.scale
        return g.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _linears(model: nn.Module):
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _torchao_int8(model: nn.Module, group_size: int) -> bool:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    except ImportError:
        return False
    quantize_(model, Int8WeightOnlyConfig(granularity=PerGroup(group_size)))
    return True


def quantize_model(model: nn.Module, mode: str, group_size: int = GROUP_SIZE) -> str:
    """Quantize `model`'s linear weights in place; returns the backend used ("torchao" or "phi1")."""
    if mode not in MODES:
        raise Phi1Error(f"--quantize {mode}: unknown; choose one of {', '.join(MODES)}")
    dev = model.lm_head.weight.device
    for name, lin in _linears(model):
        if lin.in_features % group_size:
            raise Phi1Error(f"--quantize {mode}: layer {name} has {lin.in_features} inputs, not a multiple of the "
                            f"group size {group_size}")
    if mode == "int8" and dev.type == "cuda" and _torchao_int8(model, group_size):
        return "torchao"
    with torch.no_grad():
        for name, lin in _linears(model):
            m = "int8" if mode == "int4" and name == "lm_head" else mode
            _set(model, name, QuantLinear(lin, m, group_size).to(dev))
    return "phi1"


def weight_bytes(model: nn.Module, mode: str | None = None, dtype: torch.dtype = torch.float32,
                 group_size: int = GROUP_SIZE) -> int:
    """Bytes of the model's parameters in `dtype`, or after `quantize_model(mode)` (scales in `dtype`)."""
    es = torch.tensor([], dtype=dtype).element_size()
    lin_w = {id(m.weight) for _, m in _linears(model)}
    total = sum(p.numel() * es for p in model.parameters() if id(p) not in lin_w)
    for name, m in _linears(model):
        n, groups = m.weight.numel(), m.weight.numel() // group_size
        if mode is None:
            total += n * es
        else:
            bits = 8 if mode == "int8" or name == "lm_head" else 4
            total += n * bits // 8 + groups * es
    return total


def memory_table(model_dir) -> dict[str, int]:
    """Weight bytes of a model directory at fp32, bf16, and with --quantize int8 / int4 (from its config alone)."""
    from phi1.model.family import build_model
    from phi1.model.hf import read_config

    cfg = read_config(model_dir)
    with torch.device("meta"):
        model = build_model(cfg)
    return {"fp32": weight_bytes(model), "bf16": weight_bytes(model, dtype=torch.bfloat16),
            "int8": weight_bytes(model, "int8"), "int4": weight_bytes(model, "int4")}
