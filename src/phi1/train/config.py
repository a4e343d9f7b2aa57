"""Training configuration: nested typed dataclasses loaded from YAML and validated.

Every field is documented in the recipe files (src/phi1/recipes/*.yaml). An
unknown key, a wrong type or a bad value fails with a message that names the
dotted field path, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from phi1.errors import ConfigError
from phi1.utils.config import build, load_yaml, read_yaml_mapping
from phi1.utils.device import DEVICE_CHOICES, device_ok


@dataclass
class RunSection:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass
class ModelSection:
    init: str = "tiny"  # a preset name, or an existing HF-format model directory to continue from
    tokenizer: str | None = None  # required with a preset; defaults to the model directory
    attention_dropout: float | None = None  # None keeps the model's own value
    resid_dropout: float | None = None
    embd_dropout: float | None = None


@dataclass
class SourceSection:
    _shorthand_field: typing.ClassVar[str] = "path"  # `train: DIR` means one source of weight 1
    path: str = ""
    weight: float = 1.0


@dataclass
class DataSection:
    train: list[SourceSection] = field(default_factory=list)
    val: list[SourceSection] = field(default_factory=list)  # empty: the train dirs' val split
    seq_len: int = 2048
    format: str = "tokens"  # tokens (shard dirs) | chat (messages; loss on assistant tokens) | preference (dpo)


@dataclass
class OptimizerSection:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-7
    weight_decay: float = 0.1
    fused: bool | None = None  # None: fused on CUDA, plain elsewhere


@dataclass
class ScheduleSection:
    kind: str = "linear"  # linear | cosine | constant (all after linear warmup)
    warmup_steps: int = 750
    min_lr: float = 0.0


@dataclass
class TrainSection:
    micro_batch: int = 8
    global_batch: int = 1024  # sequences per optimizer step, over all ranks and micro-steps
    max_steps: int | None = None
    max_tokens: int | None = None
    grad_clip: float | None = 1.0
    precision: str = "bf16"  # bf16 | fp16 | fp32
    compile: bool = False
    activation_checkpointing: bool = False
    log_interval: int = 10
    kind: str = "lm"  # lm (next-token loss: pretraining, SFT) | dpo (preference pairs; see the dpo section)


@dataclass
class DpoSection:
    beta: float = 0.1  # strength of the pull towards the reference (IPO: its tau)
    loss: str = "sigmoid"  # sigmoid (DPO; with label_smoothing, conservative DPO) | ipo | robust
    label_smoothing: float = 0.0  # assumed probability that a pair's preference is flipped, in [0, 0.5)
    reference: str | None = None  # model directory of the frozen reference; None = model.init
    precompute_ref: bool = True  # reference log-probs computed once into RUN/ref_logps*.pt; false = keep it loaded
    identical: str = "skip"  # pairs whose chosen equals rejected (nothing to learn): skip (counted) | refuse | keep


@dataclass
class EvalSection:
    interval: int = 1000  # steps between evaluations; 0 disables
    batches: int = 20  # validation micro-batches per rank
    callback: str | None = None  # "package.module:factory" returning (model, tokenizer) -> dict
    callback_args: dict = field(default_factory=dict)
    best_metric: str = "val_loss"
    best_mode: str = "min"  # min | max


@dataclass
class CheckpointSection:
    interval: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_last_k: int = 3  # 0 keeps all
    keep_steps: list[int] = field(default_factory=list)  # never pruned (e.g. phi-1-base = step 24000)


@dataclass
class DistributedSection:
    strategy: str = "ddp"  # ddp | fsdp2 (used when WORLD_SIZE > 1)
    backend: str | None = None  # None: nccl on CUDA, gloo on CPU


@dataclass
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    dpo: DpoSection = field(default_factory=DpoSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



def _check(cond: bool, where: str, value, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{where} = {value!r}: {allowed}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Value checks that types alone cannot express."""
    t, o, s, e, c = cfg.train, cfg.optimizer, cfg.schedule, cfg.eval, cfg.checkpoint
    _check(bool(cfg.run.name) and "/" not in cfg.run.name, "config.run.name", cfg.run.name,
           "must be a non-empty name without '/'")
    _check(device_ok(cfg.run.device), "config.run.device", cfg.run.device, f"allowed: {DEVICE_CHOICES}")
    _check(bool(cfg.data.train), "config.data.train", cfg.data.train, "give at least one shard directory")
    for name, srcs in (("train", cfg.data.train), ("val", cfg.data.val)):
        for i, src in enumerate(srcs):
            _check(bool(src.path), f"config.data.{name}[{i}].path", src.path, "must name a shard directory")
            _check(src.weight > 0, f"config.data.{name}[{i}].weight", src.weight, "must be > 0")
    _check(cfg.data.seq_len > 0, "config.data.seq_len", cfg.data.seq_len, "must be a positive integer")
    _check(cfg.data.format in ("tokens", "chat", "preference"), "config.data.format", cfg.data.format,
           "allowed: tokens, chat, preference")
    _check(t.kind in ("lm", "dpo"), "config.train.kind", t.kind, "allowed: lm, dpo")
    _check((t.kind == "dpo") == (cfg.data.format == "preference"), "config.data.format", cfg.data.format,
           "train.kind dpo reads data.format preference, and preference data is for train.kind dpo")
    dp = cfg.dpo
    _check(dp.beta > 0, "config.dpo.beta", dp.beta, "must be > 0")
    _check(dp.loss in ("sigmoid", "ipo", "robust"), "config.dpo.loss", dp.loss, "allowed: sigmoid, ipo, robust")
    _check(0 <= dp.label_smoothing < 0.5, "config.dpo.label_smoothing", dp.label_smoothing, "must be in [0, 0.5)")
    _check(dp.identical in ("skip", "refuse", "keep"), "config.dpo.identical", dp.identical,
           "allowed: skip, refuse, keep")
    _check(t.micro_batch > 0, "config.train.micro_batch", t.micro_batch, "must be a positive integer")
    _check(t.global_batch > 0 and t.global_batch % t.micro_batch == 0, "config.train.global_batch", t.global_batch,
           f"must be a positive multiple of train.micro_batch ({t.micro_batch})")
    _check(t.max_steps is not None or t.max_tokens is not None, "config.train.max_steps", t.max_steps,
           "set train.max_steps or train.max_tokens")
    for name in ("max_steps", "max_tokens", "log_interval"):
        v = getattr(t, name)
        _check(v is None or v > 0, f"config.train.{name}", v, "must be a positive integer")
    _check(t.grad_clip is None or t.grad_clip > 0, "config.train.grad_clip", t.grad_clip, "must be > 0 or null")
    _check(t.precision in ("bf16", "fp16", "fp32"), "config.train.precision", t.precision, "allowed: bf16, fp16, fp32")
    _check(o.lr > 0, "config.optimizer.lr", o.lr, "must be > 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "config.optimizer.betas", o.betas,
           "must be two numbers in [0, 1)")
    _check(o.eps > 0, "config.optimizer.eps", o.eps, "must be > 0")
    _check(o.weight_decay >= 0, "config.optimizer.weight_decay", o.weight_decay, "must be >= 0")
    _check(s.kind in ("linear", "cosine", "constant"), "config.schedule.kind", s.kind,
           "allowed: linear, cosine, constant")
    _check(s.warmup_steps >= 0, "config.schedule.warmup_steps", s.warmup_steps, "must be >= 0")
    _check(0 <= s.min_lr <= o.lr, "config.schedule.min_lr", s.min_lr, f"must be in [0, optimizer.lr={o.lr}]")
    for name in ("attention_dropout", "resid_dropout", "embd_dropout"):
        v = getattr(cfg.model, name)
        _check(v is None or 0 <= v < 1, f"config.model.{name}", v, "must be a probability in [0, 1) or null")
    _check(e.interval >= 0, "config.eval.interval", e.interval, "must be >= 0 (0 disables)")
    _check(e.batches > 0, "config.eval.batches", e.batches, "must be a positive integer")
    _check(e.best_mode in ("min", "max"), "config.eval.best_mode", e.best_mode, "allowed: min, max")
    _check(e.callback is None or ":" in e.callback, "config.eval.callback", e.callback,
           "must look like 'package.module:factory'")
    _check(c.interval >= 0, "config.checkpoint.interval", c.interval, "must be >= 0")
    _check(all(k > 0 for k in c.keep_steps), "config.checkpoint.keep_steps", c.keep_steps,
           "must be positive step numbers")
    _check(c.keep_last_k >= 0, "config.checkpoint.keep_last_k", c.keep_last_k, "must be >= 0 (0 keeps all)")
    _check(cfg.distributed.strategy in ("ddp", "fsdp2"), "config.distributed.strategy", cfg.distributed.strategy,
           "allowed: ddp, fsdp2")
    _check(cfg.distributed.backend in (None, "nccl", "gloo"), "config.distributed.backend",
           cfg.distributed.backend, "allowed: nccl, gloo, null")
    return cfg


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set a.b.c=value` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.max_steps=100")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = load_yaml(raw)
    return data


def set_fields(data: dict, sets: dict) -> dict:
    """Set dotted keys (`{"train.max_steps": 100}`, as `--set` names them) in a raw config dict, in order."""
    for key, value in sets.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None) -> TrainConfig:
    """Read a YAML recipe (or a dict), apply overrides, build and validate the config."""
    if data is None:
        data = read_yaml_mapping(path, "config")
    data = apply_overrides(copy.deepcopy(data), list(overrides))
    try:
        return validate(build(TrainConfig, data))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
