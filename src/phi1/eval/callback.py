"""Evaluation the trainer calls at each eval interval: greedy pass@1 and solution loss."""

from __future__ import annotations

import os
import tempfile
import time

from phi1.eval.benchmark import GenerationConfig, generate_samples, select_problems
from phi1.eval.execute import execute_samples
from phi1.eval.loss import solution_loss
from phi1.eval.problems import describe_problems, load_problems
from phi1.eval.sandbox import Sandbox, SandboxConfig


class EvalCallback:
    """`callback(model, tokenizer) -> {"pass@1", "solution_loss", ...}`.

    The sandbox's executors start on the first call and are reused, so each
    interval pays only for generation and execution. Call `close()` at the end
    (or use it as a context manager).
    """

    def __init__(self, benchmark: str = "humaneval", max_problems: int | None = None,
                 max_new_tokens: int = 384, workers: int | None = None, batch_size: int = 16,
                 data: str | os.PathLike | None = None, timeout: float = 3.0, loss_batch_size: int = 8,
                 split: str = "validation", val_fraction: float | None = None):
        """`benchmark`: humaneval (HumanEval, or a problems file in its format as `data`), mbpp (the
        `split` of the mbpp.jsonl in `data`; validation by default, so the test split stays unseen) or
        exercises (a JSONL of exercises with tests in `data`; `val_fraction`: only pack's val split)."""
        self.benchmark = benchmark
        self.problems = select_problems(load_problems(benchmark, data, split=split, val_fraction=val_fraction),
                                        max_problems)
        # What chose the checkpoint, in words: the trainer writes it into best.json, the report shows it.
        self.selection = describe_problems(benchmark, data, split, val_fraction, len(self.problems))
        self.gen = GenerationConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size).validate()
        self.sandbox_config = SandboxConfig(workers=workers or os.cpu_count() or 1, timeout=timeout).validate()
        self.loss_batch_size = loss_batch_size
        self._sandbox: Sandbox | None = None

    def __call__(self, model, tokenizer) -> dict:
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with tempfile.TemporaryDirectory(prefix="phi1-evalcb-") as tmp:
                samples = os.path.join(tmp, "samples.jsonl")
                # Under FSDP every rank must run the forwards (they are collectives),
                # but only rank 0 needs to execute; the trainer broadcasts its metrics.
                generate_samples(model, tokenizer, self.problems, samples, self.gen, show_progress=False)
                summary = None
                if _rank() == 0:
                    if self._sandbox is None:
                        self._sandbox = Sandbox(self.sandbox_config)
                    summary = execute_samples(samples, self.benchmark, problems=self.problems,
                                              sandbox=self._sandbox, show_progress=False).summary
            loss = solution_loss(model, tokenizer, self.problems, batch_size=self.loss_batch_size)
        finally:
            model.train(was_training)
        nan = float("nan")
        return {
            "pass@1": summary["pass_at_k"]["pass@1"] if summary else nan,
            "solution_loss": loss,
            "passed": summary["passed"] if summary else nan,
            "problems": len(self.problems),
            "eval_s": round(time.perf_counter() - start, 3),
        }

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # best effort; zygotes also exit when their stdin closes
        try:
            self.close()
        except Exception:
            pass


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def make_eval_callback(benchmark: str = "humaneval", max_problems: int | None = None,
                       max_new_tokens: int = 384, workers: int | None = None, **kw) -> EvalCallback:
    """Build the callable the trainer uses to keep the best checkpoint by greedy pass@1."""
    return EvalCallback(benchmark=benchmark, max_problems=max_problems, max_new_tokens=max_new_tokens,
                        workers=workers, **kw)
