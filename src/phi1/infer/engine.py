"""Continuous batching: one background thread owns the model and decodes every live sequence together.

The static KV cache has `max_batch` rows ("slots"). A new sequence is prefilled
into the lowest free slot(s) and joins the running decode batch at its own
position; a finished or cancelled sequence frees its slot at the next sync
point, where the next waiting sequence can take it. The host looks at the
tokens only every `sync_every` steps (1 on CPU, 8 on CUDA), so the GPU is not
stalled by a device->host copy per token; rows that finish inside an interval
are trimmed on the host.

Sequences talk to the outside world only through their `sink(event)` callback,
called from the engine thread with `Delta` events (text appended since the
last event; the last one carries `finish_reason`) or one `Failed` event.

One sequence never breaks another: bad sampling parameters, a fault while
setting a sequence up, prefilling it (a failed prefill batch is retried one
sequence at a time), sampling its row, turning its tokens into text or
delivering its events fail that sequence alone. Only a failure of the batched
decode step itself (the model's forward pass, e.g. a device error), which no
one row can be blamed for, fails every running sequence.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from phi1.infer.decode import DecodeStep, longrope_switch, prefill, refill_row
from phi1.infer.sampling import sample_next
from phi1.infer.textstream import TextStream

log = logging.getLogger(__name__)


@dataclass
class Delta:
    text: str
    completion_tokens: int
    finish_reason: str | None = None  # set on a sequence's last event: "stop" or "length"


@dataclass
class Failed:
    message: str


@dataclass
class SeqParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Sequence:
    """One prompt being completed; owned by the engine thread once submitted."""

    def __init__(self, prompt_ids: list[int], params: SeqParams, sink: Callable[[object], None]):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.cancelled = False  # set from any thread; the engine drops the sequence at its next sync
        self.slot: int | None = None
        self.generator: torch.Generator | None = None
        self.stream: TextStream | None = None
        self.fault: str | None = None  # set by the engine when this row failed mid-interval
        self.done = False  # its last event (a finishing Delta or Failed) has been sent

    @property
    def sampling(self) -> bool:
        return self.params.temperature > 0


@dataclass
class EngineMetrics:
    """Counters behind GET /metrics (written by the engine thread, read by the server)."""

    requests: int = 0
    sequences: int = 0
    sequences_finished: int = 0
    sequences_cancelled: int = 0
    sequences_failed: int = 0
    prompt_tokens: int = 0
    tokens_generated: int = 0
    prefill_batches: int = 0
    decode_steps: int = 0
    max_batch_occupancy: int = 0
    batch_size_steps: dict[int, int] = field(default_factory=dict)  # occupancy -> decode steps
    decode_seconds: float = 0.0

    def snapshot(self, active: int, waiting: int) -> dict:
        steps = max(self.decode_steps, 1)
        occ = sum(k * v for k, v in self.batch_size_steps.items())
        return {
            "requests": self.requests,
            "sequences": self.sequences,
            "sequences_finished": self.sequences_finished,
            "sequences_cancelled": self.sequences_cancelled,
            "sequences_failed": self.sequences_failed,
            "prompt_tokens": self.prompt_tokens,
            "tokens_generated": self.tokens_generated,
            "prefill_batches": self.prefill_batches,
            "decode_steps": self.decode_steps,
            "max_batch_occupancy": self.max_batch_occupancy,
            "mean_batch_size": occ / steps if self.decode_steps else 0.0,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_size_steps.items())},
            "decode_tokens_per_second": occ / self.decode_seconds if self.decode_seconds else 0.0,
            "active_sequences": active,
            "waiting_sequences": waiting,
        }


def check_params(p: SeqParams) -> None:
    """Raise ValueError unless `p` is something the engine can run (the server checks this at the edge)."""
    from phi1.infer.settings import sampling_problem

    problem = sampling_problem(p.max_new_tokens, p.temperature, p.top_p, p.top_k, p.seed)
    if problem is not None:
        raise ValueError(problem)


class Engine:
    """The background decode loop over a fixed set of cache slots."""

    def __init__(self, model, tokenizer, max_batch: int = 8, sync_every: int | None = None,
                 compile: bool = False, step_mode: str | None = None, compile_backend=None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.ctx = model.config.max_position_embeddings
        self.dev = model.lm_head.weight.device
        self.sync_every = sync_every or (1 if self.dev.type == "cpu" else 8)
        self.eos_id = tokenizer.eos_id
        self.pad = self.eos_id if self.eos_id is not None else 0
        model.setup_caches(max_batch, self.ctx)
        self.step_fn = DecodeStep(model, compile=compile, mode=step_mode, backend=compile_backend)
        self.switch = longrope_switch(model)  # LongRoPE: the position at which a row is recomputed
        self.metrics = EngineMetrics()
        self.slots: list[Sequence | None] = [None] * max_batch
        # Per-slot device state: the token to feed next and the position it goes to.
        self.next_tok = torch.full((max_batch,), self.pad, dtype=torch.long, device=self.dev)
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=self.dev)
        self.temperature = torch.zeros(max_batch, device=self.dev)
        self.top_k = torch.zeros(max_batch, dtype=torch.long, device=self.dev)
        self.top_p = torch.ones(max_batch, device=self.dev)
        self.live = torch.zeros(max_batch, dtype=torch.long, device=self.dev)  # 1 where a slot is in use
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._scoring: collections.deque = collections.deque()  # (ids, top_k, Future): score() jobs
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="phi1-engine", daemon=True)

    # ---- public API (any thread) ----------------------------------------
    def warmup(self) -> int:
        """Compile every kv-length bucket's decode graph now (before serving); returns how many graphs."""
        warm = getattr(self.step_fn, "warmup", None)
        return warm(self.max_batch) if warm is not None else 0

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (one request's choices); they start as slots free up."""
        for s in seqs:
            if not 0 < len(s.prompt_ids) < self.ctx:
                raise ValueError(f"prompt has {len(s.prompt_ids)} tokens; it must have 1 to {self.ctx - 1}")
        with self._cv:
            self.metrics.requests += 1
            self.metrics.sequences += len(seqs)
            self._waiting.extend(seqs)
            self._cv.notify_all()

    def score(self, ids: list[int], top_k: int = 0):
        """Log-probabilities of every token of `ids` given the ones before it (a Future, filled on the engine
        thread between decode steps): (token_logprobs with None first, top_logprobs: per position the top_k
        (token id, logprob) pairs, None first). What `echo`/`logprobs` of /v1/completions report."""
        import concurrent.futures

        if not 0 < len(ids) <= self.ctx:
            raise ValueError(f"{len(ids)} tokens to score; it must be 1 to {self.ctx}")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._scoring.append((list(ids), int(top_k), fut))
            self._cv.notify_all()
        return fut

    def _score_waiting(self) -> None:
        while True:
            with self._cv:
                if not self._scoring:
                    return
                ids, top_k, fut = self._scoring.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                logits = self.model(torch.tensor([ids], device=self.dev))[0, :-1].float()
                lp = torch.log_softmax(logits, dim=-1)
                nxt = torch.tensor(ids[1:], device=self.dev)
                chosen = lp.gather(1, nxt[:, None])[:, 0].tolist()
                top: list = [None]
                if top_k > 0:
                    vals, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
                    top += [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
                else:
                    top += [[] for _ in chosen]
                fut.set_result(([None] + chosen, top))
            except Exception as exc:  # this request alone fails
                fut.set_exception(exc)

    def cancel(self, seqs: list[Sequence]) -> None:
        """Stop working on these sequences (a client went away); no further events are sent."""
        with self._cv:
            for s in seqs:
                s.cancelled = True
            self._cv.notify_all()

    def snapshot(self) -> dict:
        with self._cv:
            waiting = len(self._waiting)
        active = sum(s is not None for s in self.slots)
        return self.metrics.snapshot(active, waiting)

    # ---- engine thread ----------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stop and not self._waiting and not any(self.slots) and not self._scoring:
                        self._cv.wait()
                    if self._stop:
                        break
                    admitted = self._take_waiting()
                self._score_waiting()
                try:
                    self._drop_cancelled()
                    if admitted:
                        self._admit(admitted)
                    if any(self.slots):
                        self._decode_interval()
                except Exception as exc:  # the batched step (device error) or a bug: fail what runs, keep serving
                    log.exception("engine step failed")
                    message = f"internal error while decoding: {type(exc).__name__}: {exc}"
                    self._fail_all(message)
                    for s in admitted:  # taken from the queue but never placed: they must hear too
                        self._fail(s, message)
        for s in list(self._waiting) + [s for s in self.slots if s is not None]:
            self._fail(s, "server is shutting down")
        for _, _, fut in self._scoring:
            fut.cancel()

    def _take_waiting(self) -> list[Sequence]:
        free = [i for i, s in enumerate(self.slots) if s is None]
        taken = []
        while self._waiting and len(taken) < len(free):
            s = self._waiting.popleft()
            if s.cancelled:
                self.metrics.sequences_cancelled += 1
                continue
            s.slot = free[len(taken)]
            taken.append(s)
        return taken

    def _admit(self, seqs: list[Sequence]) -> None:
        ready = []
        for s in seqs:
            try:
                self._setup(s)
            except Exception as exc:  # this sequence's parameters or state: it alone fails
                log.warning("could not start a sequence: %s: %s", type(exc).__name__, exc)
                self._fail(s, f"could not start this sequence: {type(exc).__name__}: {exc}")
            else:
                ready.append(s)
        # Prefill runs of consecutive slots together (one batch per run).
        ready.sort(key=lambda s: s.slot)
        run: list[Sequence] = []
        for s in ready + [None]:
            if run and (s is None or s.slot != run[-1].slot + 1):
                self._prefill_isolated(run)
                run = []
            if s is not None:
                run.append(s)

    def _setup(self, s: Sequence) -> None:
        self.slots[s.slot] = s
        self.live[s.slot] = 1
        p = s.params
        check_params(p)
        # Room for the completion is bounded by the context (as generate() does).
        p.max_new_tokens = max(1, min(p.max_new_tokens, self.ctx - len(s.prompt_ids)))
        self.temperature[s.slot] = p.temperature
        self.top_k[s.slot] = p.top_k
        self.top_p[s.slot] = p.top_p
        if p.seed is not None and s.sampling:
            s.generator = torch.Generator(device=self.dev)
            s.generator.manual_seed(int(p.seed))
        s.stream = TextStream(self.tokenizer, p.stop)
        self.metrics.prompt_tokens += len(s.prompt_ids)

    def _prefill_isolated(self, run: list[Sequence]) -> None:
        """Prefill a run; if the batch fails, prefill its sequences one by one so only the culprit fails."""
        try:
            self._prefill_run(run)
            return
        except Exception as exc:
            if len(run) == 1:
                log.warning("prefill failed for one sequence: %s: %s", type(exc).__name__, exc)
                self._fail(run[0], f"internal error while reading the prompt: {type(exc).__name__}: {exc}")
                return
            log.warning("prefill of %d sequences failed (%s: %s); retrying them one by one",
                        len(run), type(exc).__name__, exc)
        for s in run:
            self._prefill_isolated([s])

    def _prefill_run(self, run: list[Sequence]) -> None:
        start = run[0].slot
        logits = prefill(self.model, [s.prompt_ids for s in run], self.pad, start_row=start)
        rows = slice(start, start + len(run))
        first = self._sample(logits, run, rows)
        self.next_tok[rows] = first
        self.pos[rows] = torch.tensor([len(s.prompt_ids) for s in run], device=self.dev)
        self.metrics.prefill_batches += 1
        for s in run:
            if s.fault is not None:
                self._fail(s, s.fault)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence | None], rows: slice) -> torch.Tensor:
        """Next token per row. A row whose sampling fails gets `fault` set (and a greedy token) instead of
        failing its neighbours; the caller fails it at the end of the step or interval."""
        live = [s for s in seqs if s is not None]
        if not any(s.sampling for s in live):
            return logits.argmax(dim=-1)
        temperature, top_k, top_p = self.temperature[rows], self.top_k[rows], self.top_p[rows]
        try:
            out = sample_next(logits, temperature, top_k, top_p, None, any_sampling=True)
        except Exception:
            # Find the row(s) at fault: sample the unseeded sampling rows one at a time.
            out = logits.argmax(dim=-1)
            for i, s in enumerate(seqs):
                if s is not None and s.sampling and s.generator is None and s.fault is None:
                    self._sample_row(out, i, s, logits, temperature, top_k, top_p, None)
        # A seeded request draws from its own generator so its output does not depend on its neighbours.
        for i, s in enumerate(seqs):
            if s is not None and s.generator is not None and s.fault is None:
                self._sample_row(out, i, s, logits, temperature, top_k, top_p, s.generator)
        return out

    def _sample_row(self, out, i, s, logits, temperature, top_k, top_p, generator) -> None:
        r = slice(i, i + 1)
        try:
            out[i] = sample_next(logits[r], temperature[r], top_k[r], top_p[r], generator, any_sampling=True)[0]
        except Exception as exc:
            log.warning("sampling failed for one sequence: %s: %s", type(exc).__name__, exc)
            s.fault = f"internal error while sampling: {type(exc).__name__}: {exc}"

    def _decode_interval(self) -> None:
        live = [s for s in self.slots if s is not None]
        B = self.max_batch if self.step_fn.fixed_shape else max(s.slot for s in live) + 1
        rows = slice(0, B)
        seqs = self.slots[:B]
        # Never step a row past its token budget (or the context): end the interval early instead.
        remaining = min(s.params.max_new_tokens - s.stream.n_tokens for s in live)
        n_steps = max(1, min(self.sync_every, remaining))
        refill = []
        if self.switch is not None:
            # A row reaching the long range is recomputed (as generate() and transformers do): end the interval
            # before its crossing step, so the host holds all its tokens when the next interval starts with it.
            for s in live:
                p = len(s.prompt_ids) + s.stream.n_tokens
                if p < self.switch:
                    n_steps = min(n_steps, self.switch - p)
                elif p == self.switch:
                    refill.append(s)
        kv_base = max(len(s.prompt_ids) + s.stream.n_tokens for s in live)
        # Copies: the loop rebinds these, and `emitted` must not alias the state written back below.
        nxt, pos, live_rows = self.next_tok[:B].clone(), self.pos[:B].clone(), self.live[:B].clone()
        emitted = []
        t0 = time.perf_counter()
        for i in range(n_steps):
            emitted.append(nxt)
            logits = self.step_fn(nxt, pos, kv_base + i + 1)
            if i == 0 and refill:
                first = nxt.tolist()
                for s in refill:
                    logits[s.slot] = refill_row(self.model, s.slot, s.prompt_ids + s.stream.ids + [first[s.slot]])
            pos = pos + live_rows  # free rows stay at position 0
            nxt = self._sample(logits, seqs, rows)
        self.next_tok[:B] = nxt
        self.pos[:B] = pos
        toks = torch.stack(emitted, dim=1).tolist()  # (B, n_steps): the one sync of this interval
        m = self.metrics
        m.decode_seconds += time.perf_counter() - t0
        m.decode_steps += n_steps
        m.batch_size_steps[len(live)] = m.batch_size_steps.get(len(live), 0) + n_steps
        m.max_batch_occupancy = max(m.max_batch_occupancy, len(live))
        for s in live:
            if s.fault is not None:
                self._fail(s, s.fault)
            else:
                self._accept(s, toks[s.slot])

    def _accept(self, s: Sequence, toks: list[int]) -> None:
        if s.cancelled:
            self._free(s)
            self.metrics.sequences_cancelled += 1
            return
        try:
            before = s.stream.n_tokens
            delta = s.stream.push(toks, self.eos_id, s.params.max_new_tokens)
            self.metrics.tokens_generated += s.stream.n_tokens - before
        except Exception as exc:  # detokenizing / stop matching for this sequence: it alone fails
            log.warning("decoding text failed for one sequence: %s: %s", type(exc).__name__, exc)
            self._fail(s, f"internal error while decoding text: {type(exc).__name__}: {exc}")
            return
        if s.stream.finish_reason is not None:
            self._free(s)
            self.metrics.sequences_finished += 1
            s.done = True
            self._send(s, Delta(delta, s.stream.n_tokens, s.stream.finish_reason))
        elif delta and not self._send(s, Delta(delta, s.stream.n_tokens)):
            self._fail(s, "could not deliver this sequence's output")

    def _send(self, s: Sequence, event) -> bool:
        """Hand one event to a sequence's sink; a sink that raises hurts only its own sequence."""
        try:
            s.sink(event)
            return True
        except Exception:
            log.exception("a sequence's event sink failed")
            return False

    def _fail(self, s: Sequence, message: str) -> None:
        """End one sequence with a Failed event (once; a finished sequence is left alone)."""
        if s.done:
            return
        s.done = True
        if s.slot is not None and self.slots[s.slot] is s:
            self._free(s)
        self.metrics.sequences_failed += 1
        self._send(s, Failed(message))

    def _free(self, s: Sequence) -> None:
        self.slots[s.slot] = None
        # A free row still rides along in the batch: keep it at position 0, where it harms nobody.
        self.pos[s.slot] = 0
        self.live[s.slot] = 0
        self.next_tok[s.slot] = self.pad
        self.temperature[s.slot] = 0.0

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            if s is not None and s.cancelled:
                self._free(s)
                self.metrics.sequences_cancelled += 1

    def _fail_all(self, message: str) -> None:
        for s in self.slots:
            if s is not None:
                self._fail(s, message)
