"""The single-process trainer on real packed stdlib code: learning, overfitting, checkpoints, HF parity."""

from __future__ import annotations

import json

import pytest
import torch

from phi1.data.pack import pack
from phi1.model.hf import load_model_dir
from phi1.train import checkpoint as ckpt_io
from phi1.train.config import load_config
from phi1.train.trainer import train
from test_train_support import losses, micro_config, pack_stdlib  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer_dir, stdlib_slice):
    return pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path_factory.mktemp("packed"))


def test_loss_falls_on_stdlib_and_checkpoints_rotate(tmp_path, shards, tokenizer_dir):
    run_dir = tmp_path / "learn"
    cfg = load_config(data=micro_config(run_dir, shards, tokenizer_dir,
                                        train={"max_steps": 40, "micro_batch": 8, "global_batch": 16},
                                        checkpoint={"interval": 10, "keep_last_k": 2}))
    result = train(cfg)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in recs if "val_loss" in r]
    # untrained ~ ln(1024) = 6.93; the first eval is after 10 steps
    assert len(val) == 4 and val[-1] < val[0] - 0.3 and val[-1] < 6.0, val
    train_losses = losses(run_dir)
    assert sorted(train_losses) == list(range(1, 41))
    assert {"lr", "grad_norm", "tokens_per_s", "mfu"} <= set(recs[0]) and recs[0]["mfu"] is None
    root = ckpt_io.checkpoints_dir(run_dir)
    best = json.loads((root / "best.json").read_text())
    assert best["metric"] == "val_loss" and best["value"] == min(val)
    kept = ckpt_io.list_steps(root)
    assert kept[-2:] == [30, 40] and best["step"] in kept and len(kept) <= 3
    assert (root / "latest").read_text().strip() == "step-40" and result["step"] == 40
    assert (run_dir / "loss.png").stat().st_size > 1000
    state = json.loads((root / "step-40" / "state.json").read_text())
    assert state["samples"] == 40 * 16 and state["tokens"] == 40 * 16 * 64


def test_overfits_one_batch(tmp_path, tokenizer_dir):
    text = tmp_path / "one.jsonl"
    text.write_text(json.dumps({"text": "def add(a, b):\n    return a + b\n" * 6}) + "\n")
    shards = tmp_path / "one"
    m = pack(tokenizer_dir, [text], shards, workers=1)
    assert 65 <= m["splits"]["train"]["tokens"] < 129  # exactly one window of 64 + 1 tokens
    run_dir = tmp_path / "overfit"
    cfg = load_config(data=micro_config(run_dir, shards, tokenizer_dir,
                                        optimizer={"lr": 1e-2, "weight_decay": 0.0},
                                        schedule={"kind": "constant", "warmup_steps": 5},
                                        train={"max_steps": 80, "micro_batch": 2, "global_batch": 2},
                                        eval={"interval": 0}, checkpoint={"interval": 0}))
    train(cfg)
    curve = losses(run_dir)
    assert curve[1] > 6.0 and curve[80] < 0.3, (curve[1], curve[80])


def test_checkpoint_loads_in_transformers_with_same_logits(tmp_path, shards, tokenizer_dir):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "hf"
    cfg = load_config(data=micro_config(run_dir, shards, tokenizer_dir, train={"max_steps": 3},
                                        eval={"interval": 0}, checkpoint={"interval": 0}))
    train(cfg)
    model_dir = ckpt_io.latest_checkpoint(run_dir) / "model"
    ours = load_model_dir(model_dir).eval()
    theirs = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("precision,extra", [("fp16", {}), ("bf16", {"activation_checkpointing": True})])
def test_mixed_precision_paths_run(tmp_path, shards, tokenizer_dir, precision, extra):
    """fp16 goes through the GradScaler (as the paper trained), bf16 through autocast; both learn."""
    run_dir = tmp_path / precision
    cfg = load_config(data=micro_config(run_dir, shards, tokenizer_dir,
                                        train={"max_steps": 4, "precision": precision, **extra},
                                        eval={"interval": 0}, checkpoint={"interval": 0}))
    train(cfg)
    curve = losses(run_dir)
    assert sorted(curve) == [1, 2, 3, 4] and curve[4] < curve[1]
    trainer_state = torch.load(ckpt_io.latest_checkpoint(run_dir) / "trainer.pt", weights_only=False)
    assert (trainer_state["scaler"] is not None) == (precision == "fp16")


def test_best_checkpoint_by_callback_metric_survives_pruning(tmp_path, shards, tokenizer_dir):
    run_dir = tmp_path / "cb"
    cfg = load_config(data=micro_config(
        run_dir, shards, tokenizer_dir, train={"max_steps": 9},
        eval={"interval": 3, "callback": "test_train_support:make_scripted_callback",
              "callback_args": {"scores": [0.1, 0.7, 0.4]}, "best_metric": "score", "best_mode": "max"},
        checkpoint={"interval": 3, "keep_last_k": 1}))
    result = train(cfg)
    root = ckpt_io.checkpoints_dir(run_dir)
    assert json.loads((root / "best.json").read_text()) == {"step": 6, "metric": "score", "value": 0.7}
    assert ckpt_io.list_steps(root) == [6, 9] and result["best"] == 0.7
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["score"] for r in recs if "score" in r] == [0.1, 0.7, 0.4]
