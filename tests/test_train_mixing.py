"""Mixing by epochs: each source is read in its own shuffled epochs, interleaved by weight, and a
resumed run reads exactly what an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phi1.data.loader import MIX_BLOCK, Source, WindowSampler, block_counts
from phi1.data.shards import MANIFEST, MANIFEST_FORMAT, write_shard
from phi1.errors import Phi1Error
from phi1.train.config import load_config
from phi1.train.trainer import train
from test_train_support import losses, micro_config, pack_stdlib  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SEQ = 8


def labelled_source(root: Path, windows: int, offset: int, fingerprint: str = "test") -> Path:
    """A shard dir whose window w is SEQ copies of id offset + w (plus the last window's extra target)."""
    root.mkdir(parents=True)
    ids = np.repeat(np.arange(offset, offset + windows, dtype=np.uint32), SEQ)
    ids = np.append(ids, np.uint32(offset + windows - 1))
    entry = write_shard(root / "train-0.bin", ids)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "tokenizer": {"fingerprint": fingerprint},
                "splits": {"train": {"documents": 1, "tokens": len(ids),
                                     "shards": [{"file": "train-0.bin", "tokens": len(ids), **entry}]}}}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def seen_counts(sampler: WindowSampler, total: int, n_ids: int) -> np.ndarray:
    seen = np.zeros(n_ids, dtype=np.int64)
    for g in range(total):
        seen[int(sampler.sample(g)[0])] += 1
    return seen


def test_each_window_of_a_source_is_seen_equally_often(tmp_path):
    a = labelled_source(tmp_path / "a", 1600, 0)
    b = labelled_source(tmp_path / "b", 400, 1600)
    sampler = WindowSampler([Source(str(a), 0.8), Source(str(b), 0.2)], "train", SEQ, seed=3)
    total = 4 * MIX_BLOCK  # whole blocks: 0.8 / 0.2 exactly; b sees 8.2 passes, a 2.05
    seen = seen_counts(sampler, total, 2000)
    sa, sb = seen[:1600], seen[1600:]
    assert sa.sum() == 4 * int(block_counts([0.8, 0.2])[0]) and sa.sum() + sb.sum() == total
    assert abs(sb.sum() / total - 0.2) < 1 / MIX_BLOCK
    # the spread of repetitions within a source: max - min <= 1 (sampling with replacement gave 1..16)
    assert sa.max() - sa.min() <= 1 and sb.max() - sb.min() <= 1, (sa.min(), sa.max(), sb.min(), sb.max())
    assert sb.min() == int(sb.sum()) // 400


def test_a_window_repeats_only_after_its_source_was_fully_seen(tmp_path):
    a = labelled_source(tmp_path / "a", 300, 0)
    b = labelled_source(tmp_path / "b", 50, 300)
    sampler = WindowSampler([Source(str(a), 0.7), Source(str(b), 0.3)], "train", SEQ, seed=0)
    by_source: dict[int, list[int]] = {0: [], 1: []}
    for g in range(2000):
        s, k = sampler.locate(g)
        assert k == len(by_source[s])  # the k-th sample of its source, in order: no gaps, no reuse
        by_source[s].append(int(sampler.sample(g)[0]))
    for s, n, off in ((0, 300, 0), (1, 50, 300)):
        ids = by_source[s]
        for e in range(len(ids) // n):  # each full epoch is a permutation of the source's windows
            assert sorted(ids[e * n:(e + 1) * n]) == list(range(off, off + n))
        assert ids[:n] != ids[n:2 * n] or n == 1  # reshuffled each epoch


def test_mixing_is_a_pure_function_of_seed_and_index(tmp_path):
    a = labelled_source(tmp_path / "a", 97, 0)
    b = labelled_source(tmp_path / "b", 13, 97)
    srcs = [Source(str(a), 0.6), Source(str(b), 0.4)]
    first = WindowSampler(srcs, "train", SEQ, seed=5)
    forward = [int(first.sample(g)[0]) for g in range(3 * MIX_BLOCK)]
    fresh = WindowSampler(srcs, "train", SEQ, seed=5)  # a resumed run: new object, any order of queries
    backward = [int(fresh.sample(g)[0]) for g in reversed(range(3 * MIX_BLOCK))][::-1]
    other = WindowSampler(srcs, "train", SEQ, seed=6)
    reseeded = [int(other.sample(g)[0]) for g in range(3 * MIX_BLOCK)]
    assert forward == backward and forward != reseeded


def test_a_weight_too_small_for_a_block_is_refused(tmp_path):
    a = labelled_source(tmp_path / "a", 10, 0)
    b = labelled_source(tmp_path / "b", 10, 10)
    with pytest.raises(Phi1Error, match=r"config\.data\.train\[1\]\.weight = 1e-05: less than 1/4096"):
        WindowSampler([Source(str(a), 1.0), Source(str(b), 1e-5)], "train", SEQ)
    assert block_counts([0.86, 0.14]).tolist() == [3523, 573] and block_counts([1, 1, 1]).sum() == MIX_BLOCK


def test_resume_with_two_sources_is_bit_identical(tmp_path, tokenizer_dir, stdlib_slice):
    """A run stopped at step 4 and extended to 8 logs the losses of one 8-step run, mixing two sources."""
    shards_a = pack_stdlib(tokenizer_dir, stdlib_slice[:1], tmp_path / "a")
    shards_b = pack_stdlib(tokenizer_dir, stdlib_slice[1:2], tmp_path / "b")
    mix = {"train": [{"path": str(shards_a), "weight": 0.7}, {"path": str(shards_b), "weight": 0.3}], "seq_len": 64}

    def cfg(run_dir, steps):
        return load_config(data=micro_config(run_dir, shards_a, tokenizer_dir, data=mix, schedule={"kind": "constant"},
                                             train={"max_steps": steps}, eval={"interval": 0},
                                             checkpoint={"interval": 4}))

    train(cfg(tmp_path / "one", 8))
    train(cfg(tmp_path / "two", 4))
    train(cfg(tmp_path / "two", 8))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9)) and a == b
