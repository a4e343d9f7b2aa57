"""Direct preference optimisation: (prompt, chosen, rejected) records, a frozen or cached reference, the losses.

Records are JSONL lines (or Parquet rows) with `prompt`, `chosen` and `rejected`: either strings (the
completion is the text after the prompt, closed with EOS) or, as in the common preference datasets,
message lists (`prompt` the conversation so far, `chosen`/`rejected` one assistant message each),
rendered with the model's chat template. They are tokenized as TRL's DPOTrainer tokenizes them: the
completion starts where the tokenized prompt and the tokenized prompt + completion stop agreeing.

Losses, with d = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) summed over completion tokens:
sigmoid -(1 - e) log s(b d) - e log s(-b d) (e = label_smoothing, the conservative DPO of Mitchell 2023;
e = 0 is DPO), ipo (d' - 1/(2 b))^2 with d' the per-token-averaged log-ratio difference, and robust
(the flipped-label correction of Chowdhury et al. 2024, TRL's `robust`). Rewards are b times the log-ratios.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from phi1.utils.io import json_loads
from phi1.errors import Phi1Error

LOSSES = ("sigmoid", "ipo", "robust")


# ---------------------------------------------------------------- data


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """Preference records of a JSONL or Parquet file (or of every such file in a directory, sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".parquet"))
        if not files:
            raise Phi1Error(f"{p}: no .jsonl or .parquet files of preference records")
        return [r for f in files for r in read_pairs(f)]
    if not p.is_file():
        raise Phi1Error(f"{p}: preference data file not found")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = list(enumerate(pq.read_table(p).to_pylist(), 1))
    else:
        rows = []
        with open(p, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if raw.strip():
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise Phi1Error(f"{p}:{n}: not UTF-8 (byte {exc.start + 1} of the line); convert the "
                                        "preference data to UTF-8") from None
                    try:
                        rows.append((n, json_loads(line)))
                    except json.JSONDecodeError as exc:
                        raise Phi1Error(f"{p}:{n}: not JSON ({exc.msg}); each line is one "
                                        "{\"prompt\", \"chosen\", \"rejected\"} record") from None
    out = []
    for n, rec in rows:
        if not isinstance(rec, dict) or any(k not in rec for k in ("prompt", "chosen", "rejected")):
            raise Phi1Error(f"{p}: record {n}: needs 'prompt', 'chosen' and 'rejected' fields")
        kinds = {type(rec[k]) for k in ("prompt", "chosen", "rejected")}
        if kinds not in ({str}, {list}):
            raise Phi1Error(f"{p}: record {n}: 'prompt', 'chosen' and 'rejected' must all be strings or all be "
                            "message lists")
        out.append({k: rec[k] for k in ("prompt", "chosen", "rejected")})
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer, template, rec: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids), cut where the prompt's tokens and the full text's diverge."""
    if isinstance(rec["prompt"], list):
        prompt = tokenizer.encode(template.render(rec["prompt"], add_generation_prompt=True))
        full = [tokenizer.encode(template.render(rec["prompt"] + rec[k], add_generation_prompt=False))
                for k in ("chosen", "rejected")]
    else:
        eos = tokenizer.eos_token

        def closed(t: str) -> str:
            return t if t.endswith(eos) else t + eos

        def encode(t: str) -> list[int]:  # with the tokenizer's own special tokens (a Llama BOS), as TRL's call
            return list(tokenizer.backend.encode(t, add_special_tokens=True).ids)

        prompt = encode(rec["prompt"])
        full = [encode(rec["prompt"] + closed(rec[k])) for k in ("chosen", "rejected")]
    n = min(_common_prefix(prompt, f) for f in full)
    return prompt[:n], full[0][n:], full[1][n:]


class PreferenceData:
    """Tokenized pairs; the pairs of global sample g are a pure function of (seed, g), as for token windows."""

    def __init__(self, paths: list[str], tokenizer, template, max_len: int, seed: int = 0, split: str = "train",
                 pad_id: int = 0, identical: str = "skip"):
        """`identical`: what to do with a pair whose chosen and rejected completions are the same tokens
        (its DPO gradient is zero; a sign of a broken preference file): skip it (counted in
        `self.identical`, logged), refuse the data, or keep it."""
        if not paths:
            raise Phi1Error(f"data.{split}: no preference data files given")
        self.pairs, digest = [], hashlib.sha256()
        self.identical = 0
        for path in paths:
            for n, rec in enumerate(read_pairs(path), 1):
                p, c, r = tokenize_pair(tokenizer, template, rec)
                if not c or not r:
                    raise Phi1Error(f"{path}: a record's chosen or rejected completion encodes to zero tokens")
                if c == r:
                    self.identical += 1
                    if identical == "refuse":
                        raise Phi1Error(f"{path}: record {n}: chosen equals rejected (no preference to learn); fix "
                                        "the data, or set dpo.identical: skip to leave such pairs out")
                    if identical == "skip":
                        continue
                self.pairs.append((p, c, r))
                digest.update(json.dumps([p, c, r]).encode())
        if self.identical:
            import logging

            what = "skipped" if identical == "skip" else "kept"
            logging.getLogger(__name__).warning(
                f"data.{split}: {what} {self.identical} preference pair(s) whose chosen equals rejected "
                "(config.dpo.identical)")
        if not self.pairs:
            why = f" ({self.identical} pair(s) had chosen equal to rejected and were skipped)" if self.identical else ""
            raise Phi1Error(f"{', '.join(map(str, paths))}: no preference records{why}")
        self.max_len, self.seed, self.split, self.pad_id = max_len, seed, split, pad_id
        self._fingerprint = digest.hexdigest()[:16]
        self._perm: dict[int, np.ndarray] = {}

    @property
    def num_windows(self) -> int:  # the trainer's word for "samples per epoch"
        return len(self.pairs)

    @property
    def fingerprints(self) -> list[tuple[str, str | None]]:
        return [("preference", self._fingerprint)]

    @property
    def max_token_id(self) -> int:
        return max(max(p + c + r) for p, c, r in self.pairs)

    def pair_index(self, g: int) -> int:
        epoch, i = divmod(g, len(self.pairs))
        p = self._perm.get(epoch)
        if p is None:
            p = np.random.default_rng([self.seed, epoch, 0xD90]).permutation(len(self.pairs))
            self._perm = {e: q for e, q in self._perm.items() if e == epoch - 1}
            self._perm[epoch] = p
        return int(p[i])

    def collate(self, pair_ids: list[int], device="cpu") -> dict:
        """input_ids, completion_mask (2B, T): the chosen rows, then the rejected rows, right-padded; each
        sequence is cut to max_len tokens (the completion's end goes first, as TRL's max_length does)."""
        seqs, masks = [], []
        for side in (1, 2):
            for j in pair_ids:
                p, comp = self.pairs[j][0], self.pairs[j][side]
                ids, m = (p + comp)[: self.max_len], ([0] * len(p) + [1] * len(comp))[: self.max_len]
                seqs.append(ids)
                masks.append(m)
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(m)] = torch.tensor(m)
        return {"input_ids": ids.to(device), "completion_mask": mask.to(device),
                "pairs": torch.tensor(pair_ids, dtype=torch.long), "data": self._fingerprint}

    def batch(self, indices, device="cpu") -> dict:
        return self.collate([self.pair_index(int(g)) for g in indices], device)

    def sequential_batch(self, indices, device="cpu") -> dict:
        return self.collate([int(g) % len(self.pairs) for g in indices], device)


# ---------------------------------------------------------------- the loss


def sequence_logps(model, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over each row's completion tokens: (N,).

    The whole row goes through the model (the last logit unused), as TRL does: with LongRoPE the rotary
    factors depend on the length of the forward pass."""
    logits = model(input_ids)[:, :-1].float()                                   # (N, T-1, V)
    targets = input_ids[:, 1:]
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, targets[..., None])[..., 0]   # (N, T-1)
    return (logp * completion_mask[:, 1:]).sum(dim=1)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, *, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_len: torch.Tensor | None = None, rejected_len: torch.Tensor | None = None):
    """(mean loss, chosen rewards, rejected rewards) for a batch of pairs; see the module docstring."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    d = chosen_ratio - rejected_ratio
    e = label_smoothing
    if loss == "sigmoid":
        per = -(1 - e) * F.logsigmoid(beta * d) - e * F.logsigmoid(-beta * d)
    elif loss == "robust":
        per = (-(1 - e) * F.logsigmoid(beta * d) + e * F.logsigmoid(-beta * d)) / (1 - 2 * e)
    elif loss == "ipo":
        if chosen_len is None or rejected_len is None:
            raise ValueError("the ipo loss needs the completion lengths")
        avg = chosen_ratio / chosen_len.clamp(min=1) - rejected_ratio / rejected_len.clamp(min=1)
        per = (avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss {loss!r}: choose one of {LOSSES}")
    return per.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DPOObjective:
    """The DPO step of the trainer: policy log-probs against a frozen reference's (or their cache)."""

    def __init__(self, section, reference, data: PreferenceData, device, cache_file: Path | None = None):
        self.beta, self.loss, self.eps = section.beta, section.loss, section.label_smoothing
        self.reference = None
        self.caches: dict[str, dict[int, tuple[float, float]]] = {}  # per data fingerprint
        if section.precompute_ref:
            self.add_data(reference, data, device, cache_file)
        else:
            self.reference = reference.to(device).eval().requires_grad_(False)

    def add_data(self, reference, data: PreferenceData, device, cache_file: Path | None = None) -> None:
        """Cache the reference's log-probs of another data set's pairs (data.val's)."""
        self.caches[data.fingerprints[0][1]] = self._cached(reference, data, device, cache_file)

    @staticmethod
    @torch.no_grad()
    def _cached(reference, data: PreferenceData, device, cache_file: Path | None) -> dict:
        """Reference log-probs of every pair: read from `cache_file` when it is this data's, else computed once."""
        key = data.fingerprints[0][1]
        if cache_file is not None and cache_file.exists():
            saved = torch.load(cache_file, weights_only=True)
            if saved.get("data") == key:
                return {int(k): (float(a), float(b)) for k, a, b in saved["logps"].tolist()}
        reference = reference.to(device).eval()
        out, rows, step = {}, [], 8
        for start in range(0, len(data.pairs), step):
            ids = list(range(start, min(start + step, len(data.pairs))))
            b = data.collate(ids, device)
            lp = sequence_logps(reference, b["input_ids"], b["completion_mask"]).double().cpu()
            c, r = lp.chunk(2)
            for j, a, z in zip(ids, c.tolist(), r.tolist()):
                out[j] = (a, z)
                rows.append([j, a, z])
        if cache_file is not None:
            from phi1.utils.io import atomic_write

            with atomic_write(cache_file, "wb", encoding=None) as fh:
                torch.save({"data": key, "logps": torch.tensor(rows, dtype=torch.float64)}, fh)
        return out

    def reference_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is None:
            cache, dev = self.caches[batch["data"]], batch["input_ids"].device
            vals = torch.tensor([cache[int(j)] for j in batch["pairs"]], dtype=torch.float32, device=dev)
            return vals[:, 0], vals[:, 1]
        with torch.no_grad():
            return sequence_logps(self.reference, batch["input_ids"], batch["completion_mask"]).chunk(2)

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        """(loss, {reward_margin, reward_accuracy, ...}) for one micro-batch."""
        ids, mask = batch["input_ids"], batch["completion_mask"]
        pc, pr = sequence_logps(model, ids, mask).chunk(2)
        rc, rr = self.reference_logps(batch)
        lc, lr = mask.sum(1).chunk(2)  # completion lengths (IPO's per-token average, as TRL counts them)
        loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta=self.beta, loss=self.loss, label_smoothing=self.eps,
                                chosen_len=lc, rejected_len=lr)
        stats = {"reward_margin": (cr - rj).mean(), "reward_accuracy": (cr > rj).float().mean(),
                 "reward_chosen": cr.mean(), "reward_rejected": rj.mean()}
        return loss, stats
