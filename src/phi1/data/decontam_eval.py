"""A labelled set for decontamination: benchmark copies (must be caught) and clean functions (must not be).

Contaminated: every benchmark task (prompt + canonical solution) in five forms: verbatim, renamed
(function, argument and local names), reformatted (unparsed, 2-space indent, quotes changed), with
its docstring paraphrased (prose reworded, examples kept), and embedded in a larger file between
unrelated functions.

Clean: short functions that solve other problems with the same layout. One part is mined from this
Python's standard library. The other part is written here: typed signatures such as
`(a: int, b: int) -> int` with docstrings and doctest examples, which is exactly the boilerplate that
the benchmarks' shortest tasks consist of.

`measure(decontaminator)` gives recall on the copies and the false-positive rate on the clean set.
`python bench/decontam_precision.py` prints them.
"""

from __future__ import annotations

import ast
import builtins
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("verbatim", "renamed", "reformatted", "paraphrased", "embedded")


@dataclass(frozen=True)
class Example:
    text: str
    task_id: str | None     # the benchmark task it copies; None: clean
    variant: str            # one of VARIANTS, or "stdlib" / "written" for clean examples


# -- contaminated -------------------------------------------------------------------------

class Renamer(ast.NodeTransformer):
    """Give every function, argument and local variable a new name (builtins, typing's names and imports keep
    theirs); with `drop_docstrings`, functions lose their docstrings too (what a copier hiding a copy does)."""

    def __init__(self, drop_docstrings: bool = False):
        self.names: dict[str, str] = {}
        self.keep = set(dir(builtins)) | {"List", "Optional", "Tuple", "Any", "Dict"}
        self.drop_docstrings = drop_docstrings

    def _new(self, name: str) -> str:
        if name in self.keep:
            return name
        return self.names.setdefault(name, f"v{len(self.names)}_{name[::-1].lower()[:3]}")

    def visit_Import(self, node):
        for a in node.names:
            self.keep.add((a.asname or a.name).split(".")[0])
        return node

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node):
        node.name = self._new(node.name)
        body = node.body
        if self.drop_docstrings and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            node.body = body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    def visit_arg(self, node):
        node.arg = self._new(node.arg)
        return node

    def visit_Name(self, node):
        node.id = self._new(node.id)
        return node


def renamed(code: str, drop_docstrings: bool = False) -> str:
    tree = ast.parse(code)
    r = Renamer(drop_docstrings)
    # imports first, so their names are kept wherever they are used
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            r.visit_Import(node)
    return ast.unparse(r.visit(tree)) + "\n"


def reformatted(code: str) -> str:
    text = ast.unparse(ast.parse(code))
    lines = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        depth = (len(line) - len(stripped)) // 4
        if "'" in stripped and '"' not in stripped:  # swap the quotes where that cannot clash
            stripped = stripped.replace("'", '"')
        lines.append("  " * depth + stripped)
    return "\n".join(lines) + "\n"


_SYNONYMS = {
    "return": "give back", "returns": "gives back", "given": "provided", "list": "sequence",
    "number": "value", "numbers": "values", "string": "text", "strings": "texts", "check": "determine",
    "whether": "if", "find": "compute", "function": "routine", "write": "implement", "each": "every",
    "elements": "items", "element": "item", "integer": "whole number", "integers": "whole numbers",
    "input": "argument", "output": "result", "should": "must", "only": "just", "all": "every one of the",
    "true": "True", "false": "False", "you": "one", "are": "happen to be", "is": "happens to be",
}


def paraphrase(doc: str) -> str:
    """Reword the prose of a docstring (examples and their outputs stay)."""
    out, in_example = [], False
    for line in doc.splitlines():
        s = line.strip()
        if s.startswith(">>>"):
            in_example = True
        elif not s:
            in_example = False
        if in_example or s.startswith(">>>"):
            out.append(line)
            continue
        words = re.split(r"(\W+)", line)
        out.append("".join(_SYNONYMS.get(w.lower(), w) for w in words))
    return "In other words: " + "\n".join(out).lstrip()


