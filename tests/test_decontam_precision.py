"""Decontamination precision and recall on a labelled set the test builds (`phi1.data.decontam_eval`):
every HumanEval task copied five ways must be caught; 640 clean functions, half of them in HumanEval's own
typed-signature-and-doctest layout, must not be. Targets: recall >= 0.98, false-positive rate <= 1%."""

from __future__ import annotations

import pytest

from phi1.data.benchmarks import load_benchmarks
from phi1.data.decontam import Decontaminator, describe
from phi1.data.decontam_eval import VARIANTS, clean_set, contaminated_set, measure, stdlib_functions


@pytest.fixture(scope="module")
def deco():
    return Decontaminator(["humaneval"])


def test_precision_and_recall_meet_their_targets(deco):
    tasks = load_benchmarks(["humaneval"])
    cont = contaminated_set(tasks, stdlib_functions(60))
    clean = clean_set(400)
    assert len(cont) == 5 * 164 and len(clean) >= 500
    assert sum(ex.variant == "written" for ex in clean) >= 200
    m = measure(deco, cont, clean)
    assert m["recall"] >= 0.98, m["missed"]
    assert m["false_positive_rate"] <= 0.01, [(v, first, describe(h)) for v, first, h in m["false_positives"]]
    for variant in VARIANTS:
        assert m["recall_by_variant"][variant] >= 0.95, (variant, m["recall_by_variant"])


def test_signature_and_layout_alone_are_not_overlap(deco):
    """The issue's two functions: they share HumanEval/13's `(a: int, b: int) -> int:` layout, nothing else."""
    power_mod = ('def power_mod(a: int, b: int) -> int:\n    """Return a to the power b modulo 97."""\n'
                 '    return pow(a, b, 97)\n')
    multiply = ('def multiply(a: int, b: int) -> int:\n    """Multiply two integers.\n    >>> multiply(2, 3)\n'
                '    6\n    """\n    return a * b\n')
    assert deco.check(power_mod) == [] and deco.check(multiply) == []


def test_every_hit_names_its_task_and_the_matched_span(deco):
    tasks = {t.task_id: t for t in load_benchmarks(["humaneval"])}
    gcd = tasks["HumanEval/13"]
    text = "import math\n\n\n" + gcd.prompt + gcd.solution
    hits = deco.check(text)
    assert hits and hits[0].task_id == "HumanEval/13"
    for h in hits:
        assert h.span, h
        line = describe(h)
        assert line.startswith("overlaps HumanEval/13 (") and h.span[:20] in line, line
    assert "greatest_common_divisor" in " ".join(h.span for h in hits)
