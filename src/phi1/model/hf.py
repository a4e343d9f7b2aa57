"""Hugging Face-format model directories of every family: save ours, load theirs.

Saved directories hold config.json (the family's model_type and architectures), model.safetensors
(or transformers' shards with an index), generation_config.json and the tokenizer files, so
`transformers.AutoModelForCausalLM.from_pretrained(dir)` loads them with no custom code. What a
family's files are (config.json fields, tensor names, legacy layouts) is its HF adapter
(`phi1.model.<family>.hf`, found through `phi1.model.family`); this module reads and writes
the files, one or sharded safetensors (with an index) or `.bin`, for any family.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from phi1.errors import Phi1Error
from phi1.utils.io import directory_commit, read_json, temp_prefix

# ---------------------------------------------------------------- files


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    def load_one(f: Path) -> dict[str, torch.Tensor]:
        try:
            if f.suffix == ".safetensors":
                check_safetensors_file(f)  # a truncated file fails here, with its size, not in a mmap
                return load_file(str(f))
            return torch.load(str(f), map_location="cpu", weights_only=True)
        except Phi1Error:
            raise
        except Exception as exc:  # corrupt or truncated files
            raise Phi1Error(f"{f}: cannot read weights ({type(exc).__name__}: {_first_line(exc)}); the file is "
                            "damaged or incomplete: write the model directory again (or copy it again)") from None

    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            weight_map = _weight_map(index)
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                f = path / shard
                if not f.exists():
                    raise Phi1Error(f"{index}: names shard {shard!r}, which is missing from {path}")
                sd.update(load_one(f))
            return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return load_one(path / name)
    raise Phi1Error(
        f"{path}: no weights found (expected model.safetensors, a sharded *.safetensors with "
        "model.safetensors.index.json, or pytorch_model.bin)"
    )


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def check_safetensors_file(f: Path) -> None:
    """Cheap integrity check of a .safetensors file: its header parses and its size matches it.

    Reads only the header (no tensor data), so `phi1 model info` can reject a truncated file.
    """
    import struct

    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 << 20:
                raise ValueError(f"header length {n} exceeds the file's {size} bytes")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise Phi1Error(f"{f}: cannot read weights ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Phi1Error(f"{f}: cannot read weights ({_first_line(exc)}); the file is damaged or incomplete: "
                        "write the model directory again (or copy it again)") from None
    end = 0
    for key, meta in header.items():
        if key != "__metadata__" and isinstance(meta, dict):
            end = max(end, int((meta.get("data_offsets") or [0, 0])[1]))
    if 8 + n + end != size:
        raise Phi1Error(f"{f}: cannot read weights (truncated: {size} bytes, its header says {8 + n + end}); "
                        "the file is damaged or incomplete: write the model directory again (or copy it again)")


def _weight_map(index: Path) -> dict:
    """The `weight_map` (tensor name -> shard file) of a sharded checkpoint's index file."""
    weight_map = read_json(index, "shard index", expect=dict).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise Phi1Error(f"shard index {index}: malformed (needs a weight_map object of tensor name -> file name)")
    return weight_map


