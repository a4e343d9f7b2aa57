"""The judge protocol: values cross as data, objects stay in the program, and the tests keep Python's
meaning for everything a benchmark uses (classes from the solution, setup objects, in-place changes,
exceptions, generators, numpy numbers)."""

from __future__ import annotations

import math

import pytest

from phi1.eval import remote
from phi1.eval.sandbox import Sandbox, SandboxConfig, classify


def _no_handles(tag, rest):
    raise AssertionError(f"unexpected {tag}")


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**70, -(3**90), 1.5, -0.0, float("inf"), "héllo\ud800", b"\x00\xff",
    bytearray(b"ab"), 3 + 4j, [1, [2, (3, {4})]], (), {"a": 1, (1, 2): [3]}, {1, 2}, frozenset({"x"}),
])
def test_plain_values_round_trip(value):
    import json
    wire = json.loads(json.dumps(remote.encode(value, None)))
    back = remote.decode(wire, _no_handles)
    assert back == value and type(back) is type(value)


def test_nan_and_subclasses_arrive_as_plain_values():
    import json
    from collections import Counter, OrderedDict, namedtuple

    class Sneaky(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__

    P = namedtuple("P", "x y")
    handles = remote.Handles()
    for value, plain in [(Sneaky(3), 3), (Counter("aab"), {"a": 2, "b": 1}), (OrderedDict(a=1), {"a": 1}),
                         (P(1, 2), (1, 2))]:
        back = remote.decode(json.loads(json.dumps(remote.encode(value, handles))), _no_handles)
        assert back == plain and type(back) is type(plain)
    assert back != (1, 3)
    nan = remote.decode(json.loads(json.dumps(remote.encode(float("nan"), None))), _no_handles)
    assert math.isnan(nan)


def test_the_judge_refuses_to_send_objects():
    with pytest.raises(TypeError, match="cannot be passed to the program"):
        remote.encode(lambda: 1, None)


def test_malformed_values_are_refused():
    for bad in (["zz", 1], ["i", 5], ["d", [1]], [1, 2], {"a": 1}, ["c", "x", 1]):
        with pytest.raises((ValueError, TypeError)):
            remote.decode(bad, _no_handles)


@pytest.fixture(scope="module")
def box():
    with Sandbox(SandboxConfig(workers=2, timeout=3)) as sb:
        yield sb


CASES = {
    # MBPP style: a class from the solution builds the arguments; objects stay in the program
    "solution_class_args": (
        "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
        "def max_chain_length(arr, n):\n    arr = sorted(arr, key=lambda p: p.b)\n    best, end = 0, None\n"
        "    for p in arr:\n        if end is None or p.a > end:\n            best, end = best + 1, p.b\n    return best\n",
        "assert max_chain_length([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)], 4) == 3\n"
        "assert Pair(1, 2).b == 2\n", "passed"),
    # setup code (MBPP's test_setup_code) runs in the program; its objects are handles in the tests
    "setup_objects": (
        "class Node:\n    def __init__(self, v, l=None, r=None):\n        self.v, self.l, self.r = v, l, r\n"
        "root = Node(1, Node(2, Node(4)), Node(3))\n"
        "def max_height(n):\n    return 0 if n is None else 1 + max(max_height(n.l), max_height(n.r))\n",
        "assert (max_height(root)) == 3\nassert root == root and root != Node(1)\n", "passed"),
    # in-place changes to list/dict/set arguments are seen by the tests
    "mutation": (
        "def fill(xs, d, s):\n    xs.append(4)\n    xs[0] = 9\n    d['k'] = 1\n    s.add(2)\n",
        "a, d, s = [1, 2, 3], {}, set()\nassert fill(a, d, s) is None\nassert a == [9, 2, 3, 4] and d == {'k': 1} "
        "and s == {2}\n", "passed"),
    # exceptions keep their type across the boundary
    "exceptions": (
        "def parse(x):\n    return int(x)\nclass Mine(Exception):\n    pass\ndef boom():\n    raise Mine('no')\n",
        "try:\n    parse('x')\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError\n"
        "try:\n    boom()\nexcept Exception as e:\n    assert 'Mine' in str(e)\n", "passed"),
    # generators and other iterables are consumed in the program
    "generator": ("def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n",
                  "assert list(evens(7)) == [0, 2, 4, 6]\nassert len(list(evens(3))) == 2\n", "passed"),
    # modules a solution imports are the judge's own
    "module_name": ("import math\ndef root(x):\n    return math.sqrt(x)\n",
                    "assert math.isclose(root(2) ** 2, 2)\n", "passed"),
    # floats, big ints, nan and tuples of them
    "numbers": ("def f():\n    return (0.1 + 0.2, 2 ** 200, float('nan'), -0.0)\n",
                "r = f()\nassert r[0] == 0.30000000000000004 and r[1] == 2 ** 200 and r[2] != r[2]\n", "passed"),
    # a keyword argument and a default
    "kwargs": ("def g(a, b=2, *, c=3):\n    return a + b * c\n", "assert g(1, c=10) == 21 and g(1) == 7\n", "passed"),
    # a name the program never defined is a NameError in the tests
    "missing_name": ("def f():\n    return 1\n", "assert nothere() == 1\n", "exception"),
    # the tests cannot hand the program one of their own objects
    "judge_object_arg": ("def apply(fn, x):\n    return fn(x)\n", "assert apply(lambda v: v + 1, 1) == 2\n",
                         "exception"),
}


def test_judged_programs_keep_python_semantics(box):
    names = list(CASES)
    jobs = [(i, {"program": CASES[n][0], "check": CASES[n][1]}) for i, n in enumerate(names)]
    results = {r["id"]: r for r in box.run(jobs)}
    for i, name in enumerate(names):
        kind = classify(results[i])[0]
        assert kind == CASES[name][2], (name, results[i]["exc_type"], results[i]["message"])


def test_numpy_scalars_compare_as_numbers(box):
    pytest.importorskip("numpy")
    job = {"program": "import numpy as np\ndef s(xs):\n    return np.sum(np.array(xs))\n"
                      "def m(xs):\n    return np.mean(xs)\n",
           "check": "assert s([1, 2, 3]) == 6\nassert m([1, 2]) == 1.5\n"}
    res = box.run_one(job)
    assert res["status"] == "passed", res
