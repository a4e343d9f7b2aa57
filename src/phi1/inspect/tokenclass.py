"""The class of a code token, for the monosemanticity rule of `phi1 inspect neurons`.

A token's class comes from its text with surrounding whitespace stripped, first match wins:
special (the EOS token), whitespace, comment (starts with #), string (holds a quote), keyword
(Python keywords, soft keywords, True/False/None), builtin (a name in `builtins`), number,
name (identifier characters), punctuation (everything else: operators, brackets).
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

CLASSES = ("special", "whitespace", "comment", "string", "keyword", "builtin", "number", "name", "punctuation")
_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
_NUMBER = re.compile(r"[0-9][0-9_]*(\.[0-9_]*)?([eE][+-]?[0-9]+)?[jJ]?|0[xXoObB][0-9a-fA-F_]+|\.[0-9]+")
_NAME = re.compile(r"\w+")


def token_class(text: str, special: frozenset[str] = frozenset({"<|endoftext|>"})) -> str:
    if text in special:
        return "special"
    s = text.strip()
    if not s:
        return "whitespace"
    if s.startswith("#"):
        return "comment"
    if "'" in s or '"' in s:
        return "string"
    if s in _KEYWORDS:
        return "keyword"
    if s in _BUILTINS:
        return "builtin"
    if _NUMBER.fullmatch(s):
        return "number"
    if _NAME.fullmatch(s):
        return "name"
    return "punctuation"


def chance_monosemantic(class_freq: dict[str, float], k: int, threshold: float) -> float:
    """P(one class covers >= threshold of k tokens drawn independently from `class_freq`).

    With threshold > 0.5 at most one class can reach it, so the sum over classes is exact.
    """
    need = math.ceil(threshold * k - 1e-9)
    total = 0.0
    for p in class_freq.values():
        total += sum(math.comb(k, j) * p ** j * (1 - p) ** (k - j) for j in range(need, k + 1))
    return min(1.0, total)
