"""A transparent rule-based stand-in for the LLM educational-value judge.

Each rule looks at one property the paper's judge prompt cares about (is the
code documented, self-contained, does it compute something, or is it
boilerplate, configuration or a data table?) and contributes points with a
human-readable reason. Scores are on the judge's 0-5 scale.
"""

from __future__ import annotations

import ast
import sys

from phi1.data.astnorm import parse_python

_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))
_CONTROL = (ast.For, ast.While, ast.If, ast.Try, ast.With, ast.comprehension, ast.Return, ast.Yield)
_COMPUTE = (ast.BinOp, ast.Compare, ast.BoolOp, ast.AugAssign, ast.Subscript, ast.Call)


def _doc_of(node) -> str | None:
    try:
        return ast.get_docstring(node)
    except TypeError:
        return None


def rule_features(text: str) -> dict | None:
    """Measurable properties of a Python text, or None if it does not parse."""
    tree = parse_python(text)
    if tree is None:
        return None
    lines = text.splitlines()
    code_lines = [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    comment_lines = sum(1 for ln in lines if ln.strip().startswith("#"))
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    funcs = [n for n in defs if not isinstance(n, ast.ClassDef)]
    documented = sum(1 for n in defs if _doc_of(n))
    nodes = list(ast.walk(tree))
    n_nodes = max(1, len(nodes))
    constants = sum(isinstance(n, ast.Constant) for n in nodes)
    control = sum(isinstance(n, _CONTROL) for n in nodes)
    compute = sum(isinstance(n, _COMPUTE) for n in nodes)
    imported: list[str] = []
    relative = 0
    for n in nodes:
        if isinstance(n, ast.Import):
            imported += [a.name.split(".")[0] for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                relative += 1
            elif n.module:
                imported.append(n.module.split(".")[0])
    third_party = [m for m in imported if m not in _STDLIB]
    func_lens = [(f.end_lineno or f.lineno) - f.lineno + 1 for f in funcs]
    top_assign = sum(isinstance(n, (ast.Assign, ast.AnnAssign)) for n in tree.body)
    return {
        "code_lines": len(code_lines),
        "comment_ratio": round(comment_lines / max(1, len(code_lines)), 3),
        "n_defs": len(defs),
        "doc_coverage": round(documented / len(defs), 3) if defs else 0.0,
        "module_doc": bool(_doc_of(tree)),
        "literal_ratio": round(constants / n_nodes, 3),
        "control_per_def": round(control / max(1, len(funcs)), 2),
        "compute_nodes": compute,
        "external_imports": len(third_party) + relative,
        "mean_func_lines": round(sum(func_lens) / len(func_lens), 1) if func_lens else 0.0,
        "top_level_assign_ratio": round(top_assign / max(1, len(tree.body)), 3),
    }


def rule_score(text: str) -> tuple[int, list[str], dict]:
    """(score 0-5, reasons, features) for a text, by the documented rules."""
    f = rule_features(text)
    if f is None:
        return 0, ["not valid Python: nothing to learn from"], {}
    score, reasons = 0, []

    def rule(cond: bool, points: int, why: str) -> None:
        nonlocal score
        if cond:
            score += points
            reasons.append(f"{'+' if points > 0 else ''}{points}: {why}")

    rule(f["n_defs"] > 0, 1, f"defines {f['n_defs']} functions/classes")
    rule(f["n_defs"] > 0 and f["doc_coverage"] >= 0.5, 1, f"docstrings on {f['doc_coverage']:.0%} of definitions")
    rule(f["comment_ratio"] >= 0.05 or f["module_doc"], 1, "explains itself (comments or module docstring)")
    rule(f["n_defs"] > 0 and f["control_per_def"] >= 2 and f["compute_nodes"] >= 5, 1,
         "does meaningful computation (control flow and expressions)")
    rule(f["external_imports"] == 0 and f["code_lines"] >= 5, 1, "self-contained (only standard-library imports)")
    rule(f["external_imports"] >= 3, -1, f"depends on {f['external_imports']} non-stdlib/relative imports")
    rule(f["literal_ratio"] > 0.4, -2, f"mostly literal data ({f['literal_ratio']:.0%} of syntax nodes are constants)")
    rule(f["n_defs"] == 0 and f["top_level_assign_ratio"] > 0.6, -1, "configuration/boilerplate: top-level assignments only")
    rule(f["mean_func_lines"] > 80, -1, f"very long functions (mean {f['mean_func_lines']} lines)")
    rule(f["code_lines"] < 5, -1, f"too short to teach anything ({f['code_lines']} code lines)")
    return max(0, min(5, score)), reasons, f
