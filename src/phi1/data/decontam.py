"""Finding records that overlap benchmark problems (the `decontaminate` stage, `phi1.data.stages.decontaminate`).

Detectors, as in the phi-1 paper:
- n-gram overlap: hashed 13-grams of normalised code tokens (lower-cased,
  comments stripped) that hold at least MIN_CONTENT different non-boilerplate
  tokens (a signature and docstring layout alone is not overlap); a record is hit
  when it contains at least `ngram_threshold` of a task's prompt or solution
  content n-grams, or every n-gram of a part (a whole copy, `exact`).
- sequence similarity (Cosmopedia's confirmation): a record sharing fewer n-grams
  than that but at least one is compared, on its distinctive tokens with difflib's
  ratio, on the window aligned on the shared n-gram and as long as the benchmark
  part; a ratio >= `ratio_threshold` (0.5) with at least MIN_CONFIRMED matching
  distinctive tokens is a hit. This catches a benchmark solution pasted into a
  longer text with edits.
Each hit carries the matched span; `describe(hit)` is the line a user judges it by.
Precision and recall on a labelled set: `phi1.data.decontam_eval`, docs/eval.md.
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

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from difflib import SequenceMatcher

from phi1.errors import ConfigError
import numpy as np

from phi1.data.astnorm import function_source, iter_functions, normalized_tokens, parse_python
from phi1.data.benchmarks import BenchmarkTask, load_benchmarks
from phi1.data.tokens import code_tokens, ngram_set, shingle_hashes, token_hashes

AST_GRAM = 6


# Tokens that say nothing about which problem a text solves: punctuation, keywords, builtin and typing type
# names, the commonest builtins, small numbers, and the words every docstring uses. A signature such as
# `(a: int, b: int) -> int:` is 13 tokens with only two others (a, b) among them; an n-gram counts as overlap
# only when it holds at least MIN_CONTENT different tokens that are not boilerplate.
BOILERPLATE = frozenset(
    "def return if else elif for while in not and or is none true false import from as class with try except "
    "finally raise lambda pass break continue yield global nonlocal assert del async await self cls "
    "int float str bool list dict tuple set bytes object any optional union iterable sequence callable typing "
    "len range print sum min max abs sorted enumerate zip map filter append isinstance all reversed "
    "the an of to and or in is are be it its this that for with by on as at if given return returns "
    "list lists number numbers string strings integer integers value values two one function "
    "example examples input output result true false 0 1 2".split())
MIN_CONTENT = 3


def distinctive(tok: str) -> bool:
    return tok not in BOILERPLATE and (tok[0].isalnum() or tok[0] == "_")


def _grams(tokens: list[str], n: int) -> tuple[list[int], list[bool]]:
    """Every hashed n-gram of `tokens` and whether it holds at least MIN_CONTENT different distinctive tokens."""
    if len(tokens) < n:
        return [], []
    keys = [t if distinctive(t) else None for t in tokens]
    content, window = [], Counter()
    for i, k in enumerate(keys):
        if k is not None:
            window[k] += 1
        if i >= n:
            old = keys[i - n]
            if old is not None:
                window[old] -= 1
                if not window[old]:
                    del window[old]
        if i >= n - 1:
            content.append(len(window) >= MIN_CONTENT)
    return shingle_hashes(token_hashes(tokens), n).tolist(), content


def _first_offsets(grams: list[int], content: list[bool]) -> dict[int, int]:
    """Each content n-gram and the position where it first starts."""
    out: dict[int, int] = {}
    for i, (g, ok) in enumerate(zip(grams, content)):
        if ok:
            out.setdefault(g, i)
    return out


def _content_ratio(ref: list[str], window: list[str]) -> tuple[float, int]:
    """difflib's ratio over the distinctive tokens of both sides, and how many of them match."""
    a = [t for t in ref if distinctive(t)]
    b = [t for t in window if distinctive(t)]
    if not a or not b:
        return 0.0, 0
    sm = SequenceMatcher(None, a, b, autojunk=False)
    matched = sum(block.size for block in sm.get_matching_blocks())
    return 2.0 * matched / (len(a) + len(b)), matched


