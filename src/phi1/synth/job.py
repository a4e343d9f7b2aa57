"""Synthetic-data jobs: N prompts from a spec, sent through `LLMClient`, written exactly once.

Exactly-once comes from three facts:
  * record i's prompt is a pure function of (spec, seed, i) (`prompts.iter_prompts`);
  * the output file is the ledger: every record carries its index and prompt hash, and it
    is appended one whole line per `os.write` (`JsonlAppender`), so a SIGKILL leaves
    either the whole record or nothing (a torn tail is cut off on reopen);
  * on start the job reads the (index, hash) pairs already in the output and only sends
    the rest, so a request that already succeeded is never sent again.
A request that exhausts its attempts goes to `<out>.failures.jsonl` and is retried by the
next run of the same command. `<out>.job.json` pins the seed, spec and model so that a
rerun with different settings cannot mix two jobs in one file.

One writer per output: a job holds an exclusive lock (`.<out>.lock`, `OutputLock`) for its
whole run, so a second job on the same `--out` fails at once naming the first one's pid
instead of sending every request again and appending a second copy of every record. A
ledger that already holds repeated indices (two jobs of an older phi1 at once) is counted
by unique index; the repeats are reported, and `phi1 synth validate` keeps the first.
A write that fails (full or read-only disk) stops the job with one error line; the
record being written is cut back off, so the ledger never keeps a torn line.

`batch=True` sends the pending records through the OpenAI Batch API instead
(`phi1.synth.batch`); both paths build records and failures with `settle`, so the ledger
is the same. A spec with `response_format` sends it in every request and takes the
record's text from the JSON answer's `text_field`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from phi1.errors import ConfigError, Phi1Error
from phi1.llm.client import ClientSettings, LLMClient
from phi1.synth.prompts import iter_prompts
from phi1.synth.ledger import _check_manifest, _done_ledger, _pending, _scan_ledger, _write_json, settle, side_paths
from phi1.synth.spec import Spec, load_spec
from phi1.utils.io import JsonlAppender, read_jsonl, write_jsonl
from phi1.utils.progress import progress
from phi1.utils.safety import OutputLock, clean_stale_temps, oserror_line

log = logging.getLogger(__name__)


@dataclass
class JobConfig(ClientSettings):
    """One synth job; the client's fields (concurrency, timeout, ...) are `ClientSettings`' (keyword-only)."""

    kind: str
    endpoint: str | list[str]
    model: str
    count: int
    out: str
    spec: str | None = None
    seed: int = 0  # record i's prompt depends only on (seed, i)
    sampling: dict = field(default_factory=dict)  # overrides the spec's sampling
    api: str | None = None  # chat | completions; None = the spec's
    max_consecutive_failures: int = 50  # stop the run after this many failed requests in a row (0 = never)
    batch: bool = False  # the OpenAI Batch API (half price, answers within 24 h); rerun to resume the same batches
    batch_size: int = 50_000  # with batch: most requests per batch file (the API's limit; files stay under 200 MB)
    poll_interval: float = 30.0  # with batch: seconds between polls

    def validate(self) -> None:
        if self.count < 1:
            raise ConfigError(f"count: {self.count} must be >= 1")
        if not 1 <= self.batch_size <= 50_000:
            raise ConfigError(f"batch_size: {self.batch_size} must be 1-50000 (the Batch API's most requests per batch)")
        if not self.poll_interval > 0:
            raise ConfigError(f"poll_interval: {self.poll_interval} must be > 0 seconds")
        if self.max_consecutive_failures < 0:
            raise ConfigError(f"max_consecutive_failures: {self.max_consecutive_failures} must be >= 0 (0 = never stop)")
        if self.api not in (None, "chat", "completions"):
            raise ConfigError(f"api: {self.api!r} is not one of chat, completions")


@dataclass
class JobReport:
    requested: int
    already_done: int
    generated: int
    failed: int
    out: str
    failures_file: str | None
    elapsed_s: float
    stats: dict
    stopped: str | None = None  # why the run stopped early (too many failures in a row)
    # Lines of the ledger that repeat an index already in it (two jobs of an older phi1 wrote
    # one --out at once); each index counts once, the repeats are left for validate to drop.
    duplicates: int = 0
    # Distinct indices in [0, requested) the ledger holds after the run (None: not counted).
    present: int | None = None

    @property
    def complete(self) -> bool:
        have = self.present if self.present is not None else self.already_done + self.generated
        return have >= self.requested

    @property
    def missing(self) -> int:
        have = self.present if self.present is not None else self.already_done + self.generated
        return max(0, self.requested - have)


def _check_sampling(sampling: dict, source: str) -> None:
    """The spec's sampling with the command's overrides, through the one sampling check
    (`phi1.infer.settings`): a nan temperature is one error line, not a request the server refuses."""
    from phi1.infer.settings import sampling_problem

    problem = sampling_problem(sampling.get("max_tokens", 1), sampling.get("temperature", 0.0),
                               sampling.get("top_p", 1.0), 0, sampling.get("seed"))
    if problem is not None:
        raise ConfigError(f"{source} + flags: sampling " + problem.replace("max_new_tokens", "max_tokens", 1))


def run_job(cfg: JobConfig, client: LLMClient | None = None) -> JobReport:
    """Generate `cfg.count` records into `cfg.out`, resuming whatever a previous run finished.

    The output is locked for the whole run: a second job on the same output raises a
    Phi1Error at once, naming the pid of the job that holds it.
    """
    cfg.validate()
    spec = load_spec(cfg.spec, cfg.kind)
    sampling = {**spec.sampling, **{k: v for k, v in cfg.sampling.items() if v is not None}}
    _check_sampling(sampling, spec.source)
    out = Path(cfg.out)
    if out.is_dir():
        raise Phi1Error(f"--out {out}: is a directory; give the path of a JSONL file")
    with OutputLock(out, is_dir=False, what="synth output"):
        for side in side_paths(out):  # the lock cleaned OUT's own stale temps; these are the manifest's
            clean_stale_temps(out.parent, stem=side.name)
        return _run_locked(cfg, spec, sampling, out, client)


def _run_locked(cfg: JobConfig, spec: Spec, sampling: dict, out: Path, client: LLMClient | None) -> JobReport:
    api = cfg.api or spec.api
    manifest_path, failures_path = side_paths(out)
    pinned = {"kind": cfg.kind, "seed": cfg.seed, "spec_sha256": spec.sha256, "model": cfg.model,
              "sampling": sampling, "api": api}
    manifest = _check_manifest(manifest_path, pinned)
    done, repeats = _scan_ledger(out)
    if repeats:
        log.warning("%s: %d lines repeat a record index already in the file (two jobs wrote this output at once, "
                    "with a phi1 older than the output lock); each index is counted once, and `phi1 synth "
                    "validate` keeps the first record of each", out, repeats)
    if client is None:
        client = cfg.make_client()
    already = sum(1 for i in done if i < cfg.count)
    todo = _pending(iter_prompts(spec, cfg.seed, cfg.count), done, out)  # lazy: N may be millions
    manifest["pinned"] = pinned
    _write_json(manifest_path, manifest)
    t0 = time.monotonic()
    from phi1.synth.batch import open_batches, run_batches

    if cfg.batch:
        generated, failed, stopped, fatal = run_batches(cfg, spec, client, api, sampling, out, manifest, done)
    elif open_batches(manifest):
        raise Phi1Error(f"{manifest_path}: batches of this job are still open ({', '.join(open_batches(manifest))}); "
                        "rerun the same command with --batch to collect them first")
    else:
        generated, failed, stopped, fatal = asyncio.run(_generate(cfg, spec, client, api, sampling, todo, out,
                                                                  failures_path, already))
    if fatal is not None:
        try:
            if failures_path.exists() and failures_path.stat().st_size == 0:
                failures_path.unlink()  # opened for this run, nothing failed: leave no empty file behind
        except OSError:
            pass
        raise Phi1Error(f"{oserror_line(fatal)}; the {already + generated} records written so far are kept: "
                        "rerun the same command to finish")
    elapsed = time.monotonic() - t0
    stats = client.stats.as_dict()
    try:
        present = _settle_failures(failures_path, out, cfg.count)
    except OSError as exc:
        raise Phi1Error(oserror_line(OSError(exc.errno, exc.strerror, exc.filename or str(failures_path)))) from None
    manifest["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - elapsed)),
                             "elapsed_s": round(elapsed, 3), "generated": generated, "failed": failed,
                             "count": cfg.count, "stopped": stopped, "stats": stats,
                             "mode": "batch" if cfg.batch else "requests"})
    _write_json(manifest_path, manifest)
    return JobReport(cfg.count, already, generated, failed, str(out),
                     str(failures_path) if failed else None, elapsed, stats, stopped,
                     duplicates=repeats, present=present)


async def _generate(cfg, spec: Spec, client: LLMClient, api: str, sampling: dict, todo, out: Path,
                    failures_path: Path, already: int) -> tuple[int, int, str | None, OSError | None]:
    """Send the pending requests; return (written, failed, why stopped early, the write error if any).

    A write error stops every worker (it is returned, not raised from a task, so the user
    sees one error line rather than one traceback per worker).
    """
    counts = {"ok": 0, "failed": 0, "streak": 0}
    stopped: list[str] = []
    fatal: list[OSError] = []
    bar = progress(total=cfg.count, desc=f"synth {cfg.kind}", unit="rec", initial=already)
    # Plain os.write per record survives SIGKILL (the kernel has the bytes); fsync is batched
    # to once a second because a disk flush per record would cap throughput.
    last_sync = [time.monotonic()]

    async def worker(writer: JsonlAppender, failures: JsonlAppender) -> None:
        try:
            await work(writer, failures)
        except OSError as exc:
            if not fatal:
                fatal.append(exc)
            stopped.append(f"cannot write: {exc}")

    async def work(writer: JsonlAppender, failures: JsonlAppender) -> None:
        for i, bp, h in todo:  # one shared iterator: workers take the next item in turn
            if stopped:
                return  # the item just taken is not lost: it is not in the output, so the next run sends it
            if api == "chat":
                res = await client.chat(bp.messages, **sampling, **spec.request_extra())
            else:
                res = await client.complete(bp.prompt, **sampling, **spec.request_extra())
            rec, fail = settle(cfg, spec, api, sampling, i, bp, h, res)
            if rec is not None:
                writer.write(rec)
                counts["ok"] += 1
                counts["streak"] = 0
            else:
                failures.write(fail)
                counts["failed"] += 1
                counts["streak"] += 1
                if counts["failed"] <= 10 or counts["failed"] % 100 == 0:
                    log.warning("record %d failed after %d attempts: %s", i, res.attempts, fail["error"])
                limit = cfg.max_consecutive_failures
                if limit and counts["streak"] >= limit and not stopped:
                    stopped.append(f"{counts['streak']} requests failed in a row (last: {fail['error']})")
                    log.error("stopping: %s; check the endpoint, then rerun the same command", stopped[0])
            now = time.monotonic()
            if now - last_sync[0] > 1.0:
                last_sync[0] = now
                writer.fsync()
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], refresh=False)

    try:
        with JsonlAppender(out, sync=False) as writer, JsonlAppender(failures_path, sync=False) as failures:
            n_workers = min(cfg.count - already, client.concurrency * 2)  # a few spare: prompts ready when a slot frees
            try:
                await asyncio.gather(*(worker(writer, failures) for _ in range(n_workers)))
            finally:
                for f in (writer, failures):
                    try:
                        f.fsync()
                    except OSError as exc:
                        if not fatal:
                            fatal.append(exc)
                await client.aclose()
    finally:
        bar.close()
    return counts["ok"], counts["failed"], (stopped[0] if stopped else None), (fatal[0] if fatal else None)


def _settle_failures(failures_path: Path, out: Path, count: int | None = None) -> int:
    """Keep in the failures file only the requests that are still missing from the output.

    Returns how many distinct indices below `count` the output holds (all of them if None).
    """
    done = _done_ledger(out)
    present = sum(1 for i in done if count is None or 0 <= i < count)
    if not failures_path.exists():
        return present
    still = {}
    for rec in read_jsonl(failures_path, strict=False):
        if rec.get("index") not in done:
            still[rec.get("index")] = rec  # the latest failure per index
    if still:
        write_jsonl(failures_path, list(still.values()))
    else:
        failures_path.unlink()
    return present


def report_dict(rep: JobReport) -> dict:
    return asdict(rep) | {"complete": rep.complete}
