"""Mining exercises (the `exercises` stage, `phi1.data.stages.exercises`): self-contained documented functions as CodeExercises-style pairs.

A top-level function qualifies when it has a docstring, takes no self/cls,
and every free name in it is a builtin, one of its own arguments/locals, or a
standard-library module imported in its file (those import lines are put in
the prompt). prompt = imports + signature + docstring; completion = the body
after the docstring. Pairs are deduplicated (the dedup stage's MinHash blocks)
and decontaminated against the benchmarks before they are written.
"""

from __future__ import annotations

import ast
import builtins
import sys
import textwrap
from dataclasses import dataclass

from phi1.errors import ConfigError
from phi1.data.astnorm import parse_python

_BUILTINS = frozenset(dir(builtins))
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))


@dataclass
class MineConfig:
    """Which functions become exercises."""

    min_doc_chars: int = 20  # shortest docstring kept
    min_body_lines: int = 2  # shortest body kept
    max_body_lines: int = 60  # longest body kept
    max_prompt_chars: int = 2000  # longest prompt (imports + signature + docstring) kept
    allow_private: bool = False  # also mine functions whose name starts with _

    def validate(self) -> None:
        if self.min_body_lines < 1 or self.max_body_lines < self.min_body_lines:
            raise ConfigError(f"exercises: body line bounds {self.min_body_lines}..{self.max_body_lines} are not a valid range")


def _stdlib_imports(tree: ast.Module) -> dict[str, str]:
    """Name bound by a top-level stdlib import -> the import line that binds it."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in _STDLIB:
                    bound = a.asname or a.name.split(".")[0]
                    out[bound] = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module and node.module.split(".")[0] in _STDLIB:
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"from {node.module} import {a.name}" + (f" as {a.asname}" if a.asname else "")
    return out


def _free_names(fn: ast.FunctionDef) -> set[str]:
    """Names a function reads that it does not bind itself (args, assignments, loops, imports, nested defs)."""
    bound: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not fn:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - {fn.name}


def extract_exercises(text: str, cfg: MineConfig | None = None) -> tuple[list[dict], dict[str, int]]:
    """(exercises, skip counts) from one Python text. Each exercise: name, prompt, completion."""
    cfg = cfg or MineConfig()
    skips: dict[str, int] = {}

    def skip(reason: str) -> None:
        skips[reason] = skips.get(reason, 0) + 1

    tree = parse_python(text)
    if tree is None:
        return [], {"unparsable": 1}
    lines = text.splitlines(keepends=True)
    imports = _stdlib_imports(tree)
    out = []
    for fn in tree.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(fn)
        args = fn.args.posonlyargs + fn.args.args
        if not doc or len(doc) < cfg.min_doc_chars:
            skip("no_docstring")
        elif args and args[0].arg in ("self", "cls"):
            skip("method_like")
        elif fn.name.startswith("_") and not cfg.allow_private:
            skip("private")
        elif fn.name.startswith("test"):
            skip("test_function")
        elif len(fn.body) < 2:
            skip("empty_body")
        else:
            free = _free_names(fn)
            unknown = {n for n in free if n not in _BUILTINS and n not in imports}
            if unknown:
                skip("not_self_contained")
                continue
            # The docstring is the first body statement; the completion starts on the line after it ends.
            start = (fn.decorator_list[0].lineno if fn.decorator_list else fn.lineno) - 1
            doc_end = fn.body[0].end_lineno
            end = fn.end_lineno
            body_lines = end - doc_end
            if not (cfg.min_body_lines <= body_lines <= cfg.max_body_lines):
                skip("body_length")
                continue
            needed = sorted({imports[n] for n in free if n in imports})
            header = "".join(lines[start:doc_end])
            col = fn.col_offset
            header = textwrap.dedent(header) if col else header
            prompt = ("\n".join(needed) + "\n\n\n" if needed else "") + header
            completion = "".join(lines[doc_end:end])
            if len(prompt) > cfg.max_prompt_chars:
                skip("prompt_too_long")
                continue
            if parse_python(prompt + completion) is None:
                skip("unparsable_pair")
                continue
            out.append({"name": fn.name, "prompt": prompt, "completion": completion})
    return out, skips
