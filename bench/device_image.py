"""Make this interpreter look like the GPU machine's image: every installed distribution that is not in
bench/device_image.txt becomes unimportable (ModuleNotFoundError, as on the device).

    python bench/device_image.py DIR      # writes DIR/sitecustomize.py; then run with PYTHONPATH=DIR:...

The blocker is a sitecustomize module, so it holds in every process started with that PYTHONPATH
(torchrun's workers, `timeout python3 ...` steps of bench/gpu_check.sh). Versions cannot be emulated
(the device has torch 2.11 and transformers 5.17); package presence can, and that is what broke first.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

LIST = Path(__file__).with_name("device_image.txt")
ALWAYS = {"phi1"}  # the working tree travels to the device; phi1 runs from it with PYTHONPATH=src


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_distributions(path: Path = LIST) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(_norm(line))
    return names


def with_requirements(names: set[str]) -> set[str]:
    """`names` plus what their installed versions require (no extras), transitively: an image package
    brings what it needs there, and the version installed here may need a package the device's does not
    (huggingface_hub here needs httpx2), which would otherwise block a package the image does have."""
    from packaging.requirements import Requirement

    installed = {_norm(d.metadata["Name"]): d for d in md.distributions()}
    todo, seen = list(names), set(names)
    while todo:
        dist = installed.get(todo.pop())
        for line in (dist.requires or []) if dist is not None else []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = _norm(req.name)
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def blocked_modules(allowed: set[str] | None = None) -> list[str]:
    """Top-level modules that only distributions missing from the image (and from what its packages
    require) provide."""
    allowed = with_requirements((allowed if allowed is not None else image_distributions()) | {"torch"}) - ALWAYS
    out = []
    for module, dists in md.packages_distributions().items():
        if module.startswith("__") or not module.isidentifier():
            continue
        if not any(_norm(d) in allowed or _norm(d) in ALWAYS for d in dists):
            out.append(module)
    return sorted(set(out))


SITECUSTOMIZE = '''\
# Written by bench/device_image.py: the GPU image's packages only, plus what PYTHONPATH carries (on the
# device, wheels travel in the working tree and are installed to a folder put on PYTHONPATH).
import os
import sys

_BLOCKED = frozenset({blocked!r})
_CARRIED = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def _carried(top):
    return any(os.path.exists(os.path.join(d, top)) or os.path.exists(os.path.join(d, top + ".py")) for d in _CARRIED)


class _NotOnTheImage:
    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _BLOCKED and not _carried(top):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotOnTheImage)
'''


def write_blocker(directory: Path) -> list[str]:
    blocked = blocked_modules()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=blocked))
    return blocked


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/device_image.py DIR", file=sys.stderr)
        return 2
    blocked = write_blocker(Path(argv[0]))
    print(f"{len(blocked)} modules blocked: {' '.join(blocked)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