def paraphrased(code: str) -> str:
    """Every function's docstring reworded (a task's helpers, e.g. HumanEval/10's, have docstrings too)."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
            node.body[0].value = ast.Constant(paraphrase(ast.get_docstring(node, clean=False)))
    return ast.unparse(tree) + "\n"


def contaminated_set(tasks, filler: list[str]) -> list[Example]:
    """Five copies of every task; `tasks` are `phi1.data.benchmarks.BenchmarkTask`s, `filler` clean functions."""
    out = []
    for i, t in enumerate(tasks):
        full = t.solution  # the whole function: HumanEval's prompt + canonical solution, MBPP's code
        try:
            variants = {"verbatim": full, "renamed": renamed(full), "reformatted": reformatted(full),
                        "paraphrased": paraphrased(full)}
        except SyntaxError:
            continue
        before = "\n\n".join(filler[(3 * i) % len(filler):][:3])
        after = "\n\n".join(filler[(3 * i + 7) % len(filler):][:3])
        variants["embedded"] = f"import os\nimport re\n\n\n{before}\n\n\n{full}\n\n\n{after}\n"
        out += [Example(text, t.task_id, name) for name, text in variants.items()]
    return out



# -- clean ----------------------------------------------------------------------------------

def stdlib_functions(limit: int = 400, min_lines: int = 3, max_lines: int = 25) -> list[str]:
    """Short top-level functions of this Python's standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and min_lines <= node.end_lineno - node.lineno + 1 <= max_lines:
                seg = ast.get_source_segment(source, node)
                if seg and "\t" not in seg:
                    out.append(seg + "\n")
                    if len(out) >= limit:
                        return out
    return out