def check_weights(path: str | os.PathLike) -> None:
    """Raise a Phi1Error when a model directory's safetensors weights are missing or truncated."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(_weight_map(index).values()))
        for name in files:
            if not (path / name).exists():
                raise Phi1Error(f"{index}: names shard {name!r}, which is missing from {path}")
            check_safetensors_file(path / name)
    elif (path / "model.safetensors").exists():
        check_safetensors_file(path / "model.safetensors")
    elif not (path / "pytorch_model.bin").exists() and not (path / "pytorch_model.bin.index.json").exists():
        raise Phi1Error(f"{path}: no weights found (expected model.safetensors, a sharded *.safetensors with "
                        "model.safetensors.index.json, or pytorch_model.bin)")


def config_from_hf(d: dict[str, Any], source: str = "config.json"):
    """The config of any family from its config.json (the family that reads its model_type)."""
    from phi1.model.family import for_model_type

    family = for_model_type(d.get("model_type"), source)
    try:
        return family.hf().config_from_hf(d)
    except KeyError as exc:
        raise Phi1Error(f"{source}: missing required field {exc.args[0]!r} for model_type {d.get('model_type')!r}") from None
    except Phi1Error as exc:
        raise Phi1Error(f"{source}: {exc}") from None


def read_config(path: str | os.PathLike):
    path = Path(path)
    if not path.is_dir():
        raise Phi1Error(f"{path}: model directory not found")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise Phi1Error(f"{cfg_file}: missing; a model directory needs config.json (is {path} a model directory?)")
    return config_from_hf(read_json(cfg_file, "model config", expect=dict), source=str(cfg_file))


def load_model_dir(path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = torch.float32,
                   **config_overrides):
    """Load a model directory of any family, in any layout its adapter reads; shapes are checked
    against config.json."""
    from phi1.model.family import family_of

    path = Path(path)
    cfg = read_config(path)
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    family = family_of(cfg)
    sd = family.hf().from_hf_state_dict(_read_weights(path), cfg, str(path))
    with torch.device("meta"):
        model = family.network()(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings and "lm_head.weight" not in sd and "embed.weight" in sd:
        sd["lm_head.weight"] = sd["embed.weight"]
    unexpected = sorted(k.removeprefix("<unexpected>") for k in sd if k not in expected)
    missing = sorted(k for k in expected if k not in sd)
    if unexpected or missing:
        raise Phi1Error(
            f"{path}: weights do not match config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, t in expected.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise Phi1Error(
                f"{path}: weight {k} has shape {tuple(sd[k].shape)} but config.json implies {tuple(t.shape)}; "
                "the config and the weights disagree"
            )
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(dtype or v.dtype) for k, v in sd.items()}, strict=True)
    # Buffers (rotary tables) are not in the state dict: rebuild them for real.
    model._build_rope(cfg.max_position_embeddings, device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model


# The files `save_model_dir` writes (the tokenizer's three are written only with a tokenizer).
MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Weight files that would be read instead of (or besides) our model.safetensors if left beside it.
_SHADOWING = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "pytorch_model.bin")

_OS_ERROR_RE = re.compile(r"os error (\d+)")


def _as_oserror(exc: BaseException, path: Path) -> OSError | None:
    """The OSError behind a library's wrapped I/O failure (safetensors says `(os error 28)`)."""
    if isinstance(exc, OSError):
        return exc
    m = _OS_ERROR_RE.search(str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code), str(path))
    return None


MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB"): bigger models are saved sharded


