"""Reading config.json dialects: the helpers every family's HF adapter uses."""

from __future__ import annotations


def value(d: dict, *names: str, default=None):
    """The first of `names` that `d` holds with a value (not None), else `default`."""
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def first(v):
    """A list's first item (transformers writes eos_token_id as one id or a list), else the value."""
    return v[0] if isinstance(v, list) and v else v
