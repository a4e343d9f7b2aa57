"""OpenAI Batch mode for synth jobs (`phi1 synth KIND ... --batch`): the same records, half the price.

Pending records go out as request files (at most `--batch-size` requests and 200 MB each):
uploaded (`POST /files`), submitted (`POST /batches`, window 24h), polled (`GET /batches/ID`);
an ended batch's output and error files (`GET /files/ID/content`) go into the ledger and
failures file a normal job writes, through the same `job.settle`, plus `meta.batch_id`.

Exactly once under kill -9: each batch is an entry of `manifest["batches"]` (`OUT.job.json`,
atomic rename), and each step is recorded there before the next one can lose anything:
  uploading  indices, file name, size, hash; POST /files may be under way. A rerun adopts the
             file if the API lists it, else drops the entry (nothing was submitted).
  uploaded   input_file_id known.
  creating   POST /batches may have been sent: before it (on a rerun) and before each retry the
             batch list is searched for one of this input file, so a lost answer never makes a
             second batch.
  submitted  batch_id known: polled every `--poll-interval` seconds until it ends.
  ended      status and file ids known; ingest appends only indices not yet in the ledger.
  ingested   the ledger holds (synced) every answer of the batch; kept as history.
An entry not `ingested` owns its indices: no other batch gets them, and a normal run of the
output is refused until they are collected. Failed lines (error file, missing, unusable, or
the whole batch failed/expired/cancelled) go to the failures file; the next run of the
command submits a new batch for exactly the indices still missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import httpx

from phi1.errors import ConfigError, Phi1Error
from phi1.llm.client import RETRY_STATUSES, LLMClient, LLMResult, _RetryableError, parse_retry_after, read_completion
from phi1.synth.prompts import iter_prompts
from phi1.utils.io import JsonlAppender
from phi1.utils.progress import progress
from phi1.utils.io import temp_prefix

log = logging.getLogger(__name__)

MAX_BYTES = 200 * 1000 * 1000  # the Batch API's largest input file (and 50,000 requests: JobConfig.batch_size)
ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
TERMINAL = ("completed", "failed", "expired", "cancelled")
OPEN = ("uploading", "uploaded", "creating", "submitted", "ended")
_CUSTOM_ID = re.compile(r"^rec-(\d+)-([0-9a-f]{16})$")


def custom_id(i: int, h: str) -> str:
    """A request's custom_id: the record index and the head of its prompt hash."""
    return f"rec-{i}-{h[:16]}"


def open_batches(manifest: dict) -> list[str]:
    """Names (batch or file ids) of the manifest's batches not yet collected into the ledger."""
    return [e.get("batch_id") or e.get("input_file_id") or e["filename"]
            for e in manifest.get("batches", []) if e.get("state") in OPEN]


def _ranges(indices) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def _expand(ranges) -> list[int]:
    return [i for lo, hi in ranges for i in range(lo, hi + 1)]


