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
    """Pre-order token stream of a function's syntax tree with identifiers erased.

    Node types, operators, constants, attribute names and builtins are kept;
    every other name (function, arguments, variables, imported modules)
    becomes `V`, and type annotations, docstrings and decorators are skipped,
    so renaming, re-annotating and reformatting leave the stream unchanged.
    (Numbering names by first appearance would keep more structure, but one
    added or removed name then shifts every later placeholder.) Walking the
    tree directly (no copy, no unparse) keeps this cheap on a whole corpus.
    """
    out: list[str] = []
    stack: list[ast.AST] = [func]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            out.append(node.id if node.id in _BUILTINS else "V")
        elif isinstance(node, ast.arg):
            out.append("V")
        elif isinstance(node, ast.Constant):
            out.append(repr(node.value)[:24])
        elif isinstance(node, ast.Attribute):
            out.append("." + node.attr)
            stack.append(node.value)
        elif isinstance(node, _SKIP):
            continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(type(node).__name__)
            children = [node.args] if not isinstance(node, ast.ClassDef) else list(node.bases)
            children += strip_docstring(node.body)
            stack.extend(reversed(children))
        elif isinstance(node, ast.AnnAssign):
            out.append("Assign")
            stack.extend(reversed([c for c in (node.target, node.value) if c is not None]))
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


def function_source(func: ast.AST) -> str:
    """A function's code re-printed from its AST without docstrings: layout and comments gone, names kept."""
    import copy

    node = copy.deepcopy(func)
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            n.body = strip_docstring(n.body)
    try:
        return ast.unparse(node)
    except (RecursionError, ValueError):
        return ""