# Problems none of HumanEval's 164 tasks poses, each with a typed signature, a one-line description, a body
# and one example: (name, signature, description, body, example call, example result).
_WRITTEN = [
    ("power_mod", "(a: int, b: int) -> int", "Return a to the power b modulo 97.", "return pow(a, b, 97)", "power_mod(2, 10)", "54"),
    ("multiply", "(a: int, b: int) -> int", "Multiply two integers.", "return a * b", "multiply(2, 3)", "6"),
    ("subtract", "(a: int, b: int) -> int", "Subtract b from a.", "return a - b", "subtract(5, 3)", "2"),
    ("clamp", "(x: int, lo: int, hi: int) -> int", "Limit x to the range from lo to hi.", "return max(lo, min(hi, x))", "clamp(15, 0, 10)", "10"),
    ("celsius_to_fahrenheit", "(c: float) -> float", "Convert degrees Celsius to Fahrenheit.", "return c * 9 / 5 + 32", "celsius_to_fahrenheit(100.0)", "212.0"),
    ("hypotenuse", "(a: float, b: float) -> float", "Length of the hypotenuse of a right triangle with legs a and b.", "return (a * a + b * b) ** 0.5", "hypotenuse(3.0, 4.0)", "5.0"),
    ("count_digits", "(n: int) -> int", "Count the decimal digits of a non-negative integer.", "return len(str(n))", "count_digits(12345)", "5"),
    ("is_leap_year", "(year: int) -> bool", "Tell whether a year is a leap year in the Gregorian calendar.", "return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)", "is_leap_year(2000)", "True"),
    ("reverse_words", "(text: str) -> str", "Reverse the order of the words in a sentence.", "return ' '.join(text.split()[::-1])", "reverse_words('a b c')", "'c b a'"),
    ("average", "(values: list) -> float", "Arithmetic mean of a non-empty list of numbers.", "return sum(values) / len(values)", "average([1, 2, 3])", "2.0"),
    ("rectangle_area", "(width: float, height: float) -> float", "Area of a rectangle.", "return width * height", "rectangle_area(2.0, 3.5)", "7.0"),
    ("minutes_to_hours", "(minutes: int) -> float", "Convert a number of minutes to hours.", "return minutes / 60", "minutes_to_hours(90)", "1.5"),
    ("second_largest", "(numbers: list) -> int", "Second largest distinct value of a list.", "return sorted(set(numbers))[-2]", "second_largest([4, 1, 4, 3])", "3"),
    ("count_words", "(text: str) -> int", "Number of whitespace-separated words in a text.", "return len(text.split())", "count_words('to be or not')", "4"),
    ("nth_triangular", "(n: int) -> int", "The n-th triangular number.", "return n * (n + 1) // 2", "nth_triangular(4)", "10"),
    ("digit_product", "(n: int) -> int", "Product of the decimal digits of a positive integer.", "p = 1\n    for ch in str(n):\n        p *= int(ch)\n    return p", "digit_product(234)", "24"),
    ("interleave", "(a: list, b: list) -> list", "Alternate the items of two lists of equal length.", "return [x for pair in zip(a, b) for x in pair]", "interleave([1, 3], [2, 4])", "[1, 2, 3, 4]"),
    ("rotate_left", "(items: list, k: int) -> list", "Rotate a list k places to the left.", "k %= len(items) or 1\n    return items[k:] + items[:k]", "rotate_left([1, 2, 3], 1)", "[2, 3, 1]"),
    ("kelvin", "(celsius: float) -> float", "Convert Celsius to Kelvin.", "return celsius + 273.15", "kelvin(0.0)", "273.15"),
    ("bmi", "(mass: float, height: float) -> float", "Body mass index from mass in kg and height in m.", "return mass / (height * height)", "bmi(80.0, 2.0)", "20.0"),
    ("chunk", "(items: list, size: int) -> list", "Split a list into consecutive chunks of a given size.", "return [items[i:i + size] for i in range(0, len(items), size)]", "chunk([1, 2, 3], 2)", "[[1, 2], [3]]"),
    ("initials", "(name: str) -> str", "Upper-case initials of a full name.", "return ''.join(w[0].upper() for w in name.split())", "initials('ada lovelace')", "'AL'"),
    ("dot", "(a: list, b: list) -> float", "Dot product of two vectors.", "return sum(x * y for x, y in zip(a, b))", "dot([1, 2], [3, 4])", "11"),
    ("manhattan", "(p: tuple, q: tuple) -> int", "Manhattan distance between two grid points.", "return abs(p[0] - q[0]) + abs(p[1] - q[1])", "manhattan((0, 0), (2, 3))", "5"),
    ("percent", "(part: float, whole: float) -> float", "Part as a percentage of the whole.", "return 100.0 * part / whole", "percent(1.0, 4.0)", "25.0"),
    ("swap_case_first", "(text: str) -> str", "Swap the case of the first character only.", "return text[:1].swapcase() + text[1:]", "swap_case_first('hello')", "'Hello'"),
    ("running_max", "(values: list) -> list", "Maximum seen so far at each position.", "out, best = [], None\n    for v in values:\n        best = v if best is None or v > best else best\n        out.append(best)\n    return out", "running_max([1, 3, 2])", "[1, 3, 3]"),
    ("safe_divide", "(a: float, b: float) -> float", "Divide a by b, or return 0.0 when b is zero.", "return a / b if b else 0.0", "safe_divide(1.0, 0.0)", "0.0"),
    ("seconds_since_midnight", "(h: int, m: int, s: int) -> int", "Seconds since midnight for a clock time.", "return h * 3600 + m * 60 + s", "seconds_since_midnight(1, 0, 5)", "3605"),
    ("mean_of_squares", "(values: list) -> float", "Mean of the squared values.", "return sum(v * v for v in values) / len(values)", "mean_of_squares([1, 3])", "5.0"),
    ("join_path", "(parts: list) -> str", "Join path segments with single slashes.", "return '/'.join(p.strip('/') for p in parts)", "join_path(['a/', '/b'])", "'a/b'"),
    ("gallons_to_liters", "(g: float) -> float", "Convert US gallons to liters.", "return g * 3.785411784", "gallons_to_liters(1.0)", "3.785411784"),
    ("ends_with_digit", "(text: str) -> bool", "Tell whether a text ends with a digit.", "return text[-1:].isdigit()", "ends_with_digit('abc1')", "True"),
    ("max_gap", "(values: list) -> int", "Largest difference between consecutive sorted values.", "v = sorted(values)\n    return max(b - a for a, b in zip(v, v[1:]))", "max_gap([1, 7, 3])", "4"),
    ("repeat_each", "(text: str, k: int) -> str", "Repeat every character k times.", "return ''.join(ch * k for ch in text)", "repeat_each('ab', 2)", "'aabb'"),
    ("compound", "(principal: float, rate: float, years: int) -> float", "Value after yearly compound interest.", "return principal * (1 + rate) ** years", "compound(100.0, 0.5, 2)", "225.0"),
    ("wrap_index", "(i: int, n: int) -> int", "Wrap an index into the range 0 to n - 1.", "return i % n", "wrap_index(-1, 5)", "4"),
    ("first_word", "(text: str) -> str", "The first word of a text, or an empty string.", "parts = text.split()\n    return parts[0] if parts else ''", "first_word('hi there')", "'hi'"),
    ("cube", "(x: int) -> int", "Cube of an integer.", "return x ** 3", "cube(3)", "27"),
    ("mid_point", "(a: float, b: float) -> float", "Point halfway between a and b.", "return (a + b) / 2", "mid_point(2.0, 4.0)", "3.0"),
]

