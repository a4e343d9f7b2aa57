"""AST normalisation of Python functions: what survives renaming and reformatting.

Docstrings are dropped, formatting disappears with the AST, and every
non-builtin identifier (function name, arguments, locals, globals) becomes a
placeholder numbered by first appearance. Two functions that differ only in
names, layout and docstrings normalise to the same token sequence.
"""

from __future__ import annotations

import ast
import builtins
import warnings


_BUILTINS = frozenset(dir(builtins))
FUNC_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef)


def strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body or [ast.Pass()]


def parse_python(text: str) -> ast.Module | None:
    """ast.parse that returns None for text that is not valid Python (or too deep)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def normalized_tokens(func: ast.AST) -> list[str]:
    """Pre-order token stream of a function's syntax tree with identifiers renamed.

    Node types, operators, constants and attribute names are kept; names of
    functions, arguments and variables become `v0, v1, ...` by first
    appearance (builtins keep their names); docstrings and decorators are
    skipped. Walking the tree directly (no copy, no unparse) keeps this cheap
    enough to run on every function of a corpus.
    """
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in _BUILTINS:
            return name
        if name not in names:
            names[name] = f"v{len(names)}"
        return names[name]

    out: list[str] = []
    stack: list[ast.AST] = [func]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            out.append(rename(node.id))
        elif isinstance(node, ast.arg):
            out.append(rename(node.arg))
            if node.annotation is not None:
                stack.append(node.annotation)
        elif isinstance(node, ast.Constant):
            out.append(repr(node.value)[:24])
        elif isinstance(node, ast.Attribute):
            out.append("." + node.attr)
            stack.append(node.value)
        elif isinstance(node, _SKIP):
            continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(type(node).__name__)
            out.append(rename(node.name))
            children = [node.args] if not isinstance(node, ast.ClassDef) else list(node.bases)
            if getattr(node, "returns", None) is not None:
                children.append(node.returns)
            children += strip_docstring(node.body)
            stack.extend(reversed(children))
        else:
            out.append(type(node).__name__)
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out


_SKIP = (ast.expr_context, ast.Pass)


def iter_functions(tree: ast.AST):
    """Every function definition in a module (top-level, methods, nested)."""
    for node in ast.walk(tree):
        if isinstance(node, FUNC_TYPES):
            yield node
