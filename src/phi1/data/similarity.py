"""How close each training record is to each benchmark problem: the scores of the paper's pruning study (§5).

Two measures, as in the paper:
- **AST match rate**: both sides' functions are AST-normalised (`astnorm.normalized_tokens`: identifiers
  erased, docstrings, annotations and layout gone) and aligned with difflib; the rate is the fraction of
  normalised nodes matched, 2·M / (|a| + |b|), of the record's closest function pair. 1.0 is the same
  code up to names and formatting.
- **embedding similarity**: cosine of the record's and the problem's embeddings (any phi1 encoder:
  `hashing`, `minilm`, `hf:Salesforce/codegen-350M-mono`...).

Pairs whose difflib upper bound (`quick_ratio`) is under `floor` are not aligned: their rate is only known
to be below the floor, which is all a study at thresholds >= floor needs, and it keeps the cost at a
counting pass for almost every pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from phi1.data.astnorm import iter_functions, normalized_tokens, parse_python
from phi1.data.benchmarks import BenchmarkTask
from phi1.errors import ConfigError

METRICS = ("ast", "embedding")
MIN_NODES = 8  # trivially short functions (a bare `return x`) match everything


def function_streams(code: str) -> list[list[str]]:
    """The normalised node streams of every non-trivial function in `code` (none if it does not parse)."""
    tree = parse_python(code)
    if tree is None:
        return []
    return [s for s in (normalized_tokens(fn) for fn in iter_functions(tree)) if len(s) >= MIN_NODES]


def ast_match_rate(a: str, b: str) -> float:
    """The AST match rate of two pieces of code: the best function pair's 2·M / (|a| + |b|), 0 without functions."""
    best = 0.0
    for sb in function_streams(b):
        sm = SequenceMatcher(None, autojunk=False)
        sm.set_seq2(sb)
        for sa in function_streams(a):
            sm.set_seq1(sa)
            best = max(best, sm.ratio())
    return best


@dataclass
class Closest:
    """A record's closest benchmark problem under one measure."""

    task_id: str | None
    score: float

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "score": round(float(self.score), 4)}


class BenchmarkSimilarity:
    """Score records against benchmark tasks; keeps, per task, the best score any record reached."""

    def __init__(self, tasks: list[BenchmarkTask], *, encoder: str | None = "hashing", floor: float = 0.5):
        if not tasks:
            raise ConfigError("similarity: no benchmark tasks to compare against")
        if not 0.0 <= floor < 1.0:
            raise ConfigError(f"similarity floor: {floor} must be in [0, 1)")
        self.tasks, self.floor = list(tasks), floor
        self._streams = [function_streams(t.solution) for t in self.tasks]
        self.best_ast = np.zeros(len(self.tasks))
        self.best_embedding = np.full(len(self.tasks), -1.0)
        self._encoder, self._task_emb = None, None
        if encoder:
            from phi1.data.features import make_encoder

            self._encoder = make_encoder(encoder)
            self._task_emb = self._embed([t.solution for t in self.tasks])

    def _embed(self, texts: list[str]) -> np.ndarray:
        X = self._encoder.encode(texts)
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=np.float64)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)

    def _ast_row(self, text: str) -> np.ndarray:
        """The record's AST match rate with every task (0 where under the floor or without functions)."""
        row = np.zeros(len(self.tasks))
        mine = function_streams(text) if "def " in text else []
        if not mine:
            return row
        sm = SequenceMatcher(None, autojunk=False)
        for ti, streams in enumerate(self._streams):
            for sb in streams:
                sm.set_seq2(sb)
                for sa in mine:
                    sm.set_seq1(sa)
                    if sm.real_quick_ratio() >= self.floor and sm.quick_ratio() >= self.floor:
                        row[ti] = max(row[ti], sm.ratio())
        return row

    def score(self, texts: list[str]) -> list[dict]:
        """Per text: its closest task by AST match rate and (with an encoder) by embedding similarity."""
        ast_rows = np.stack([self._ast_row(t) for t in texts]) if texts else np.zeros((0, len(self.tasks)))
        out = []
        if len(texts):
            self.best_ast = np.maximum(self.best_ast, ast_rows.max(axis=0))
        emb = None
        if self._encoder is not None and texts:
            emb = self._embed(texts) @ self._task_emb.T
            self.best_embedding = np.maximum(self.best_embedding, emb.max(axis=0))
        for i in range(len(texts)):
            j = int(ast_rows[i].argmax())
            rec = {"ast": Closest(self.tasks[j].task_id if ast_rows[i, j] > 0 else None, ast_rows[i, j]).to_dict()}
            if emb is not None:
                k = int(emb[i].argmax())
                rec["embedding"] = Closest(self.tasks[k].task_id, emb[i, k]).to_dict()
            out.append(rec)
        return out

    def task_best(self) -> dict[str, dict]:
        """Per task: the highest score any record scored so far, under each measure."""
        out = {}
        for i, t in enumerate(self.tasks):
            d = {"ast": round(float(self.best_ast[i]), 4)}
            if self._encoder is not None:
                d["embedding"] = round(float(self.best_embedding[i]), 4)
            out[t.task_id] = d
        return out


__all__ = ["METRICS", "BenchmarkSimilarity", "ast_match_rate", "function_streams"]
