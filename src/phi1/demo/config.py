"""The demo/ablation recipe: one YAML that sizes every stage of the phi-1 recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from phi1.errors import ConfigError, Phi1Error
from phi1.utils.config import build, read_yaml_mapping

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def demo_kinds() -> dict:
    """The stage kinds of the demo's data half, by name, in the registry's order: every kind whose
    record has a demo place (`phi1.data.stages.base.DemoPlace`)."""
    from phi1.data import stages

    return {name: kind for name, kind in stages.kinds().items() if kind.demo is not None}


class DataSection:
    """The data half of the recipe: one attribute per stage kind of the demo (`demo_kinds`), each that
    kind's own config (its section of the recipe, `data.<kind>`, nested as the dataclass defines it;
    a section left out is the kind's defaults with the demo's `DemoPlace` options). `phi1 demo`
    writes them into `RUN/configs/data.yaml` unchanged."""

    def __init__(self):
        for name, kind in demo_kinds().items():
            setattr(self, name, kind.config(**kind.demo.defaults, **kind.demo.always))


@dataclass
class PackSection:
    val_fraction: float = 0.02  # documents held out for validation loss (pretraining shards)
    finetune_val_fraction: float = 0.05  # the same for the finetuning shards


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
class PruneSection:
    """The pruning study (`phi1 ablate --prune-thresholds`): see phi1.demo.prune."""

    thresholds: list[float] = field(default_factory=lambda: [0.95, 0.9, 0.85, 0.8])
    metric: str = "ast"  # ast (match rate of normalised AST nodes) | embedding (cosine, with `encoder`)
    encoder: str = "hashing"  # the embedding measure's encoder, e.g. hf:Salesforce/codegen-350M-mono
    exercises: list[str] = field(default_factory=list)  # JSONL files / stage dirs; [] = the run's mined exercises
    base: str | None = None  # the model every arm is finetuned from; None = pretrain one as the demo does


@dataclass
class DemoConfig:
    name: str = "demo"
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    pack: PackSection = field(default_factory=PackSection)
    model_preset: str = "tiny"
    pretrain: StageTrainSection = field(default_factory=StageTrainSection)
    finetune: StageTrainSection = field(default_factory=StageTrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    synth: SynthSection = field(default_factory=SynthSection)
    arms: list[ArmSection] = field(default_factory=list)  # ablation only
    prune: PruneSection = field(default_factory=PruneSection)  # the pruning study only


# Where the settings of the flat recipe format (phi1 before the stage configs) live now.
MOVED = {
    "corpus": "data.collect (collect's own fields: python_stdlib, site_packages, sources, exclude, max_bytes, "
              "limit_bytes)",
    "data.dedup_threshold": "data.dedup.threshold", "data.annotate_sample": "data.annotate.sample",
    "data.annotator": "data.annotate.annotator", "data.annotate_endpoint": "data.annotate.endpoint",
    "data.annotate_model": "data.annotate.model", "data.annotate_api_key_env": "data.annotate.api_key_env",
    "data.annotate_max_tokens": "data.annotate.max_tokens", "data.encoder": "data.classify.encoder",
    "data.classifier_head": "data.classify.head", "data.n_estimators": "data.classify.n_estimators",
    "data.label_threshold": "data.classify.threshold", "data.filter_top_fraction": "data.filter.top_fraction",
    "data.filter_keep_tokens": "data.filter.keep_tokens",
    "data.benchmarks": "data.decontaminate.benchmarks (and data.exercises.benchmarks)",
    "data.val_fraction": "pack.val_fraction",
}


def load_demo_config(path: str | Path) -> DemoConfig:
    p = Path(path)
    if not p.exists() and (RECIPES / p).exists():
        p = RECIPES / p
    if not p.exists():
        raise Phi1Error(f"{path}: recipe not found (looked here and in {RECIPES})")
    data = read_yaml_mapping(p, "demo recipe")
    return demo_config_from(data, str(p))


def demo_config_from(data: dict, where: str = "demo recipe") -> DemoConfig:
    """Build and check a demo recipe: each data stage's section through its own config class."""
    from phi1.data.stages.base import check_options

    data = dict(data)
    for old, new in MOVED.items():
        head, _, key = old.partition(".")
        if (key and isinstance(data.get(head), dict) and key in data[head]) or (not key and head in data):
            raise ConfigError(f"{where}: {old} has moved to {new}: each stage's settings now live in its own "
                              "section, named as the stage's config (see recipes/demo-tiny.yaml)")
    sections = data.pop("data", None) or {}
    if not isinstance(sections, dict):
        raise ConfigError(f"{where}: data: expected a mapping of stage sections, got {type(sections).__name__}")
    kinds = demo_kinds()
    unknown = sorted(set(sections) - set(kinds))
    if unknown:
        from phi1.data.stages import RENAMED

        hint = f" (now {RENAMED[unknown[0]]})" if unknown[0] in RENAMED else ""
        raise ConfigError(f"{where}: data.{unknown[0]}: unknown field{hint}; the data stages are {', '.join(kinds)}")
    cfg = build(DemoConfig, data, where)
    for name, kind in kinds.items():
        if name not in sections:  # the section's default (a data stage needs none but the filter's cut)
            if name != "annotate":
                getattr(cfg.data, name).validate()
            continue
        given = sections.get(name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: data.{name}: expected a mapping, got {type(given).__name__}")
        opts = {**kind.demo.always, **given}  # e.g. the score stage's classifier: the one the run trains
        # annotate is checked once the demo's --endpoint is known (phi1.demo.pipeline.annotate_config)
        setattr(cfg.data, name, check_options(kind.config, name, opts, f"{where}: data.{name}",
                                              validate=name != "annotate"))
    return cfg


def resolve_recipe(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    if (RECIPES / name).exists():
        return RECIPES / name
    raise Phi1Error(f"training recipe {name!r} not found (looked here and in {RECIPES})")
