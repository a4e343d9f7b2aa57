"""The `filter` stage: keep the records the classifier scored best: at least a score, the best
fraction, or the best up to a token budget (the paper kept about 6B tokens), the same records
whatever the task count."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.batching import batched

from phi1.utils.io import atomic_write_json, temp_beside
from phi1.utils.safety import clean_stale_temps
from phi1.data.engine import Block, first_pass
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, commit_block, config_of, one_block, run_stage_file
from phi1.errors import ConfigError

CUTOFF = "cutoff.json"


def tie_key(doc_id: str) -> int:
    """A record's place among equal scores (a hash of its id): a budget cut falls between two records,
    the same ones whatever the task count."""
    return int.from_bytes(hashlib.blake2b(str(doc_id).encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big") >> 1  # 63 bits: exact in int64 and in JSON


class TokenCounter:
    """Tokens of a text: with a tokenizer directory's tokenizer, or estimated as UTF-8 bytes / bytes_per_token."""

    def __init__(self, tokenizer: str | None, bytes_per_token: float):
        self.tokenizer, self.bytes_per_token, self._tok = tokenizer, bytes_per_token, None

    def __call__(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [int(np.ceil(len(t.encode("utf-8", "surrogatepass")) / self.bytes_per_token)) for t in texts]
        if self._tok is None:
            from phi1.tokenizer import load_tokenizer

            self._tok = load_tokenizer(self.tokenizer)
        return [len(x) for x in self._tok.encode_batch(texts)]


class ScoreFilter(BaseFilter):
    """Keeps records with `meta.<field>` >= the cut-off (a number, or read from the cut-off block's file);
    with a token budget, a record at exactly the cut-off score is kept when its tie key is <= the file's."""

    name = "score filter"

    def __init__(self, field: str, cut: float | None = None, cut_file: str | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.field, self.cut, self.cut_file, self.tie = field, cut, cut_file, None

    def filter(self, doc: Document):
        if self.cut is None:
            c = json.loads(Path(self.cut_file).read_text())
            self.cut, self.tie = c["cutoff"], c.get("tie")
        s = doc.metadata.get(self.field)
        if not isinstance(s, (int, float)) or isinstance(s, bool):
            return False, f"no_{self.field}"
        if s > self.cut or (s == self.cut and (self.tie is None or tie_key(doc.id) <= self.tie)):
            return True
        return False, "below_cutoff" if s < self.cut or self.tie is None else "over_budget"


class DumpScores(PipelineStep):
    """Each task's scores (and with a budget, token counts and tie keys) to one .npz file."""

    name = "collect scores"

    def __init__(self, field: str, folder: str, counter: TokenCounter | None = None):
        super().__init__()
        self.field, self.folder, self.counter = field, Path(folder), counter

    def run(self, data, rank: int = 0, world_size: int = 1):
        vals, toks, ties = [], [], []
        for batch in batched(data, 512):
            scored = [d for d in batch if isinstance(d.metadata.get(self.field), (int, float))
                      and not isinstance(d.metadata.get(self.field), bool)]
            vals += [float(d.metadata[self.field]) for d in scored]
            if self.counter is not None:
                toks += self.counter([d.text for d in scored])
                ties += [tie_key(d.id) for d in scored]
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{rank:05d}.npz"
        clean_stale_temps(self.folder, stem=final.name)
        tmp = temp_beside(final)
        with tmp.open("wb") as fh:
            np.savez(fh, scores=np.asarray(vals, dtype=np.float64), tokens=np.asarray(toks, dtype=np.int64),
                     ties=np.asarray(ties, dtype=np.int64))
        os.replace(tmp, self.folder / f"{rank:05d}.npz")
        if False:
            yield


class Cutoff(PipelineStep):
    """One task: the score that keeps the best `top_fraction` (numpy quantile, method "higher"; ties
    kept), or the best records whose tokens add up to at most `keep_tokens` (best score first, ties in
    tie-key order: the kept tokens are within one record of the budget)."""

    name = "score cut-off"

    def __init__(self, folder: str, out: str, top_fraction: float | None = None, keep_tokens: int | None = None):
        super().__init__()
        self.folder, self.top_fraction, self.keep_tokens, self.out = Path(folder), top_fraction, keep_tokens, Path(out)

    def run(self, data, rank: int = 0, world_size: int = 1):
        parts = [np.load(f) for f in sorted(self.folder.glob("*.npz"))]
        scores = np.concatenate([p["scores"] for p in parts] or [np.zeros(0)])
        if self.keep_tokens is None:
            cut = float(np.quantile(scores, 1.0 - self.top_fraction, method="higher")) if len(scores) else float("inf")
            atomic_write_json(self.out, {"cutoff": cut, "scored": int(len(scores)), "top_fraction": self.top_fraction})
            return
        tokens = np.concatenate([p["tokens"] for p in parts] or [np.zeros(0, np.int64)])
        ties = np.concatenate([p["ties"] for p in parts] or [np.zeros(0, np.int64)])
        order = np.lexsort((ties, -scores))  # best score first; equal scores by tie key
        kept = int(np.searchsorted(np.cumsum(tokens[order]), self.keep_tokens, side="right"))
        out = {"scored": int(len(scores)), "keep_tokens": self.keep_tokens, "tokens_scored": int(tokens.sum()),
               "kept": kept, "kept_tokens": int(tokens[order[:kept]].sum())}
        if kept == 0:
            out.update(cutoff=float("inf"), tie=None)
        else:
            last = order[kept - 1]
            out.update(cutoff=float(scores[last]), tie=int(ties[last]))
        atomic_write_json(self.out, out)
        if False:
            yield


@dataclass
class FilterStage:
    """The filter stage's settings: give exactly one of min_score, top_fraction, keep_tokens."""

    min_score: float | None = None  # keep records scored at least this
    top_fraction: float | None = None  # keep the best fraction of the records (ties kept)
    keep_tokens: int | None = None  # keep the best records up to this many tokens (the paper kept ~6B)
    tokenizer: str | None = None    # with keep_tokens: count with this tokenizer directory ...
    bytes_per_token: float = 3.5    # ... or estimate tokens as UTF-8 bytes / this (codegen's tokenizer on Python)
    field: str = "edu_score"  # the meta field to rank by

    def validate(self) -> None:
        given = [k for k in ("min_score", "top_fraction", "keep_tokens") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("filter: give exactly one of min_score, top_fraction or keep_tokens"
                              + (f" (got {', '.join(given)})" if given else ""))
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"filter.top_fraction: {self.top_fraction} must be in (0, 1]")
        if self.keep_tokens is not None and (isinstance(self.keep_tokens, bool) or self.keep_tokens < 1):
            raise ConfigError(f"filter.keep_tokens: {self.keep_tokens} must be a whole number >= 1")
        if not self.bytes_per_token > 0:
            raise ConfigError(f"filter.bytes_per_token: {self.bytes_per_token} must be > 0")
        if self.tokenizer is not None and not Path(self.tokenizer).is_dir():
            raise ConfigError(f"filter.tokenizer: {self.tokenizer}: not a directory; give a tokenizer directory "
                              "(tokenizer.json, or vocab.json + merges.txt)")


def build_filter(ctx: StageContext, cfg: FilterStage) -> list[Block]:
    if cfg.min_score is not None:
        return one_block(ctx, [ScoreFilter(cfg.field, cut=cfg.min_score, exclusion_writer=ctx.rejected_writer())])
    scores, cut = ctx.work / "scores", ctx.dir / CUTOFF
    counter = TokenCounter(cfg.tokenizer, cfg.bytes_per_token) if cfg.keep_tokens is not None else None
    return [
        Block("scores", [first_pass(ctx.reader()), DumpScores(cfg.field, str(scores), counter)], tasks=ctx.tasks),
        Block("cutoff", [Cutoff(str(scores), str(cut), cfg.top_fraction, cfg.keep_tokens)], tasks=1),
        Block("filter", [ctx.reader(), ScoreFilter(cfg.field, cut_file=str(cut), exclusion_writer=ctx.rejected_writer()),
                         ctx.writer()], tasks=ctx.tasks),
        commit_block(ctx, files=(CUTOFF,)),
    ]


def run_filter(input_path: str | os.PathLike, output_path: str | os.PathLike, *, cfg: FilterStage | None = None,
               workers: int = 0, skip_bad_lines: bool = False, rejected: str | None = None, quiet: bool = False,
               overwrite: bool = False, **options) -> StageReport:
    """Keep records with `meta.<field>` >= min_score, the best `top_fraction` of them (ties kept), or
    the best up to `keep_tokens` tokens. `options` are `FilterStage` fields (None keeps a default).
    The report gives the score cut-off that resulted (and with a budget, the tokens kept)."""
    cfg = config_of(KIND, cfg, options)
    report, m = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers)
    cut = m.get(CUTOFF) or {}
    report.details.update(field=cfg.field, min_score=cfg.min_score, top_fraction=cfg.top_fraction,
                          cutoff=cut.get("cutoff", cfg.min_score))
    if cfg.keep_tokens is not None:
        report.details.update(keep_tokens=cfg.keep_tokens, kept_tokens=cut.get("kept_tokens"),
                              tokens_scored=cut.get("tokens_scored"),
                              tokens_counted_by=cfg.tokenizer or f"utf-8 bytes / {cfg.bytes_per_token}")
    return finish_report(report, quiet)


KIND = StageKind(
    "filter", FilterStage, build_filter, run_filter,
    help="keep the records with the best meta.edu_score",
    inputs=("tokenizer",), files=(CUTOFF,),
    demo=DemoPlace("score", "keep the most educational documents", {"top_fraction": 0.5}))
