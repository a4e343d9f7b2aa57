"""Fixed-length training windows from token shards, addressed by a global sample index.

The batch for an optimizer step is a pure function of (seed, step): sample `g`
of the run is window `perm_e[g mod n]` of epoch `e = g // n`, where `perm_e` is a
permutation of the non-overlapping windows seeded by (seed, e). Nothing depends
on iterator state, so a run resumed from a checkpoint at step s reads exactly
the batches an uninterrupted run would, and every rank can compute its own
slice of the global batch without talking to the others.

A weighted mix of sources picks the source of sample g with a generator seeded
by (seed, g); within a source the same (seed, g) addressing is used, so each
source is walked in a shuffled order and sampled with probability `weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from phi1.data.shards import ShardSet, open_split
from phi1.errors import Phi1Error


class TokenStream:
    """Non-overlapping windows of seq_len + 1 tokens over the concatenated shards of a split."""

    def __init__(self, shards: ShardSet, seq_len: int, seed: int = 0):
        self.shards = shards
        self.seq_len = seq_len
        self.seed = seed
        self.starts = np.cumsum([0] + [len(a) for a in shards.arrays])
        total = int(self.starts[-1])
        # Windows overlap by one token so every token is a target exactly once per epoch.
        self.num_windows = max(0, (total - 1) // seq_len)
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        p = self._perm_cache.get(epoch)
        if p is None:
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            p = rng.permutation(self.num_windows)
            self._perm_cache = {epoch: p}  # one epoch at a time: a step never spans more than two
        return p

    def window(self, w: int) -> np.ndarray:
        """Tokens [w*T, w*T + T + 1) of the concatenated stream (may straddle shards)."""
        start, end = w * self.seq_len, w * self.seq_len + self.seq_len + 1
        i = int(np.searchsorted(self.starts, start, side="right") - 1)
        out = []
        while start < end:
            arr, base = self.shards.arrays[i], int(self.starts[i])
            take = min(end, base + len(arr)) - start
            out.append(np.asarray(arr[start - base: start - base + take]))
            start += take
            i += 1
        return np.concatenate(out) if len(out) > 1 else out[0]

    def shuffled(self, g: int) -> np.ndarray:
        """The window of global sample g (shuffled epochs)."""
        epoch, k = divmod(g, self.num_windows)
        return self.window(int(self._perm(epoch)[k]))


@dataclass
class Source:
    path: str
    weight: float = 1.0


class WindowSampler:
    """Batches of (inputs, targets) for global sample indices; deterministic in (seed, index)."""

    def __init__(self, sources: list[Source], split: str, seq_len: int, seed: int = 0):
        if not sources:
            raise Phi1Error(f"data.{split}: no shard directories given")
        self.split = split
        self.streams = []
        for src in sources:
            stream = TokenStream(open_split(src.path, split), seq_len, seed)
            if stream.num_windows == 0:
                raise Phi1Error(
                    f"{src.path}: the {split} split has {stream.shards.tokens} tokens, fewer than one window of "
                    f"seq_len + 1 = {seq_len + 1}; pack more data or lower data.seq_len"
                )
            self.streams.append(stream)
        w = np.array([s.weight for s in sources], dtype=np.float64)
        self.cum = np.cumsum(w / w.sum())
        self.seed = seed
        self.seq_len = seq_len

    @property
    def fingerprints(self) -> list[tuple[str, str | None]]:
        return [(str(s.shards.root), s.shards.fingerprint) for s in self.streams]

    @property
    def num_windows(self) -> int:
        return sum(s.num_windows for s in self.streams)

    def _source_of(self, g: int) -> int:
        if len(self.streams) == 1:
            return 0
        u = np.random.default_rng([self.seed, g, 0x31C]).random()
        return min(int(np.searchsorted(self.cum, u, side="right")), len(self.streams) - 1)

    def sample(self, g: int) -> np.ndarray:
        return self.streams[self._source_of(g)].shuffled(g)

    def batch(self, indices, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, T) int64, for the given global sample indices."""
        rows = np.stack([self.sample(int(g)) for g in indices]).astype(np.int64)  # (B, T+1)
        t = torch.from_numpy(rows)
        x, y = t[:, :-1], t[:, 1:]
        if torch.device(device).type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        return x, y

    def sequential_batch(self, indices, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Unshuffled windows (for validation: the same windows at every eval), cycling over sources."""
        rows = []
        for g in indices:
            s = self.streams[int(g) % len(self.streams)]
            rows.append(s.window((int(g) // len(self.streams)) % s.num_windows))
        t = torch.from_numpy(np.stack(rows).astype(np.int64))
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        return x.to(device), y.to(device)
