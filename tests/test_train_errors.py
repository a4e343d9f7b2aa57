"""Bad inputs fail before training with a message naming the field or file; a full disk loses nothing."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess

import pytest

from phi1.data.pack import pack
from phi1.errors import ConfigError, Phi1Error
from phi1.model.hf import load_model_dir
from phi1.train import checkpoint as ckpt_io
from phi1.train.config import load_config
from phi1.train.trainer import train
from test_train_support import (env_one_thread, micro_config, pack_stdlib,  # noqa: F401
                                phi1_cmd, write_config)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer_dir, stdlib_slice):
    return pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path_factory.mktemp("packed"))


def cfg_with(tmp_path, shards, tokenizer_dir, **sections):
    return micro_config(tmp_path / "run", shards, tokenizer_dir, **sections)


def test_unknown_key_and_wrong_type_name_the_field(tmp_path, shards, tokenizer_dir):
    raw = cfg_with(tmp_path, shards, tokenizer_dir, train={"max_step": 3})
    with pytest.raises(ConfigError, match=r"config\.train\.max_step: unknown field"):
        load_config(data=raw)
    raw = cfg_with(tmp_path, shards, tokenizer_dir, optimizer={"lr": "fast"})
    with pytest.raises(ConfigError, match=r"config\.optimizer\.lr: expected a number, got str 'fast'"):
        load_config(data=raw)
    raw = cfg_with(tmp_path, shards, tokenizer_dir, train={"precision": "fp8"})
    with pytest.raises(ConfigError, match=r"config\.train\.precision = 'fp8': allowed: bf16, fp16, fp32"):
        load_config(data=raw)
    raw = cfg_with(tmp_path, shards, tokenizer_dir, train={"global_batch": 6})
    with pytest.raises(ConfigError, match=r"config\.train\.global_batch = 6"):
        load_config(data=raw)


def test_cli_reports_one_line_and_exit_2(tmp_path, shards, tokenizer_dir):
    path = write_config(tmp_path / "bad.yaml", cfg_with(tmp_path, shards, tokenizer_dir, eval={"intervall": 5}))
    r = subprocess.run(phi1_cmd("train", str(path)), capture_output=True, text=True, env=env_one_thread(),
                       timeout=120)
    assert r.returncode == 2 and "config.eval.intervall: unknown field" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(phi1_cmd("train", str(path), "--set", "eval.intervall"), capture_output=True, text=True,
                       env=env_one_thread(), timeout=120)
    assert r.returncode == 2 and "expected key=value" in r.stderr


def test_shards_from_another_tokenizer(tmp_path, shards, tokenizer_dir):
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer"]["fingerprint"] = "0123456789abcdef"  # as if packed with a different vocabulary
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Phi1Error, match=r"other/manifest\.json: shards were made with tokenizer 0123456789abcdef"):
        train(load_config(data=cfg_with(tmp_path, other, tokenizer_dir)))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_seq_len_over_model_maximum(tmp_path, shards, tokenizer_dir):
    raw = cfg_with(tmp_path, shards, tokenizer_dir, data={"seq_len": 512})  # micro: 256 positions
    with pytest.raises(ConfigError, match=r"config\.data\.seq_len = 512: exceeds the model's max_position"):
        train(load_config(data=raw))


def test_empty_dataset(tmp_path, tokenizer_dir):
    doc = tmp_path / "tiny.jsonl"
    doc.write_text(json.dumps({"text": "x = 1\n"}) + "\n")
    small = tmp_path / "small"
    pack(tokenizer_dir, [doc], small, workers=1)
    with pytest.raises(Phi1Error, match=r"small: the train split has \d+ tokens, fewer than one window"):
        train(load_config(data=cfg_with(tmp_path, small, tokenizer_dir)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(Phi1Error, match="no documents with text"):
        pack(tokenizer_dir, [empty], tmp_path / "e", workers=1)


def test_checkpoint_of_another_shape_and_resume_without_checkpoint(tmp_path, shards, tokenizer_dir):
    with pytest.raises(Phi1Error, match="--resume given but there is no checkpoint"):
        train(load_config(data=cfg_with(tmp_path, shards, tokenizer_dir)), resume=True)
    raw = cfg_with(tmp_path, shards, tokenizer_dir, train={"max_steps": 2}, eval={"interval": 0})
    train(load_config(data=raw))
    raw["model"]["init"] = "tiny"
    with pytest.raises(Phi1Error, match=r"step-2/model/config\.json: checkpoint has hidden_size=64"):
        train(load_config(data=raw))


def test_disk_full_mid_checkpoint_keeps_previous(tmp_path, shards, tokenizer_dir, monkeypatch):
    raw = cfg_with(tmp_path, shards, tokenizer_dir, train={"max_steps": 10}, eval={"interval": 0},
                   checkpoint={"interval": 5, "keep_last_k": 1})
    real = ckpt_io._write_trainer_state

    def filling(path, obj):
        if ".step-10." in str(path):
            with open(path, "wb") as fh:
                fh.write(b"\0" * 1000)  # partial bytes, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(ckpt_io, "_write_trainer_state", filling)
    run_dir = tmp_path / "run"
    with pytest.raises(Phi1Error, match=r"step-10: checkpoint not written \(No space left on device\); "
                                        r"the previous checkpoint step-5 is intact"):
        train(load_config(data=raw))
    root = ckpt_io.checkpoints_dir(run_dir)
    assert (root / "latest").read_text().strip() == "step-5"
    assert ckpt_io.list_steps(root) == [5] and not list(root.glob(".step-*"))
    load_model_dir(root / "step-5" / "model")
    # With space again, the run resumes from step 5 and finishes.
    monkeypatch.setattr(ckpt_io, "_write_trainer_state", real)
    assert train(load_config(data=raw), resume=True)["step"] == 10
