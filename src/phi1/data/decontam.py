"""`phi1 data decontaminate`: remove records that overlap benchmark problems.

Detectors, as in the phi-1 paper:
- n-gram overlap: hashed 13-grams of normalised code tokens (lower-cased,
  comments stripped); a record is hit when it contains at least
  `ngram_threshold` of a task's prompt or solution n-grams.
- sequence similarity (Cosmopedia's confirmation): a record sharing fewer n-grams
  than that but at least one is compared, token by token with difflib's ratio, on
  the window aligned on the shared n-gram and as long as the benchmark part; a
  ratio >= `ratio_threshold` (0.5) is a hit. This catches a benchmark solution
  pasted into a longer text with edits.
- syntax similarity: each function in the record and each benchmark function
  are AST-normalised (identifiers erased to one placeholder, docstrings and
  formatting gone); a hit is a function pair whose normalised 6-gram sets
  overlap by at least `ast_threshold` of the larger set. This survives renamed
  variables and reformatting, which defeat plain n-grams.
- embedding + syntax (opt-in, `embedding=` an encoder spec): a function close
  in embedding space to a benchmark function and overlapping its syntax at
  least `embedding_ast_floor` — edited copies past the syntax threshold.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher

from phi1.errors import ConfigError
import numpy as np

from phi1.data.astnorm import function_source, iter_functions, normalized_tokens, parse_python
from phi1.data.benchmarks import BenchmarkTask, load_benchmarks
from phi1.data.records import StageReport, finish_report, given
from phi1.data.tokens import code_tokens, ngram_set, shingle_hashes, token_hashes

AST_GRAM = 6


def _first_offsets(tokens: list[str], n: int) -> dict[int, int]:
    """Each hashed n-gram of `tokens` and the position where it first starts."""
    if len(tokens) < n:
        return {}
    out: dict[int, int] = {}
    for i, g in enumerate(shingle_hashes(token_hashes(tokens), n).tolist()):
        out.setdefault(g, i)
    return out
MIN_AST_GRAMS = 8  # trivially short functions (a bare `return x`) match everything


@dataclass
class Hit:
    task_id: str
    method: str       # "ngram" or "ast"
    score: float
    part: str         # "prompt"/"solution" for ngram; the benchmark function name for ast
    where: str = ""   # the record's function that matched (ast)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Decontaminator:
    """Index benchmark tasks once; `check(text)` lists the tasks a text overlaps."""

    def __init__(
        self,
        benchmarks: list[str] = ("humaneval",),
        benchmark_files: list[str] = (),
        *,
        tasks: list[BenchmarkTask] | None = None,
        ngram: int = 13,
        ngram_threshold: float = 0.5,
        ast_threshold: float = 0.8,
        use_ast: bool = True,
        embedding: str | None = None,
        embedding_threshold: float = 0.85,
        embedding_ast_floor: float = 0.4,
        ratio_threshold: float | None = 0.5,
    ):
        if ngram < 3:
            raise ConfigError(f"decontaminate.ngram: {ngram} too small; use >= 3 (the paper used 13)")
        for name, v in (("ngram_threshold", ngram_threshold), ("ast_threshold", ast_threshold),
                        ("embedding_threshold", embedding_threshold), ("embedding_ast_floor", embedding_ast_floor),
                        ("ratio_threshold", 1.0 if ratio_threshold is None else ratio_threshold)):
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"decontaminate.{name}: {v} must be in (0, 1]")
        self.tasks = list(tasks) if tasks is not None else load_benchmarks(list(benchmarks), list(benchmark_files))
        self.ngram, self.ngram_threshold, self.ast_threshold, self.use_ast = ngram, ngram_threshold, ast_threshold, use_ast
        self.ratio_threshold = ratio_threshold
        # n-gram index: gram -> [(task index, part, first offset in the part)], plus each part's gram
        # count and tokens (for the sequence-similarity confirmation).
        self._ng_index: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
        self._ng_size: dict[tuple[int, str], int] = {}
        self._ng_tokens: dict[tuple[int, str], list[str]] = {}
        # AST index: gram -> [benchmark function index], plus per function (task index, name, size).
        self._ast_index: dict[int, list[int]] = defaultdict(list)
        self._ast_funcs: list[tuple[int, str, int]] = []
        self._ast_grams: list[set[int]] = []
        bench_sources: list[str] = []
        for ti, task in enumerate(self.tasks):
            for part, text in (("prompt", task.prompt), ("solution", task.solution)):
                toks = code_tokens(text, lower=True, strip_comments=True)
                offsets = _first_offsets(toks, ngram)
                if offsets:
                    self._ng_size[(ti, part)] = len(offsets)
                    self._ng_tokens[(ti, part)] = toks
                    for g, off in offsets.items():
                        self._ng_index[g].append((ti, part, off))
            if use_ast:
                tree = parse_python(task.solution)
                for fn in iter_functions(tree) if tree else ():
                    grams = ngram_set(normalized_tokens(fn), AST_GRAM)
                    if len(grams) >= MIN_AST_GRAMS:
                        fi = len(self._ast_funcs)
                        self._ast_funcs.append((ti, fn.name, len(grams)))
                        self._ast_grams.append(grams)
                        bench_sources.append(function_source(fn))
                        for g in grams:
                            self._ast_index[g].append(fi)

        # Embedding + syntax (the paper's second detector): a function whose embedding is close to a benchmark
        # function's AND whose syntax overlaps it at least `embedding_ast_floor` is flagged, which catches
        # copies edited beyond the pure syntax threshold. Opt-in: embedding every function of a corpus is costly.
        self.embedding_threshold, self.embedding_ast_floor = embedding_threshold, embedding_ast_floor
        self._encoder = None
        if embedding and use_ast and bench_sources:
            from phi1.data.features import make_encoder

            self._encoder = make_encoder(embedding)
            self._bench_emb = self._embed(bench_sources)

    def _embed(self, sources: list[str]) -> np.ndarray:
        X = self._encoder.encode(sources)
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=np.float64)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)

    def check(self, text: str) -> list[Hit]:
        """Benchmark tasks this text overlaps, best score first (one hit per task and method)."""
        best: dict[tuple[str, str], Hit] = {}

        def add(hit: Hit):
            key = (hit.task_id, hit.method)
            if key not in best or hit.score > best[key].score:
                best[key] = hit

        toks = code_tokens(text, lower=True, strip_comments=True)
        counts: Counter = Counter()
        anchor: dict[tuple[int, str], tuple[int, int]] = {}  # (where in the text, where in the part)
        for g, pos in _first_offsets(toks, self.ngram).items():
            for ti, part, off in self._ng_index.get(g, ()):
                counts[(ti, part)] += 1
                anchor.setdefault((ti, part), (pos, off))
        for (ti, part), c in counts.items():
            score = c / self._ng_size[(ti, part)]
            if score >= self.ngram_threshold:
                add(Hit(self.tasks[ti].task_id, "ngram", score, part))
            elif self.ratio_threshold is not None:
                # Cosmopedia's confirmation: the text's window aligned on the shared n-gram, as long as
                # the benchmark part, compared token by token (difflib's ratio).
                ref = self._ng_tokens[(ti, part)]
                pos, off = anchor[(ti, part)]
                start = max(0, pos - off)
                ratio = SequenceMatcher(None, ref, toks[start : start + len(ref)], autojunk=False).ratio()
                if ratio >= self.ratio_threshold:
                    add(Hit(self.tasks[ti].task_id, "sequence", ratio, part))
        if self.use_ast and self._ast_funcs and "def " in text:
            tree = parse_python(text)
            candidates = []
            for fn in iter_functions(tree) if tree else ():
                fgrams = ngram_set(normalized_tokens(fn), AST_GRAM)
                if len(fgrams) < MIN_AST_GRAMS:
                    continue
                candidates.append((fn, fgrams))
                shared: Counter = Counter()
                for g in fgrams:
                    for fi in self._ast_index.get(g, ()):
                        shared[fi] += 1
                for fi, c in shared.items():
                    ti, name, size = self._ast_funcs[fi]
                    score = c / max(size, len(fgrams))
                    if score >= self.ast_threshold:
                        add(Hit(self.tasks[ti].task_id, "ast", score, name, fn.name))
            if self._encoder is not None and candidates:
                sims = self._embed([function_source(fn) for fn, _ in candidates]) @ self._bench_emb.T
                for i, j in zip(*np.nonzero(sims >= self.embedding_threshold)):
                    fn, fgrams = candidates[i]
                    bgrams = self._ast_grams[j]
                    syntax = len(fgrams & bgrams) / max(len(fgrams), len(bgrams))
                    if syntax >= self.embedding_ast_floor:
                        ti, name, _ = self._ast_funcs[j]
                        add(Hit(self.tasks[ti].task_id, "embedding", float(sims[i, j]), name, fn.name))
        return sorted(best.values(), key=lambda h: -h.score)


def hits_per_task(hits) -> dict[str, int]:
    """How many hits (of any method) each benchmark task has, most first."""
    c = Counter(h["task_id"] if isinstance(h, dict) else h.task_id for h in hits)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def run_decontaminate(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    benchmarks: list[str] | None = None,
    benchmark_files: list[str] | None = None,
    ngram: int | None = None,
    ngram_threshold: float | None = None,
    ast_threshold: float | None = None,
    use_ast: bool | None = None,
    embedding: str | None = None,
    embedding_threshold: float | None = None,
    embedding_ast_floor: float | None = None,
    ratio_threshold: float | None = None,
    workers: int = 0,
    skip_bad_lines: bool = False,
    rejected: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> StageReport:
    """Drop records that overlap any benchmark task; the report lists every hit with task and score.
    Runs the same blocks as a `decontaminate` stage of `phi1 data run`
    (`phi1.data.steps.DecontaminateStage`), `workers` tasks each holding its own index."""
    from phi1.data.pipeline import run_stage_file
    from phi1.data.steps import DecontaminateStage

    opts = given(benchmarks=None if benchmarks is None else list(benchmarks),
                 benchmark_files=None if benchmark_files is None else list(benchmark_files), ngram=ngram,
                 ngram_threshold=ngram_threshold, ast_threshold=ast_threshold, use_ast=use_ast, embedding=embedding,
                 embedding_threshold=embedding_threshold, embedding_ast_floor=embedding_ast_floor,
                 ratio_threshold=ratio_threshold)
    deco = Decontaminator(**DecontaminateStage(**opts).decontaminator_kwargs())  # a bad benchmark fails here
    hits: list[dict] = []
    report, _ = run_stage_file("decontaminate", opts, input_path, output_path, rejected=rejected,
                               skip_bad_lines=skip_bad_lines, quiet=quiet, overwrite=overwrite, workers=workers,
                               on_reject=lambda rec: hits.append({"id": rec["id"],
                                                                  "hits": rec["meta"].get("contamination", [])}))
    report.details.update(tasks=len(deco.tasks), ngram=deco.ngram, ngram_threshold=deco.ngram_threshold,
                          ast_threshold=deco.ast_threshold, ratio_threshold=deco.ratio_threshold, hits=hits,
                          hits_per_task=hits_per_task(h for rec in hits for h in rec["hits"]))
    return finish_report(report, quiet)