def _json(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:  # UnicodeDecodeError too
        return None


class _Refused(Phi1Error):
    """The API refused a call (a 4xx other than 408/409/425/429): retrying cannot help."""


class BatchAPI:
    """The Batch API calls, sync; 408/409/425/429/5xx and lost connections are retried with backoff.

    Errors come out as one Phi1Error line with the API key scrubbed (the `LLMClient`'s key).
    """

    def __init__(self, client: LLMClient, timeout: float, max_attempts: int, base_delay: float, state: Path):
        if len(client.endpoints) != 1:
            raise ConfigError(f"--batch: the Batch API is one service; give one --endpoint, not {len(client.endpoints)}")
        self.base, self.client, self.state = client.endpoints[0], client, state
        self.max_attempts, self.base_delay = max_attempts, base_delay
        self.http = httpx.Client(headers=client.auth_headers(), timeout=timeout)
        if logging.getLogger("httpx").level == logging.NOTSET:  # one INFO line per poll otherwise
            logging.getLogger("httpx").setLevel(logging.WARNING)

    def call(self, method: str, path: str, what: str, *, raw: bool = False, recheck=None, **kw):
        """The JSON answer (bytes with `raw`) of one call. `recheck()` runs before each retry and a
        non-None result is returned instead: for a POST that may have been done after all."""
        url = f"{self.base}/{path}"
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1 and recheck is not None and (found := recheck()) is not None:
                return found
            wait = None
            try:
                resp = self.http.request(method, url, **kw)
            except httpx.TransportError as exc:
                err, retry = f"{type(exc).__name__} talking to {url}: {exc}", True
            else:
                if resp.status_code == 200:
                    if raw:
                        return resp.content
                    obj = _json(resp.content)
                    if isinstance(obj, dict):
                        return obj
                    err, retry = f"malformed JSON from {url}: {resp.text[:120]!r}", True
                else:
                    err = f"HTTP {resp.status_code} from {url}: {resp.text[:300]}".replace("\n", " ")
                    retry = resp.status_code in RETRY_STATUSES or resp.status_code >= 500
                    wait = parse_retry_after(resp.headers.get("retry-after"))
            if not retry or attempt == self.max_attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                line = (f"batch API: {what} failed{tries}: {err}; the job's batches are kept in {self.state}: "
                        "fix the cause and rerun the same command")
                raise (Phi1Error if retry else _Refused)(self.client.scrub(line))
            time.sleep(min(60.0, max(wait or 0.0, self.base_delay * 2 ** (attempt - 1))))

    def upload(self, path: Path, filename: str) -> str:
        data = path.read_bytes()
        obj = self.call("POST", "files", f"upload of {filename}", data={"purpose": "batch"},
                        files={"file": (filename, data, "application/jsonl")})
        return self._id(obj, "upload")

    def find_file(self, filename: str, size: int) -> str | None:
        try:
            obj = self.call("GET", "files", "file list", params={"purpose": "batch"})
        except _Refused as exc:
            log.warning("cannot list the uploaded files (%s); uploading again", exc)
            return None
        for f in obj.get("data") or []:
            if isinstance(f, dict) and f.get("filename") == filename and f.get("bytes") == size and f.get("id"):
                return f["id"]
        return None

    def find_batch(self, input_file_id: str, pages: int = 10) -> dict | None:
        """The newest batch made from `input_file_id`, searching the most recent `pages` x 100 batches."""
        params: dict = {"limit": 100}
        for _ in range(pages):
            try:
                obj = self.call("GET", "batches", "batch list", params=params)
            except _Refused as exc:
                log.warning("cannot list the batches to check for one already made (%s)", exc)
                return None
            data = [b for b in obj.get("data") or [] if isinstance(b, dict)]
            for b in data:
                if b.get("input_file_id") == input_file_id and b.get("id"):
                    return b
            if not obj.get("has_more") or not data:
                return None
            params["after"] = data[-1].get("id")
        return None

    def create(self, input_file_id: str, endpoint: str, metadata: dict, look_first: bool = True) -> dict:
        found = self.find_batch(input_file_id) if look_first else None
        if found is not None:
            log.info("batch %s of input file %s was already created; collecting it", found["id"], input_file_id)
            return found
        body = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": metadata}
        obj = self.call("POST", "batches", "batch create", json=body, recheck=lambda: self.find_batch(input_file_id))
        self._id(obj, "batch create")
        return obj

    def retrieve(self, batch_id: str) -> dict:
        return self.call("GET", f"batches/{batch_id}", f"poll of batch {batch_id}")

    def content(self, file_id: str) -> bytes:
        return self.call("GET", f"files/{file_id}/content", f"download of file {file_id}", raw=True)

    def _id(self, obj: dict, what: str) -> str:
        if not isinstance(obj.get("id"), str) or not obj["id"]:
            raise Phi1Error(f"batch API: {what} answered without an id: {json.dumps(obj)[:200]}; is the endpoint "
                            "an OpenAI-compatible Batch API?")
        return obj["id"]


class _Run:
    """One `run_batches` call: the manifest's batch entries, the API, and the counts."""

    def __init__(self, cfg, spec, client, api, sampling, out: Path, manifest: dict, done: dict):
        from phi1.synth.ledger import side_paths

        self.cfg, self.spec, self.client, self.api, self.sampling = cfg, spec, client, api, sampling
        self.out, self.manifest, self.done = out, manifest, done
        self.manifest_path, self.failures_path = side_paths(out)
        self.entries: list[dict] = manifest.setdefault("batches", [])
        self.http = BatchAPI(client, cfg.timeout, cfg.max_attempts, cfg.base_delay, self.manifest_path)
        self.generated = self.failed = 0
        self.stopped: str | None = None

    def save(self) -> None:
        from phi1.synth.ledger import _write_json

        _write_json(self.manifest_path, self.manifest)

    # ---------------------------------------------------------------- submit
    def resume_unsent(self) -> None:
        """Entries a killed run left before a batch id: adopt their file, or drop them."""
        for e in list(self.entries):
            if e["state"] == "uploading":
                fid = self.http.find_file(e["filename"], e["bytes"])
                if fid is None:
                    log.info("dropping the unfinished upload %s; its %d requests go into a new file", e["filename"], e["n"])
                    self.entries.remove(e)
                else:
                    e.update(input_file_id=fid, state="uploaded")
                self.save()
        for e in self.entries:
            if e["state"] in ("uploaded", "creating"):
                self.create(e, look_first=e["state"] == "creating")

    def create(self, e: dict, look_first: bool = False) -> None:
        e["state"] = "creating"
        self.save()  # from here a batch may exist: a rerun looks it up before creating one
        try:
            b = self.http.create(e["input_file_id"], ROUTES[self.api], {
                "phi1_out": self.out.name[:500], "phi1_indices": f"{e['indices'][0][0]}-{e['indices'][-1][1]}"},
                look_first)
        except _Refused:  # no batch was made (the list said so before each retry): the entry owns nothing
            self.entries.remove(e)
            self.save()
            raise
        e.update(batch_id=b["id"], state="submitted", status=b.get("status"))
        self.save()
        log.info("submitted batch %s: %d requests (records %d-%d)", b["id"], e["n"], e["indices"][0][0], e["indices"][-1][1])

    def submit_pending(self) -> None:
        """Write the records in no ledger line and no open batch into request files; submit each."""
        from phi1.synth.ledger import _pending

        owned = {i for e in self.entries if e["state"] in OPEN for i in _expand(e["indices"])}
        chunk: list[int] = []
        fh = tmp = digest = None
        size = 0
        try:
            for i, bp, h in _pending(iter_prompts(self.spec, self.cfg.seed, self.cfg.count), self.done, self.out):
                if i in owned:
                    continue
                prompt = {"messages": bp.messages} if self.api == "chat" else {"prompt": bp.prompt}
                body = {"model": self.cfg.model, **prompt, **{k: v for k, v in self.sampling.items() if v is not None},
                        **self.spec.request_extra()}
                line = (json.dumps({"custom_id": custom_id(i, h), "method": "POST", "url": ROUTES[self.api],
                                    "body": body}, ensure_ascii=False) + "\n").encode()
                if chunk and (len(chunk) >= self.cfg.batch_size or size + len(line) > MAX_BYTES):
                    fh, chunk = self.send(fh, tmp, digest, chunk, size), []
                if fh is None:
                    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.manifest_path.name), suffix=".tmp",
                                               dir=self.out.parent)
                    fh, digest, size = os.fdopen(fd, "wb"), hashlib.sha256(), 0
                fh.write(line)
                digest.update(line)
                size += len(line)
                chunk.append(i)
            if chunk:
                fh = self.send(fh, tmp, digest, chunk, size)
        finally:
            if fh is not None:  # stopped while writing a file (a prompt error, Ctrl-C): nothing of it was sent
                fh.close()
                Path(tmp).unlink(missing_ok=True)

    def send(self, fh, tmp: str, digest, chunk: list[int], size: int) -> None:
        """Upload one written request file and create its batch (recording each step first)."""
        fh.close()
        try:
            sha = digest.hexdigest()
            e = {"state": "uploading", "n": len(chunk), "indices": _ranges(chunk), "bytes": size, "sha256": sha,
                 "filename": f"phi1-{self.out.name}-{sha[:16]}.jsonl",
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.entries.append(e)
            self.save()
            try:
                e.update(input_file_id=self.http.upload(Path(tmp), e["filename"]), state="uploaded")
            except _Refused:
                self.entries.remove(e)
                raise
            finally:
                self.save()
        finally:
            Path(tmp).unlink(missing_ok=True)
        self.create(e)

    # ---------------------------------------------------------------- poll
    def poll(self) -> OSError | None:
        """Poll the submitted batches until all have ended, collecting each round's ended ones;
        returns the ledger's write error, if any."""
        live = [e for e in self.entries if e["state"] == "submitted"]
        bar = progress(total=sum(e["n"] for e in live), desc=f"synth {self.cfg.kind} (batch)", unit="req")
        try:
            while True:
                for e in [e for e in self.entries if e["state"] == "submitted"]:
                    b = self.http.retrieve(e["batch_id"])
                    counts = b.get("request_counts") or {}
                    e["progress"] = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
                    if b.get("status") != e.get("status"):
                        log.info("batch %s: %s (%d of %d done)", e["batch_id"], b.get("status"), e["progress"], e["n"])
                    e["status"] = b.get("status")
                    if e["status"] in TERMINAL:
                        errors = [x for x in (b.get("errors") or {}).get("data") or [] if isinstance(x, dict)]
                        e.update(state="ended", output_file_id=b.get("output_file_id"),
                                 error_file_id=b.get("error_file_id"))
                        if errors:
                            e["reason"] = "; ".join(str(x.get("message", x)) for x in errors[:3])
                        self.save()
                bar.n = sum(e.get("progress", 0) for e in live)
                bar.refresh()
                if any(e["state"] == "ended" for e in self.entries) and (fatal := self.ingest()) is not None:
                    return fatal
                if not any(e["state"] == "submitted" for e in self.entries):
                    return None
                time.sleep(self.cfg.poll_interval)
        finally:
            bar.close()

    # ---------------------------------------------------------------- ingest
    def _lines(self, file_id: str | None, e: dict) -> dict[int, tuple[str, dict]]:
        """index -> (prompt hash head, line) of a downloaded output or error file."""
        out: dict[int, tuple[str, dict]] = {}
        for raw in self.http.content(file_id).splitlines() if file_id else []:
            line = _json(raw)
            m = _CUSTOM_ID.match(str(line.get("custom_id"))) if isinstance(line, dict) else None
            if m is not None:
                out.setdefault(int(m.group(1)), (m.group(2), line))
            elif raw.strip():
                log.warning("batch %s: skipping an unreadable line: %r", e["batch_id"], raw[:120])
        return out

    def _result(self, line: dict, bid: str) -> LLMResult:
        resp = line.get("response") if isinstance(line.get("response"), dict) else {}
        body, status, err = resp.get("body"), resp.get("status_code"), line.get("error")
        if err or status != 200:
            err = err if isinstance(err, dict) else {"message": err}
            inner = body.get("error") if isinstance(body, dict) else None
            msg = err.get("message") or (inner.get("message") if isinstance(inner, dict) else inner)
            kind = f"http_{status}" if status else str(err.get("code") or "error")
            return LLMResult(False, "", {}, self.client.scrub(f"{kind}: {msg or 'failed'} (batch {bid})"), 1, endpoint=bid)
        try:
            text, usage, finish = read_completion(body, self.api == "chat", f"batch {bid}")
        except _RetryableError as exc:
            return LLMResult(False, "", {}, f"{exc.kind}: {exc}", 1, endpoint=bid)
        return LLMResult(True, text, usage, None, 1, finish, bid)

    def ingest(self) -> OSError | None:
        """Append the answers of every ended batch to the ledger (skipping indices already there),
        the rest to the failures file; then mark the batches ingested. Returns a write error."""
        from phi1.synth.ledger import settle

        ended = [e for e in self.entries if e["state"] == "ended"]
        lines = {}  # index -> (entry, hash head, line or None)
        for e in ended:
            got = {**self._lines(e.get("error_file_id"), e), **self._lines(e.get("output_file_id"), e)}
            for i in _expand(e["indices"]):
                lines[i] = (e, *got.get(i, (None, None)))
            if e["status"] != "completed":
                why = f"batch {e['batch_id']} ended {e['status']}" + (f": {e['reason']}" if e.get("reason") else "")
                log.warning("%s; the requests it did not answer are recorded as failed", why)
                self.stopped = self.stopped or why
        try:
            with JsonlAppender(self.out, sync=False) as writer, JsonlAppender(self.failures_path, sync=False) as failures:
                for i, bp, h in iter_prompts(self.spec, self.cfg.seed, max(lines) + 1):
                    if i not in lines or i in self.done:
                        continue
                    e, head, line = lines[i]
                    bid = e["batch_id"]
                    if line is None:
                        why = f"batch ended {e['status']}" + (f": {e['reason']}" if e.get("reason") else "")
                        res = LLMResult(False, "", {}, f"batch_missing: no answer in batch {bid} ({why})", 1)
                    elif head != h[:16]:
                        res = LLMResult(False, "", {}, f"batch_mismatch: custom_id of record {i} in batch {bid} names "
                                                       "another prompt", 1)
                    else:
                        res = self._result(line, bid)
                    rec, fail = settle(self.cfg, self.spec, self.api, self.sampling, i, bp, h, self.client.tally(res),
                                       batch_id=bid)
                    if rec is not None:
                        writer.write(rec)
                        self.done[i] = h
                        self.generated += 1
                    else:
                        failures.write(fail)
                        self.failed += 1
                        if self.failed <= 10 and (line is not None or e["status"] == "completed"):
                            log.warning("record %d failed in batch %s: %s", i, bid, fail["error"])
                writer.fsync()
                failures.fsync()
        except OSError as exc:
            return exc
        for e in ended:  # the ledger holds every answer of these batches (synced above)
            e["state"] = "ingested"
        self.save()
        return None


def run_batches(cfg, spec, client: LLMClient, api: str, sampling: dict, out: Path, manifest: dict,
                done: dict[int, str]) -> tuple[int, int, str | None, OSError | None]:
    """Collect the job's open batches, submit the pending records as new ones, poll and ingest.

    Returns (written, failed, why some batch ended badly, the write error if any), as `_generate`.
    """
    run = _Run(cfg, spec, client, api, sampling, out, manifest, done)
    try:
        run.resume_unsent()
        fatal = run.ingest() if any(e["state"] == "ended" for e in run.entries) else None
        if fatal is None:
            run.submit_pending()
            fatal = run.poll()
    finally:
        run.http.http.close()
    return run.generated, run.failed, run.stopped, fatal
