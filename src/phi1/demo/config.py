"""The demo/ablation recipe: one YAML that sizes every stage of the phi-1 recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from phi1.errors import Phi1Error
from phi1.utils.config import build, read_yaml_mapping

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
    annotator: str | None = None  # llm | rules; None: the judge when an endpoint is given, else rules for sample 0
    annotate_endpoint: str | None = None  # None: `phi1 demo --endpoint`, when given
    annotate_model: str | None = None
    annotate_api_key_env: str | None = None  # the environment variable holding the judge's key
    annotate_max_tokens: int = 512
    encoder: str = "hashing"
    classifier_head: str = "forest"
    n_estimators: int = 100
    label_threshold: float = 3.0
    filter_top_fraction: float = 0.5
    filter_keep_tokens: int | None = None  # instead of filter_top_fraction: the best records up to this many tokens
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
    corpus: CorpusSection = field(default_factory=CorpusSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model_preset: str = "tiny"
    pretrain: StageTrainSection = field(default_factory=StageTrainSection)
    finetune: StageTrainSection = field(default_factory=StageTrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    synth: SynthSection = field(default_factory=SynthSection)
    arms: list[ArmSection] = field(default_factory=list)  # ablation only
    prune: PruneSection = field(default_factory=PruneSection)  # the pruning study only


def load_demo_config(path: str | Path) -> DemoConfig:
    p = Path(path)
    if not p.exists() and (RECIPES / p).exists():
        p = RECIPES / p
    if not p.exists():
        raise Phi1Error(f"{path}: recipe not found (looked here and in {RECIPES})")
    data = read_yaml_mapping(p, "demo recipe")
    return build(DemoConfig, data, str(p))


def resolve_recipe(name: str) -> Path:
    p = Path(name)
    if p.exists():
        return p
    if (RECIPES / name).exists():
        return RECIPES / name
    raise Phi1Error(f"training recipe {name!r} not found (looked here and in {RECIPES})")
