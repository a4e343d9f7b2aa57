"""Recipes, config loading/overrides and the learning-rate schedules."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

import phi1
from phi1.errors import ConfigError
from phi1.train.config import TrainConfig, load_config
from phi1.train.schedule import lr_at

RECIPES = Path(phi1.__file__).parent / "recipes"
TRAIN_RECIPES = ["phi-1-pretrain", "phi-1-small-pretrain", "phi-1-finetune", "phi-1.5", "tiny-pretrain",
                 "tiny-finetune", "test-micro", "phi-3-mini-sft", "phi-3-mini-dpo"]


def leaf_fields(cls):
    """'section.key' for every field of every config section."""
    for section in dataclasses.fields(cls):
        for f in dataclasses.fields(type(section.default_factory())):
            yield f"{section.name}.{f.name}"


@pytest.mark.parametrize("name", TRAIN_RECIPES)
def test_recipes_load_and_document_every_field(name):
    path = RECIPES / f"{name}.yaml"
    cfg = load_config(path)
    lines = path.read_text().splitlines()
    raw = yaml.safe_load(path.read_text())
    for dotted in leaf_fields(TrainConfig):
        section, key = dotted.split(".")
        assert key in raw[section], f"{name}: {dotted} missing"
        line = next(x for x in lines if x.strip().startswith(f"{key}:") or x.strip().startswith(f"{key}: "))
        assert "#" in line or key in ("train", "val"), f"{name}: {dotted} has no comment"
    assert cfg.optimizer.betas == [0.9, 0.98] and cfg.optimizer.eps == 1e-7


def test_paper_hyperparameters():
    pre = load_config(RECIPES / "phi-1-pretrain.yaml")
    assert (pre.train.global_batch, pre.data.seq_len, pre.optimizer.lr, pre.schedule.warmup_steps,
            pre.optimizer.weight_decay, pre.train.max_steps, pre.train.precision, pre.schedule.kind) == \
           (1024, 2048, 1e-3, 750, 0.1, 36000, "fp16", "linear")
    assert pre.model.attention_dropout == pre.model.resid_dropout == 0.1 and 24000 in pre.checkpoint.keep_steps
    small = load_config(RECIPES / "phi-1-small-pretrain.yaml")
    assert small.model.init == "phi-1-small" and small.optimizer == pre.optimizer
    ft = load_config(RECIPES / "phi-1-finetune.yaml")
    assert (ft.train.global_batch, ft.optimizer.lr, ft.schedule.warmup_steps, ft.optimizer.weight_decay,
            ft.train.max_steps, ft.checkpoint.interval) == (256, 1e-4, 50, 0.01, 6000, 1000)
    assert ft.eval.best_metric == "pass@1" and ft.eval.best_mode == "max"


def test_overrides_and_shorthands(tmp_path):
    cfg = load_config(RECIPES / "test-micro.yaml", ["train.max_steps=7", "data.train=/x/shards",
                                                    "optimizer.betas=[0.8, 0.9]", "model.embd_dropout=null"])
    assert cfg.train.max_steps == 7 and cfg.data.train[0].path == "/x/shards" and cfg.data.train[0].weight == 1.0
    assert cfg.optimizer.betas == [0.8, 0.9] and cfg.model.embd_dropout is None
    with pytest.raises(ConfigError, match=r"test-micro\.yaml: config\.train\.max_steps: expected an integer"):
        load_config(RECIPES / "test-micro.yaml", ["train.max_steps=lots"])
    with pytest.raises(ConfigError, match=r"config\.data\.train\[0\]\.weight = -1\.0: must be > 0"):
        load_config(RECIPES / "test-micro.yaml", ["data.train=[{path: a, weight: -1}]"])
    with pytest.raises(ConfigError, match=r"config\.optimizer: expected a mapping"):
        load_config(RECIPES / "test-micro.yaml", ["optimizer=3"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_schedule_values_match_the_formula():
    kw = dict(lr=1e-3, warmup_steps=750, max_steps=36000, min_lr=0.0)
    assert lr_at(0, **kw) == pytest.approx(1e-3 / 750)
    assert lr_at(374, **kw) == pytest.approx(1e-3 * 375 / 750)
    assert lr_at(749, **kw) == pytest.approx(1e-3)
    assert lr_at(750, **kw) == pytest.approx(1e-3)
    # linear decay: halfway through the post-warmup span, half the rate; zero at the end
    assert lr_at(750 + (36000 - 750) // 2, **kw) == pytest.approx(5e-4, rel=1e-4)
    assert lr_at(36000, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(24000, **kw) == pytest.approx(1e-3 * (1 - (24000 - 750) / 35250))
    cos = dict(kw, kind="cosine", min_lr=1e-4)
    assert lr_at(750, **cos) == pytest.approx(1e-3)
    mid = 750 + 35250 // 2
    assert lr_at(mid, **cos) == pytest.approx(1e-4 + 0.45e-3 * (1 + math.cos(math.pi * (mid - 750) / 35250)))
    assert lr_at(36000, **cos) == pytest.approx(1e-4)
    assert lr_at(10, **dict(kw, kind="constant", warmup_steps=0)) == 1e-3
    assert [round(lr_at(s, lr=1e-4, warmup_steps=50, max_steps=6000) / 1e-4, 6) for s in (0, 49, 50, 6000)] == \
           [0.02, 1.0, 1.0, 0.0]


def test_exponent_numbers_parse_as_numbers(tmp_path):
    """YAML 1.1 reads `2e-4` as a string; recipes, --set and demo recipes read it as a float."""
    from phi1.demo.config import load_demo_config
    from phi1.utils.config import load_yaml

    assert load_yaml("a: 2e-4\nb: 1E5\nc: 10\nd: -3e+2\ne: e5\nf: 2e") == \
        {"a": 2e-4, "b": 1e5, "c": 10, "d": -300.0, "e": "e5", "f": "2e"}
    text = (RECIPES / "test-micro.yaml").read_text().replace("lr: 3.0e-3", "lr: 3e-3").replace("eps: 1.0e-7", "eps: 1e-7")
    assert "lr: 3e-3" in text and "eps: 1e-7" in text
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    cfg = load_config(recipe, ["optimizer.lr=2e-4", "schedule.min_lr=1E-5", "train.max_tokens=2e6",
                               "optimizer.betas=[9e-1, 0.98]"])
    assert cfg.optimizer.lr == 2e-4 and isinstance(cfg.optimizer.lr, float) and cfg.optimizer.eps == 1e-7
    assert cfg.schedule.min_lr == 1e-5 and cfg.train.max_tokens == 2_000_000 and isinstance(cfg.train.max_tokens, int)
    assert cfg.optimizer.betas == [0.9, 0.98]
    assert load_config(data={**yaml.safe_load(text), "optimizer": {"lr": "2e-4"}}).optimizer.lr == 2e-4  # JSON-ish
    with pytest.raises(ConfigError, match=r"config\.optimizer\.lr: expected a number, got str 'fast'"):
        load_config(recipe, ["optimizer.lr=fast"])
    demo = tmp_path / "demo.yaml"
    demo.write_text("name: d\npretrain: {recipe: tiny-pretrain.yaml, set: {optimizer.lr: 2e-4}}\n")
    assert load_demo_config(demo).pretrain.set == {"optimizer.lr": 2e-4}