MIN_CONFIRMED = 8  # distinctive tokens a sequence-confirmed overlap must share with the benchmark part
MIN_AST_GRAMS = 8  # trivially short functions (a bare `return x`) match everything


@dataclass
class Hit:
    task_id: str
    method: str       # "ngram" or "ast"
    score: float
    part: str         # "prompt"/"solution" for ngram; the benchmark function name for ast
    where: str = ""   # the record's function that matched (ast)
    span: str = ""    # the record's text that matched (normalised tokens; the function's head for ast)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class DecontamParams:
    """How a text is matched against the benchmarks (`Decontaminator`); the decontaminate stage's
    config adds which benchmarks."""

    ngram: int = 13  # tokens per n-gram
    ngram_threshold: float = 0.5  # fraction of a task's n-grams that flags a record
    ast_threshold: float = 0.8  # normalised-AST similarity that flags a function
    use_ast: bool = True  # also the syntax-tree check (off: n-gram check only)
    embedding: str | None = None  # also flag functions close to a benchmark's in this encoder (minilm, st:DIR, hf:DIR)
    embedding_threshold: float = 0.85  # cosine similarity that flags a function (with `embedding`)
    embedding_ast_floor: float = 0.4  # with `embedding`: the least syntax-tree similarity that an embedding hit needs
    ratio_threshold: float | None = 0.5  # difflib ratio that confirms a partial n-gram match (None: off)

    def validate(self) -> None:
        if isinstance(self.ngram, bool) or not isinstance(self.ngram, int) or self.ngram < 3:
            raise ConfigError(f"decontaminate.ngram: {self.ngram} too small; use >= 3 (the paper used 13)")
        for name in ("ngram_threshold", "ast_threshold", "embedding_threshold", "embedding_ast_floor",
                     "ratio_threshold"):
            v = getattr(self, name)
            v = 1.0 if v is None and name == "ratio_threshold" else v
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ConfigError(f"decontaminate.{name}: {v} must be in (0, 1]")

    def params(self) -> dict:
        """These settings alone (a subclass's other fields left out), as keywords of `Decontaminator`."""
        return {f.name: getattr(self, f.name) for f in fields(DecontamParams)}


