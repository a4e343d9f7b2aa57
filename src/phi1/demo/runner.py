"""The run directory of `phi1 demo` / `phi1 ablate` (their stages run on `phi1.utils.stagegraph`).

`own_run_dir` guards the run directory: `phi1 demo` / `phi1 ablate` write only into a new or
empty directory or one they wrote themselves (marker `.phi1-output.json`; a directory of an
older phi1, without the marker, is recognised by its own state files), and hold an exclusive
lock on it for the whole run, so two runs on one directory cannot interleave.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from phi1.errors import Phi1Error
from phi1.utils.safety import OutputLock, claim_output_dir, read_marker, user_entries

# The state files by which a run directory written before the marker existed is recognised.
_LEGACY = {"demo": "demo.json", "ablate": ".stages"}


def _legacy_owned(root: Path, owner: str) -> bool:
    """A directory an older `phi1 demo`/`phi1 ablate` wrote (no marker): it holds that command's state files."""
    if read_marker(root) is not None:
        return False
    if owner == "demo":
        return (root / "demo.json").is_file() and (root / ".stages").is_dir()
    return (root / ".stages").is_dir() and not (root / "demo.json").exists()


@contextlib.contextmanager
def own_run_dir(root: Path, owner: str, flag: str = "--out") -> Iterator[Path]:
    """Claim `root` for `phi1 OWNER` and lock it for the duration of the `with` block.

    Refuses (one Phi1Error, nothing written) a file, or a non-empty directory that this command
    did not write; there is no --overwrite: a run always has a directory of its own. A second
    run on the same directory fails at once, naming the pid of the one that holds it.
    """
    root = Path(root)
    if root.is_dir() and read_marker(root) is None and _legacy_owned(root, owner):
        claim_output_dir(root, owner, overwrite=True, flag=flag)  # adopt: writes the marker, deletes nothing
    elif root.is_dir():
        marker = read_marker(root) or {}
        entries = user_entries(root)
        if entries and marker.get("owner") != owner:
            what = (f"was written by `phi1 {marker['owner']}`" if marker.get("owner")
                    else "was not written by this command")
            raise Phi1Error(
                f"{flag} {root}: directory is not empty ({len(entries)} entries) and {what}; `phi1 {owner}` "
                "writes only into a new or empty directory or one of its own runs: choose a new directory "
                "(nothing was written)"
            )
    claim_output_dir(root, owner, flag=flag)
    with OutputLock(root, is_dir=True, what=f"`phi1 {owner}` run directory"):
        yield root
