"""Chat data for supervised finetuning: conversations -> packed windows whose loss covers assistant tokens only.

Records are `{"messages": [{"role", "content"}, ...]}`, one per JSONL line, or the `messages` column of a
Parquet file (the common SFT datasets' layout). Each conversation is rendered with the model's chat
template; a token is trained on when it lies in an assistant message's content or the end-of-turn marker
after it (phi-3: `<|end|>`). Conversations are concatenated in file order and cut into windows of
seq_len + 1 tokens (as pretraining packs documents); a window with no assistant token is dropped. The
windows are fixed when the sampler is built, and the batch of sample g is a pure function of (seed, g),
so exact resume and per-rank slicing work as for token shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from phi1.utils.io import json_loads
from phi1.errors import Phi1Error

IGNORE = -100


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The `messages` lists of a JSONL or Parquet file (or of every such file in a directory, sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".parquet"))
        if not files:
            raise Phi1Error(f"{p}: no .jsonl or .parquet files of chat records")
        return [c for f in files for c in read_conversations(f)]
    if not p.is_file():
        raise Phi1Error(f"{p}: chat data file not found")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "messages" not in table.column_names:
            raise Phi1Error(f"{p}: no 'messages' column (columns: {table.column_names}); chat data needs one")
        rows = [(i + 1, m) for i, m in enumerate(table.column("messages").to_pylist())]
    else:
        rows = []
        with open(p, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise Phi1Error(f"{p}:{n}: not UTF-8 (byte {exc.start + 1} of the line); convert the chat data "
                                    "to UTF-8") from None
                try:
                    rec = json_loads(line)
                except json.JSONDecodeError as exc:
                    raise Phi1Error(f"{p}:{n}: not JSON ({exc.msg}); each line is one {{\"messages\": [...]}}") from None
                rows.append((n, rec.get("messages") if isinstance(rec, dict) else None))
    out = []
    for n, msgs in rows:
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise Phi1Error(f"{p}: record {n}: 'messages' must be a non-empty list of {{role, content}} strings")
        out.append([{"role": m["role"], "content": m["content"]} for m in msgs])
    return out


def encode_conversation(tokenizer, template, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of one rendered conversation: mask 1 on assistant content + end marker."""
    text = template.render(messages, add_generation_prompt=False)
    spans = template.assistant_spans(messages)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    mask = []
    for start, _end in enc.offsets:  # a token belongs where it starts
        mask.append(int(any(b <= start < e for b, e in spans)))
    return list(enc.ids), mask


class ChatSampler:
    """WindowSampler's interface (`batch`, `sequential_batch`, `num_windows`, `fingerprints`) over chat data.

    Targets are -100 where the loss mask is 0, so the model's mean cross-entropy is over assistant tokens.
    """

    def __init__(self, paths: list[str], tokenizer, template, seq_len: int, seed: int = 0, split: str = "train"):
        if not paths:
            raise Phi1Error(f"data.{split}: no chat data files given")
        ids, mask, digest = [], [], hashlib.sha256()
        for path in paths:
            for conv in read_conversations(path):
                i, m = encode_conversation(tokenizer, template, conv)
                ids += i
                mask += m
            digest.update(str(path).encode())
        self.ids = np.asarray(ids, dtype=np.int64)
        self.mask = np.asarray(mask, dtype=np.int8)
        self.seq_len, self.seed, self.split = seq_len, seed, split
        n = max(0, (len(self.ids) - 1) // seq_len)
        # Windows overlap by one token (targets are the next tokens); keep those with a target to learn.
        self.windows = [w for w in range(n) if self.mask[w * seq_len + 1: w * seq_len + seq_len + 1].any()]
        if not self.windows:
            raise Phi1Error(f"{', '.join(map(str, paths))}: the chat data gives no window of seq_len + 1 = "
                            f"{seq_len + 1} tokens with an assistant token in it; add conversations or lower "
                            "data.seq_len")
        digest.update(self.ids.tobytes())
        digest.update(self.mask.tobytes())
        self._fingerprint = digest.hexdigest()[:16]
        self._perm: dict[int, np.ndarray] = {}

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    @property
    def fingerprints(self) -> list[tuple[str, str | None]]:
        return [("chat", self._fingerprint)]

    @property
    def max_token_id(self) -> int:
        return int(self.ids.max())

    def _window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.windows[w] * self.seq_len
        return self.ids[s: s + self.seq_len + 1], self.mask[s: s + self.seq_len + 1]

    def _shuffled(self, g: int) -> int:
        epoch, i = divmod(g, len(self.windows))
        p = self._perm.get(epoch)
        if p is None:
            p = np.random.default_rng([self.seed, epoch, 0xC4A7]).permutation(len(self.windows))
            self._perm = {e: q for e, q in self._perm.items() if e == epoch - 1}
            self._perm[epoch] = p
        return int(p[i])

    def _rows(self, windows) -> tuple[torch.Tensor, torch.Tensor]:
        toks, masks = zip(*(self._window(w) for w in windows))
        t = torch.from_numpy(np.stack(toks))                                # (B, T+1)
        m = torch.from_numpy(np.stack(masks).astype(bool))
        x = t[:, :-1].contiguous()
        y = torch.where(m[:, 1:], t[:, 1:], torch.full_like(t[:, 1:], IGNORE)).contiguous()
        return x, y

    def batch(self, indices, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) (B, T) for global sample indices; targets -100 off the assistant tokens."""
        x, y = self._rows([self._shuffled(int(g)) for g in indices])
        return x.to(device), y.to(device)

    def sequential_batch(self, indices, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._rows([int(g) % len(self.windows) for g in indices])
        return x.to(device), y.to(device)