class Decontaminator:
    """Index benchmark tasks once; `check(text)` lists the tasks a text overlaps. `params` are
    `DecontamParams` fields (the only place their defaults live)."""

    def __init__(self, benchmarks: list[str] = ("humaneval",), benchmark_files: list[str] = (), *,
                 tasks: list[BenchmarkTask] | None = None, **params):
        p = DecontamParams(**params)
        p.validate()
        ngram, ngram_threshold, ast_threshold, use_ast = p.ngram, p.ngram_threshold, p.ast_threshold, p.use_ast
        ratio_threshold, embedding = p.ratio_threshold, p.embedding
        embedding_threshold, embedding_ast_floor = p.embedding_threshold, p.embedding_ast_floor
        self.tasks = list(tasks) if tasks is not None else load_benchmarks(list(benchmarks), list(benchmark_files))
        self.ngram, self.ngram_threshold, self.ast_threshold, self.use_ast = ngram, ngram_threshold, ast_threshold, use_ast
        self.ratio_threshold = ratio_threshold
        # n-gram index: gram -> [(task index, part, first offset in the part)], plus each part's gram
        # count and tokens (for the sequence-similarity confirmation).
        self._ng_index: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
        self._ng_size: dict[tuple[int, str], int] = {}
        self._ng_tokens: dict[tuple[int, str], list[str]] = {}
        # every n-gram of each part at least 2n tokens long: a text holding all of them holds the part
        self._full_index: dict[int, list[tuple[int, str]]] = defaultdict(list)
        self._full_size: dict[tuple[int, str], int] = {}
        # AST index: gram -> [benchmark function index], plus per function (task index, name, size).
        self._ast_index: dict[int, list[int]] = defaultdict(list)
        self._ast_funcs: list[tuple[int, str, int]] = []
        self._ast_grams: list[set[int]] = []
        bench_sources: list[str] = []
        for ti, task in enumerate(self.tasks):
            for part, text in (("prompt", task.prompt), ("solution", task.solution)):
                toks = code_tokens(text, lower=True, strip_comments=True)
                grams, content = _grams(toks, ngram)
                if len(toks) >= 2 * ngram:
                    # a copy of the whole part is caught even when it is all boilerplate (HumanEval/53's `add`)
                    whole = set(grams)
                    self._full_size[(ti, part)] = len(whole)
                    self._ng_tokens[(ti, part)] = toks
                    for g in whole:
                        self._full_index[g].append((ti, part))
                offsets = _first_offsets(grams, content)
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
        # per benchmark part, each shared n-gram's (position in the text, position in the part), in text order
        shared: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
        grams, content = _grams(toks, self.ngram)
        if self._full_index:
            full: Counter = Counter()
            for g in set(grams):
                for key in self._full_index.get(g, ()):
                    full[key] += 1
            for (ti, part), c in full.items():
                if c == self._full_size[(ti, part)]:
                    ref = self._ng_tokens.get((ti, part)) or []
                    add(Hit(self.tasks[ti].task_id, "exact", 1.0, part, span=_span(ref)))
        for g, pos in _first_offsets(grams, content).items():
            for ti, part, off in self._ng_index.get(g, ()):
                shared[(ti, part)].append((pos, off))
        for (ti, part), hits in shared.items():
            score = len(hits) / self._ng_size[(ti, part)]
            if score >= self.ngram_threshold:
                lo, hi = hits[0][0], hits[-1][0] + self.ngram
                add(Hit(self.tasks[ti].task_id, "ngram", score, part, span=_span(toks[lo:hi])))
            elif self.ratio_threshold is not None:
                # Cosmopedia's confirmation: the text's window aligned on the shared n-gram, as long as
                # the benchmark part, compared on the distinctive tokens only (difflib's ratio), so a
                # shared signature and docstring layout weigh nothing.
                ref = self._ng_tokens[(ti, part)]
                pos, off = hits[0]  # aligned on the first shared n-gram
                start = max(0, pos - off)
                window = toks[start : start + len(ref)]
                ratio, matched = _content_ratio(ref, window)
                if ratio >= self.ratio_threshold and matched >= MIN_CONFIRMED:
                    add(Hit(self.tasks[ti].task_id, "sequence", ratio, part, span=_span(window)))
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
                        add(Hit(self.tasks[ti].task_id, "ast", score, name, fn.name, span=_head(fn)))
            if self._encoder is not None and candidates:
                sims = self._embed([function_source(fn) for fn, _ in candidates]) @ self._bench_emb.T
                for i, j in zip(*np.nonzero(sims >= self.embedding_threshold)):
                    fn, fgrams = candidates[i]
                    bgrams = self._ast_grams[j]
                    syntax = len(fgrams & bgrams) / max(len(fgrams), len(bgrams))
                    if syntax >= self.embedding_ast_floor:
                        ti, name, _ = self._ast_funcs[j]
                        add(Hit(self.tasks[ti].task_id, "embedding", float(sims[i, j]), name, fn.name,
                                span=_head(fn)))
        return sorted(best.values(), key=lambda h: -h.score)


def _span(tokens: list[str], limit: int = 160) -> str:
    text = " ".join(tokens)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _head(fn) -> str:
    """The matched function's name and arguments, as a reader finds it in the record."""
    args = ", ".join(a.arg for a in fn.args.args)
    return f"def {fn.name}({args}) at line {fn.lineno}"


def describe(hit) -> str:
    """One line a user can judge a rejection by: the task, how it matched, and the text that matched."""
    h = hit if isinstance(hit, dict) else hit.to_dict()
    where = f" in {h['where']}()" if h.get("where") else ""
    return (f"overlaps {h['task_id']} ({h['method']} {h['score']:.2f}, {h['part']}{where}): "
            f"\"{h.get('span', '')}\"")


def hits_per_task(hits) -> dict[str, int]:
    """How many hits (of any method) each benchmark task has, most first."""
    c = Counter(h["task_id"] if isinstance(h, dict) else h.task_id for h in hits)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

