"""Per-record checks of generated texts: is this exercise, textbook section or story usable?

Each check returns `(reasons, info)`: the reasons a record is rejected (empty
list = keep; each reason is "category" or "category: detail") and facts worth keeping in its `meta.validation` either way.
Execution of exercises happens in `validate.py` (it batches the sandbox).
"""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_WORD = re.compile(r"[A-Za-z']+")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) for each fenced block; an unclosed last fence runs to the end."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def exercise_code(text: str) -> str:
    """The exercise's program: its python fenced block(s) joined, or the whole text if unfenced."""
    blocks = [code for lang, code in code_blocks(text) if lang in ("python", "py", "python3", "")]
    return "\n\n".join(blocks) if blocks else text


def _is_test(stmt: ast.stmt, defined: set[str]) -> bool:
    """A top-level statement that exercises the solution rather than being part of it: an assert (or a
    block holding one), an `if __name__ == ...` block, a bare expression (print(f(3)), f(3)), or an
    assignment that calls a function the exercise defines."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)):
        return False
    if isinstance(stmt, ast.If) and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(stmt.test)):
        return True
    if isinstance(stmt, ast.Expr):
        return True
    if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
        return True
    calls = {n.func.id for n in ast.walk(stmt) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return bool(calls & defined)


def split_exercise(code: str, function_name: str | None = None) -> dict | None:
    """The paper's CodeExercises format from a generated program: `text`, the training text (imports,
    helpers and the function: signature, docstring, solution; no fences, no asserts, no prints), and
    `tests`, the rest of the program (asserts, a main block), kept apart so that validation runs them and
    packing never sees them. With the function found: `prompt` (the text through its docstring) and
    `completion` (the rest), as mined exercises have. None when the code does not parse."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    lines = code.splitlines()
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    solution, tests = [], []
    for stmt in tree.body:
        start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        segment = "\n".join(lines[start - 1 : stmt.end_lineno]).rstrip()
        if _is_test(stmt, defined):
            # a module docstring or a lone string is neither solution nor test
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):
                tests.append(segment)
        else:
            solution.append((stmt, segment))
    parts = []
    for k, (stmt, segment) in enumerate(solution):
        if k:
            both_imports = all(isinstance(x, (ast.Import, ast.ImportFrom)) for x in (solution[k - 1][0], stmt))
            parts.append("\n" if both_imports else "\n\n\n")
        parts.append(segment)
    text = "".join(parts) + "\n" if parts else ""
    out = {"text": text, "tests": "\n".join(tests) + "\n" if tests else ""}
    fn = next((n for n in ast.parse(text).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               and (function_name is None or n.name == function_name)), None) if text else None
    if fn is not None and fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant):
        cut = fn.body[0].end_lineno
        tl = text.splitlines(keepends=True)
        out.update(prompt="".join(tl[:cut]), completion="".join(tl[cut:]))
    return out


def check_exercise(text: str, constraints: dict) -> tuple[list[str], dict]:
    """Parse the exercise: the named function with a docstring and a body, plus module-level asserts."""
    code = exercise_code(text)
    info: dict = {"code": code}
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"syntax: {exc.msg} (line {exc.lineno})"], info
    split = split_exercise(code, constraints.get("function_name"))
    if split is not None:
        # What validation runs: the training text, then its tests (what the model learns must pass them).
        info.update(split=split, code=split["text"] + "\n\n" + split["tests"])
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    want = constraints.get("function_name")
    fn = next((f for f in funcs if f.name == want), None) if want else (funcs[0] if funcs else None)
    # the exercise's own asserts: outside any def/class (a test block under `if __name__` counts)
    asserts = [n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
    info.update(function=fn.name if fn else None, n_functions=len(funcs), n_asserts=len(asserts))
    reasons = []
    if fn is None:
        reasons.append(f"no function: expected def {want}" if want else "no function")
    else:
        doc = ast.get_docstring(fn)
        info["has_docstring"] = bool(doc)
        if not doc:
            reasons.append("no docstring")
        body = fn.body[1:] if doc else fn.body
        if all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               for s in body):  # only `pass` / `...` / strings
            reasons.append("empty solution")
    if not asserts:
        reasons.append("no asserts")
    return reasons, info


def check_textbook(text: str, min_prose_words: int = 40) -> tuple[list[str], dict]:
    """Explanations interleaved with code: at least one python block that parses, prose around it."""
    blocks = code_blocks(text)
    prose = _FENCE.sub(" ", text)
    n_words = len(_WORD.findall(prose))
    parse_errors = 0
    for lang, code in blocks:
        if lang in ("python", "py", "python3", ""):
            try:
                ast.parse(code)
            except SyntaxError:
                parse_errors += 1
    # alternations between prose and code segments: 2 means prose-code-prose
    segments = [s for s in re.split(r"(```.*?(?:```|\Z))", text, flags=re.S) if s.strip()]
    kinds = ["code" if s.startswith("```") else "prose" for s in segments]
    switches = sum(1 for a, b in zip(kinds, kinds[1:]) if a != b)
    info = {"n_code_blocks": len(blocks), "n_parse_errors": parse_errors, "prose_words": n_words,
            "switches": switches}
    reasons = []
    if not blocks:
        reasons.append("no code block")
    elif parse_errors == len(blocks):
        reasons.append("no code block parses")
    if n_words < min_prose_words:
        reasons.append(f"too little prose: {n_words} words")
    if blocks and switches < 2:
        reasons.append("explanation and code are not interleaved")
    return reasons, info


def _word_used(word: str, words: set[str], verb: bool = False) -> bool:
    if word in words:
        return True
    stem = word[:-1] if word.endswith("e") else word
    forms = {word + "s", word + "es", stem + "ed", stem + "ing", word + "ed", word + word[-1] + "ed",
             word + word[-1] + "ing", word[:-1] + "ies", word[:-1] + "ied"} if len(word) > 1 else set()
    if not verb:
        forms = {word + "s", word + "es", word[:-1] + "ies", word + "er", word + "est"}
    return bool(forms & words)


def check_story(text: str, constraints: dict, min_words: int = 40) -> tuple[list[str], dict]:
    """Long enough, and whether the required noun/verb/adjective appear (regular inflections count)."""
    tokens = [w.lower() for w in _WORD.findall(text)]
    words = set(tokens)
    used = {}
    for pos in ("noun", "verb", "adjective"):
        w = constraints.get(pos)
        if w:
            used[pos] = _word_used(w.lower(), words, verb=pos == "verb")
    info = {"n_words": len(tokens), "words_used": used}
    reasons = []
    if len(tokens) < min_words:
        reasons.append(f"too short: {len(tokens)} words")
    # irregular verbs (ran, ate) defeat the inflection check, so only noun and adjective are enforced
    missing = [pos for pos in ("noun", "adjective") if used.get(pos) is False]
    if missing:
        reasons.append("missing required " + " and ".join(missing))
    return reasons, info
