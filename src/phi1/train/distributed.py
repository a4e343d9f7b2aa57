"""Process-group set-up and model preparation for one or many processes.

The order in which a model is prepared lives here and only here
(`prepare_model`): parallelize -> activation checkpointing -> compile -> shard.
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


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def init_world(device: str = "auto", strategy: str = "ddp", backend: str | None = None) -> World:
    """Join the torchrun process group when WORLD_SIZE > 1; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return World(rank, local_rank, size, dev, strategy if size > 1 else "none")


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def prepare_model(model: nn.Module, world: World, *, activation_checkpointing: bool, compile: bool) -> nn.Module:
    """Parallelize -> activation checkpointing -> compile -> shard/replicate; returns the module to call.

    Tensor/sequence parallelism would go first; the model is small enough that
    data parallelism is all phi-1 needs.
    """
    model.activation_checkpointing = activation_checkpointing
    if compile:
        # Per block under FSDP (each block is one shard unit), whole model otherwise.
        if world.strategy == "fsdp2":
            for blk in model.layers:
                blk.compile()
        else:
            model.compile()
    if world.strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        # Our forward returns (logits, loss) and the trainer never edits them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

        for blk in model.layers:
            fully_shard(blk)
        fully_shard(model)
        return model
    if world.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [world.device.index] if world.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    return model


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
