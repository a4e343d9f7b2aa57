"""Fixed-length training windows from token shards, addressed by a global sample index.

The batch for an optimizer step is a pure function of (seed, step): sample `g`
of the run is window `perm_e[g mod n]` of epoch `e = g // n`, where `perm_e` is a
permutation of the non-overlapping windows seeded by (seed, e). Nothing depends
on iterator state, so a run resumed from a checkpoint at step s reads exactly
the batches an uninterrupted run would, and every rank can compute its own
slice of the global batch without talking to the others.

A weighted mix of sources is read by epochs too. The global samples are cut into
blocks of MIX_BLOCK; every block holds exactly n_i = round(MIX_BLOCK * weight_i)
samples of source i (largest remainders), in an order shuffled by (seed, block).
Sample g is then the k-th sample of its source, k = block * n_i + its rank among
that source's positions in the block, and k addresses the source's own shuffled
epochs as above. So a window of a source is seen again only after every window
of that source has been seen (the repetitions of any two windows of one source
differ by at most one), and the mix is still a pure function of (seed, g).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from phi1.data.shards import ShardSet, open_split
from phi1.errors import Phi1Error

MIX_BLOCK = 4096  # samples per interleaving block: weights are realised to 1/4096, exactly per block


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
            # Two epochs at a time: a step's indices rise, so it never spans more than two.
            self._perm_cache = {e: q for e, q in self._perm_cache.items() if e == epoch - 1}
            self._perm_cache[epoch] = p
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

    def shuffled(self, k: int) -> np.ndarray:
        """The k-th window read from this stream (shuffled epochs: epoch k // num_windows)."""
        epoch, i = divmod(k, self.num_windows)
        return self.window(int(self._perm(epoch)[i]))


def block_counts(weights: list[float], split: str = "train") -> np.ndarray:
    """Samples per MIX_BLOCK of each source: the weights' shares, rounded by largest remainder."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * MIX_BLOCK
    n = np.floor(exact).astype(np.int64)
    n[np.argsort(-(exact - n), kind="stable")[: MIX_BLOCK - int(n.sum())]] += 1
    if len(w) > 1 and n.min() == 0:
        i = int(np.argmin(n))
        raise Phi1Error(f"config.data.{split}[{i}].weight = {weights[i]}: less than 1/{MIX_BLOCK} of the mix "
                        "(the mix is realised in blocks of that many samples); raise it or drop the source")
    return n


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
        self.per_block = block_counts([s.weight for s in sources], split)
        self.seed = seed
        self.seq_len = seq_len
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def fingerprints(self) -> list[tuple[str, str | None]]:
        return [(str(s.shards.root), s.shards.fingerprint) for s in self.streams]

    @property
    def num_windows(self) -> int:
        return sum(s.num_windows for s in self.streams)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, rank of the position among its source's) for block b."""
        blk = self._blocks.get(b)
        if blk is None:
            order = np.repeat(np.arange(len(self.streams)), self.per_block)
            order = np.random.default_rng([self.seed, b, 0x31C]).permutation(order)
            rank = np.empty(MIX_BLOCK, dtype=np.int64)
            for s in range(len(self.streams)):
                at = np.flatnonzero(order == s)
                rank[at] = np.arange(len(at))
            blk = (order, rank)
            self._blocks = {k: v for k, v in self._blocks.items() if k == b - 1}  # a step spans few blocks
            self._blocks[b] = blk
        return blk

    def locate(self, g: int) -> tuple[int, int]:
        """(source, k) of global sample g: it is the k-th sample read from that source."""
        if len(self.streams) == 1:
            return 0, g
        b, pos = divmod(g, MIX_BLOCK)
        order, rank = self._block(b)
        s = int(order[pos])
        return s, b * int(self.per_block[s]) + int(rank[pos])

    def sample(self, g: int) -> np.ndarray:
        s, k = self.locate(g)
        return self.streams[s].shuffled(k)

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
