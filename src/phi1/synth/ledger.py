"""A generation job's ledger and side files: the output JSONL is the ledger (one record per prompt
index, checked by its prompt hash), `OUT.job.json` pins what the job is, `OUT.failures.jsonl` lists
what failed. Shared by the live job (`phi1.synth.job`) and the batch API (`phi1.synth.batch`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from phi1.errors import Phi1Error
from phi1.llm.client import LLMResult
from phi1.synth.spec import Spec, read_structured
from phi1.utils.io import JsonlAppender, atomic_write_json, read_jsonl
from phi1.utils.safety import oserror_line


def side_paths(out: Path) -> tuple[Path, Path]:
    """The job manifest and failures file that sit beside an output file."""
    return out.with_name(out.name + ".job.json"), out.with_name(out.name + ".failures.jsonl")


def _scan_ledger(out: Path) -> tuple[dict[int, str], int]:
    """(index -> prompt hash of the records already in the output, lines repeating an index).

    A torn last line left by a crash is repaired first. The first record of an index wins.
    """
    done: dict[int, str] = {}
    repeats = 0
    if not out.exists():
        return done, repeats
    JsonlAppender(out).close()  # repairs a torn last line left by a crash
    for rec in read_jsonl(out):
        meta = rec.get("meta") or {}
        if "index" in meta and "prompt_sha256" in meta:
            i = int(meta["index"])
            if i in done:
                repeats += 1
                continue
            done[i] = meta["prompt_sha256"]
    return done, repeats


def _done_ledger(out: Path) -> dict[int, str]:
    """index -> prompt hash of the records already in the output (after repairing a torn tail)."""
    return _scan_ledger(out)[0]


def _write_json(path: Path, obj: dict) -> None:
    try:
        atomic_write_json(path, obj)
    except OSError as exc:  # atomic_write removed its temp file; say which file could not be written
        raise Phi1Error(oserror_line(OSError(exc.errno, exc.strerror, str(path)))) from None


def _check_manifest(path: Path, pinned: dict) -> dict:
    """Load the job manifest, refusing to continue a job that had different settings."""
    if not path.exists():
        return {"pinned": pinned, "runs": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Phi1Error(f"{path}: unreadable job manifest ({exc}); delete it only if the output beside it is empty") from None
    old = manifest.get("pinned", {})
    for key, value in pinned.items():
        if key in old and old[key] != value:
            raise Phi1Error(
                f"{path}: this output was started with {key}={old[key]!r}, now {value!r}; "
                "rerun with the original settings to resume, or write to another --out"
            )
    return manifest


def _pending(prompts, done: dict[int, str], out: Path):
    """The (index, prompt, hash) items not yet in the output, checking the ones that are."""
    for i, bp, h in prompts:
        if i not in done:
            yield i, bp, h
        elif done[i] != h:
            raise Phi1Error(f"{out}: record {i} was made from a different prompt; the spec or phi1 version "
                            "changed since; write to another --out")


def settle(cfg, spec: Spec, api: str, sampling: dict, i: int, bp, h: str, res: LLMResult,
           **extra) -> tuple[dict | None, dict | None]:
    """(ledger record, None) for a usable answer to record `i`, else (None, failures row).

    Both the request and the batch path write through here, so their records agree; `extra`
    (e.g. `batch_id`) goes into the record's meta or the failures row. With a structured spec
    the text is the JSON answer's `text_field` and the whole object is `meta.structured`; an
    answer that is not such JSON is a failure, asked again by the next run.
    """
    text, structured, error = res.text, None, res.error
    if res.ok and spec.response_format:
        try:
            text, structured = read_structured(res.text, spec.text_field)
        except ValueError as exc:
            error = f"structured: {exc}"
    if not res.ok or error:
        return None, {"index": i, "prompt_sha256": h, "error": error, "attempts": res.attempts,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    meta = {"kind": cfg.kind, "index": i, "seed": cfg.seed, "prompt_sha256": h,
            "constraints": bp.constraints, "model": cfg.model, "api": api, "sampling": sampling,
            "spec": spec.source, "spec_sha256": spec.sha256,
            "prompt": bp.messages if api == "chat" else bp.prompt, "usage": res.usage,
            "finish_reason": res.finish_reason, "attempts": res.attempts, **extra}
    if structured is not None:
        meta["structured"] = structured
    return {"id": f"{cfg.kind}-{cfg.seed}-{i:07d}", "text": text, "meta": meta}, None
