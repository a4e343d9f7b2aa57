"""The demo/ablation recipe: one YAML that sizes every stage of the phi-1 recipe."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phi1.errors import ConfigError, Phi1Error

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class CorpusSection:
    python_stdlib: bool = True
    site_packages: bool = False
    paths: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    max_bytes: int = 200_000
    limit_mb: float = 0.0


@dataclass
class DataSection:
    dedup_threshold: float = 0.85
    annotate_sample: int = 0
    annotate_endpoint: str | None = None
    annotate_model: str | None = None
    encoder: str = "hashing"
    n_estimators: int = 100
    label_threshold: float = 3.0
    filter_top_fraction: float = 0.5
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval"])
    val_fraction: float = 0.02


@dataclass
class TokenizerSection:
    path: str | None = None
    vocab_size: int = 4096


@dataclass
class StageTrainSection:
    recipe: str = ""
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSection:
    max_problems: int | None = None
    max_new_tokens: int = 128
    batch_size: int = 32
    workers: int = 0


@dataclass
class SynthSection:
    textbooks: int = 0
    exercises: int = 0
    concurrency: int = 8


@dataclass
class ArmSection:
    name: str = ""
    data: str = "filtered"  # unfiltered | filtered | filtered+synthetic


@dataclass
class DemoConfig:
    name: str = "demo"
    corpus: CorpusSection = field(default_factory=CorpusSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model_preset: str = "tiny"
    pretrain: StageTrainSection = field(default_factory=StageTrainSection)
    finetune: StageTrainSection = field(default_factory=StageTrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    synth: SynthSection = field(default_factory=SynthSection)
    arms: list[ArmSection] = field(default_factory=list)  # ablation only


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(names)}")
    kw = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kw[k] = _build(tp, v, f"{where}.{k}")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            if not isinstance(v, list):
                raise ConfigError(f"{where}.{k}: expected a list")
            kw[k] = [_build(typing.get_args(tp)[0], x, f"{where}.{k}[{i}]") for i, x in enumerate(v)]
        else:
            kw[k] = _check_type(v, tp, f"{where}.{k}")
    return cls(**kw)


def _check_type(v, tp, where):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if v is None and type(None) in args:
            return v
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return v
    if origin is list:
        if not isinstance(v, list):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        return v
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {v!r}")
        return v
    if tp is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if tp is bool and not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true/false, got {v!r}")
    if tp is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise ConfigError(f"{where}: expected an integer, got {v!r}")
    if tp is str and not isinstance(v, str):
        raise ConfigError(f"{where}: expected a string, got {v!r}")
    return v


def load_demo_config(path: str | Path) -> DemoConfig:
    p = Path(path)
    if not p.exists() and (RECIPES / p).exists():
        p = RECIPES / p
    if not p.exists():
        raise Phi1Error(f"{path}: recipe not found (looked here and in {RECIPES})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise Phi1Error(f"{p}: malformed YAML ({exc})") from None
    return _build(DemoConfig, data, str(p))


def resolve_recipe(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    if (RECIPES / name).exists():
        return RECIPES / name
    raise Phi1Error(f"training recipe {name!r} not found (looked here and in {RECIPES})")