def _shards(sd: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """The state dict cut, in order, into pieces of at most `max_bytes` (a bigger tensor is a piece alone)."""
    pieces: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        n = t.numel() * t.element_size()
        if pieces[-1] and size + n > max_bytes:
            pieces.append({})
            size = 0
        pieces[-1][name] = t
        size += n
    return pieces


def _weight_layout(model, dtype, max_shard_bytes: int) -> tuple[list[str], list[dict]]:
    """The weight files a save writes (one `model.safetensors`, or transformers' shard names) and their
    tensors, in the HF layout and `dtype`. On a model built on the meta device this costs nothing."""
    from phi1.model.family import family_of

    if max_shard_bytes < 1:
        raise Phi1Error(f"max_shard_bytes = {max_shard_bytes}: must be at least 1")
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    hf_sd = family_of(cfg).hf().to_hf_state_dict(sd, cfg)
    hf_sd = {k: v.to(dtype=dtype) if v.is_meta else v.to(device="cpu", dtype=dtype).contiguous()
             for k, v in hf_sd.items()}
    pieces = _shards(hf_sd, max_shard_bytes)
    names = (["model.safetensors"] if len(pieces) == 1 else
             [f"model-{i:05d}-of-{len(pieces):05d}.safetensors" for i in range(1, len(pieces) + 1)])
    return names, pieces


def planned_weight_files(cfg, dtype: torch.dtype = torch.float32, max_shard_bytes: int | None = None) -> list[str]:
    """The weight file names `save_model_dir` would write for a model of `cfg`, without building its
    weights (a meta-device model): lets `model init` check its output before a 16 GB build."""
    from phi1.model.family import build_model

    with torch.device("meta"):
        probe = build_model(cfg)
    return _weight_layout(probe, dtype, MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes)[0]


def check_save_target(out_dir: str | os.PathLike, names: list[str]) -> None:
    """Refuse an existing directory whose other weight files would be loaded instead of `names`.

    transformers loads `model.safetensors` before an index, and an index (ours or not) before a single
    file; phi1 never deletes a file it did not write, so a directory holding the other layout is refused.
    An index of ours is replaced when it lists exactly the shards this save writes."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Phi1Error(f"{out}: exists and is not a directory; choose a directory path")
    if not out.is_dir():
        return
    sharded = len(names) > 1
    shadow = [n for n in _SHADOWING if (out / n).exists() and not (sharded and n == "model.safetensors.index.json")]
    if sharded:
        if (out / "model.safetensors").exists():
            shadow.insert(0, "model.safetensors")
        index = out / "model.safetensors.index.json"
        if index.exists():
            try:
                listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                listed = None
            if listed != set(names):
                shadow.append("model.safetensors.index.json (naming other shards)")
    if shadow:
        what = f"a model saved in {len(names)} files" if sharded else "the single model.safetensors phi1 writes"
        raise Phi1Error(f"{out}: holds {', '.join(shadow)}, which would be loaded instead of {what}; "
                        "choose a new directory (phi1 does not delete files it did not write)")


def save_model_dir(model, out_dir: str | os.PathLike, tokenizer=None,
                   dtype: torch.dtype | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write an HF-format model directory without ever deleting a file phi1 did not write.

    Weights over `max_shard_bytes` are written as transformers writes them: `model-0000i-of-0000N.safetensors`
    plus `model.safetensors.index.json`. An existing directory (one `model init` has just claimed, or an
    earlier save's) is written into when no weight file of another layout would shadow ours
    (`check_save_target`).

    A new directory is assembled under a pid-named temp name beside it and renamed into place
    (atomic). Into an existing directory, each of our files is written to a pid-named temp file
    and renamed over its own name; nothing else in the directory is touched. A directory holding
    other weight files (a sharded index, pytorch_model.bin) that would be read instead of ours is
    refused. A full or read-only disk raises an OSError naming the file, with no temp left behind.
    """
    from safetensors.torch import save_file

    out_dir = Path(os.path.abspath(os.fspath(out_dir)))
    from phi1.model.family import family_of

    cfg = model.config
    adapter = family_of(cfg).hf()
    dtype = dtype or next(model.parameters()).dtype
    names, pieces = _weight_layout(model, dtype, max_shard_bytes)
    check_save_target(out_dir, names)
    hf_sd = {k: v for piece in pieces for k, v in piece.items()}
    fresh = not out_dir.exists()

    def write_files(tmp: Path) -> None:
        for name, piece in zip(names, pieces):
            try:
                save_file(piece, str(tmp / name), metadata={"format": "pt"})
            except Exception as exc:  # safetensors wraps I/O errors in its own type
                err = _as_oserror(exc, out_dir / name)
                if err is None:
                    raise
                raise err from None
        if len(pieces) > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in hf_sd.values())},
                     "weight_map": {k: name for name, piece in zip(names, pieces) for k in piece}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(adapter.config_to_hf(cfg, dtype), indent=2) + "\n")
        eos = cfg.eos_token_id
        gen = {"bos_token_id": cfg.bos_token_id if cfg.bos_token_id is not None else eos,
               "eos_token_id": eos, "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else eos,
               "transformers_version": adapter.TRANSFORMERS_VERSION_WRITTEN}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            from phi1.chat import PHI3_TEMPLATE

            tokenizer.save(tmp, default_chat_template=PHI3_TEMPLATE)  # every model we save can chat
        _fsync_dir_files(tmp)

    try:
        if fresh:  # a new directory: built beside it and renamed in
            with directory_commit(out_dir) as tmp:
                write_files(tmp)
            return out_dir
        # An existing one: built inside, then each file renamed over its own name; weights first,
        # config.json last: until config.json is replaced an interrupted save reads as the old model's
        # config with a mismatched-shape error, never silently.
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir.name or "model"), suffix=".tmp", dir=out_dir))
        try:
            write_files(tmp)
            for name in sorted(os.listdir(tmp), key=lambda n: (n == "config.json", n)):
                os.replace(tmp / name, out_dir / name)
            os.rmdir(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        raise _with_path(exc, out_dir) from None
    return out_dir


def _with_path(exc: OSError, where: Path) -> OSError:
    """The OSError with a filename (the directory when the library gave none)."""
    if exc.filename:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(where))


def _fsync_dir_files(d: Path) -> None:
    for name in os.listdir(d):
        f = d / name
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
