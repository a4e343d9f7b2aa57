"""Progress bars with rate and ETA (tqdm), quiet when not on a terminal unless forced."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", unit_scale: bool = False, **kw):
    """A tqdm bar on stderr; disabled with PHI1_NO_PROGRESS=1."""
    disable = os.environ.get("PHI1_NO_PROGRESS") == "1"
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        file=sys.stderr,
        disable=disable,
        dynamic_ncols=True,
        mininterval=0.5,
        **kw,
    )