_NAME_STYLES = (lambda n: n, lambda n: "compute_" + n, lambda n: n + "_value", lambda n: "get_" + n,
                lambda n: "my_" + n, lambda n: n + "_of")
_LAYOUTS = ("doctest", "plain", "args", "oneline", "typing", "typing")


def written_functions() -> list[str]:
    """Typed, documented functions in the layouts of HumanEval's shortest tasks, none solving a HumanEval task."""
    out = []
    for name, sig, desc, body, call, result in _WRITTEN:
        for k, style in enumerate(_NAME_STYLES):
            fname = style(name)
            ex = call.replace(name + "(", fname + "(", 1)
            layout = _LAYOUTS[k]
            if layout == "doctest":
                doc = f'"""{desc}\n    >>> {ex}\n    {result}\n    """'
            elif layout == "plain":
                doc = f'"""{desc}"""'
            elif layout == "args":
                params = [p.split(":")[0].strip() for p in sig[1:sig.index(")")].split(",") if p.strip()]
                lines = "\n".join(f"        {p}: the {p} value." for p in params)
                doc = f'"""{desc}\n\n    Args:\n{lines}\n\n    Returns:\n        The result.\n    """'
            elif layout == "oneline":
                doc = f'"""{desc} For example, {ex} == {result}."""'
            else:  # HumanEval's own layout: typing import, List[...] types, doctest with the result
                sig = sig.replace(": list", ": List[int]").replace("-> list", "-> List[int]")
                doc = f'""" {desc}\n    >>> {ex}\n    {result}\n    """'
                out.append(f"from typing import List\n\n\ndef {fname}{sig}:\n    {doc}\n    {body}\n")
                continue
            out.append(f"def {fname}{sig}:\n    {doc}\n    {body}\n")
    return out


def clean_set(stdlib_limit: int = 400) -> list[Example]:
    return ([Example(t, None, "stdlib") for t in stdlib_functions(stdlib_limit)]
            + [Example(t, None, "written") for t in written_functions()])


# -- measuring ------------------------------------------------------------------------------

def measure(deco, contaminated: list[Example], clean: list[Example]) -> dict:
    """Recall on the copies (flagged with their own task), false-positive rate on the clean set."""
    caught: dict[str, list[int]] = {v: [0, 0] for v in VARIANTS}
    missed = []
    for ex in contaminated:
        hit = any(h.task_id == ex.task_id for h in deco.check(ex.text))
        caught[ex.variant][0] += hit
        caught[ex.variant][1] += 1
        if not hit:
            missed.append((ex.task_id, ex.variant))
    false = []
    for ex in clean:
        hits = deco.check(ex.text)
        if hits:
            false.append((ex.variant, ex.text.split("\n", 1)[0], hits[0]))
    n_cont, n_clean = len(contaminated), len(clean)
    tp = n_cont - len(missed)
    return {
        "contaminated": n_cont, "clean": n_clean,
        "recall": tp / n_cont if n_cont else 0.0,
        "false_positive_rate": len(false) / n_clean if n_clean else 0.0,
        "precision": tp / (tp + len(false)) if tp + len(false) else 0.0,
        "recall_by_variant": {v: (c / n if n else 0.0) for v, (c, n) in caught.items()},
        "missed": missed, "false_positives": false,
    }
