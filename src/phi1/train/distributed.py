"""Process-group set-up and model preparation for one or many processes.

The order in which a model is prepared lives here and only here
(`prepare_model`): parallelize -> activation checkpointing -> compile (per block) -> shard.
The training loop calls `prepare_model`, `grad_sync(...)` and the reductions and
never looks at DDP or FSDP itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from phi1.utils.device import resolve_device


@dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # none | ddp | fsdp2

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str = "auto", strategy: str = "ddp", backend: str | None = None) -> World:
    """Join the torchrun process group when WORLD_SIZE > 1; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank, what="config.run.device")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return World(rank, local_rank, size, dev, strategy if size > 1 else "none")


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def compile_blocks(model: nn.Module, **compile_kw) -> None:
    """Compile each block's forward (one graph, reused by every block of the same shape).

    Whole-model compile unrolls every layer into one graph (slow first step for 24 layers);
    per block, the graph is traced once and the other blocks hit its cache entry.
    """
    for blk in model.layers:
        blk.compile(**compile_kw)


@contextlib.contextmanager
def eager_modules(model: nn.Module):
    """Run `model` (and every submodule compiled with Module.compile) uncompiled inside the block.

    Evaluation and generation call the model in eval mode, under no_grad and with other
    shapes; through the compiled blocks that would add graphs to the training frames (and
    can reach the recompile limit). Here they go through the plain modules instead.
    """
    lifted = [(m, m._compiled_call_impl) for m in model.modules()
              if getattr(m, "_compiled_call_impl", None) is not None]
    for m, _ in lifted:
        m._compiled_call_impl = None
    try:
        yield model
    finally:
        for m, fn in lifted:
            m._compiled_call_impl = fn


def prepare_model(model: nn.Module, world: World, *, activation_checkpointing: bool, compile: bool,
                  precision: str = "fp32", compile_kw: dict | None = None) -> nn.Module:
    """Parallelize -> activation checkpointing -> compile -> shard/replicate; returns the module to call.

    Tensor/sequence parallelism would go first; the model is small enough that
    data parallelism is all phi-1 needs. `compile_kw` goes to torch.compile (tests pass a
    counting backend).
    """
    model.activation_checkpointing = activation_checkpointing
    if compile:
        compile_blocks(model, **(compile_kw or {}))
    if world.strategy == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Our forward returns (logits, loss) and the trainer never edits them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        # bf16/fp16: all-gather the parameters in the compute dtype (half the bytes of fp32 on every
        # micro-step), reduce-scatter the gradients in fp32; the sharded master weights stay fp32.
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        mp = (MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32) if half is not None
              else MixedPrecisionPolicy())
        for blk in model.layers:
            fully_shard(blk, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [world.device.index] if world.device.type == "cuda" else None
        # The only buffers are the rotary tables (and KV caches), equal on every rank by
        # construction: no broadcast before each forward.
        return DDP(model, device_ids=ids, broadcast_buffers=False)
    return model


def grad_scaler(precision: str, world: World):
    """fp16's dynamic loss scaler, or None. Under FSDP2 each rank unscales only its gradient shard, so
    the inf/nan check is all-reduced (ShardedGradScaler): every rank skips the same steps."""
    if precision != "fp16":
        return None
    if world.strategy == "fsdp2":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(world.device.type)
    return torch.amp.GradScaler(world.device.type)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


@contextlib.contextmanager
def grad_sync(model: nn.Module, world: World, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if world.strategy == "ddp" and not sync:
        with model.no_sync():
            yield
    elif world.strategy == "fsdp2":
        model.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def all_reduce_mean(x: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world.size
    return x


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
