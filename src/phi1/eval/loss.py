"""Solution loss: mean token cross-entropy of canonical solutions given their prompts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phi1.errors import Phi1Error
from phi1.eval.problems import Problem, load_humaneval


def _examples(tokenizer, problems: list[Problem], max_len: int, prefix: list[int] = ()
              ) -> list[tuple[list[int], list[int], str]]:
    out = []
    for p in problems:
        # Encoding the two parts separately keeps the boundary exact: every
        # label position belongs to the solution, none to the prompt. `prefix`: the BOS a
        # transformers model's tokenizer puts first (phi1.model.anylm).
        prompt, sol = list(prefix) + tokenizer.encode(p.prompt), tokenizer.encode(p.canonical_solution)
        if not sol:
            continue
        ids = prompt + sol
        labels = [-100] * len(prompt) + sol
        if len(ids) > max_len:  # keep the end: the solution and as much prompt as fits
            ids, labels = ids[-max_len:], labels[-max_len:]
        out.append((ids, labels, p.task_id))
    return out


def solution_loss(model, tokenizer, problems=None, max_problems: int | None = None, batch_size: int = 8) -> float:
    """Mean cross-entropy (nats/token) over solution tokens only; HumanEval by default.

    `problems` is a dict or list of `Problem`s with canonical solutions. The model's
    train/eval mode is restored afterwards, so a trainer can call this mid-run.
    """
    loss = mean_loss(solution_loss_per_task(model, tokenizer, problems, max_problems, batch_size))
    return 0.0 if loss is None else loss


def mean_loss(per_task: dict[str, tuple[float, int]], tasks=None) -> float | None:
    """The token-weighted mean of `per_task` (task -> (summed nats, tokens)) over `tasks` (default all);
    None when they hold no token."""
    keys = per_task if tasks is None else [t for t in tasks if t in per_task]
    n = sum(per_task[t][1] for t in keys)
    return sum(per_task[t][0] for t in keys) / n if n else None


@torch.no_grad()
def solution_loss_per_task(model, tokenizer, problems=None, max_problems: int | None = None,
                           batch_size: int = 8) -> dict[str, tuple[float, int]]:
    """task_id -> (summed cross-entropy in nats, solution tokens): the token-weighted mean of any
    subset of tasks is sum(sums) / sum(tokens), which is how the pruning study splits it."""
    if problems is None:
        problems = load_humaneval()
    items = list(problems.values()) if isinstance(problems, dict) else list(problems)
    if max_problems is not None:
        items = items[:max_problems]
    if batch_size < 1:
        raise Phi1Error(f"batch_size = {batch_size}: must be at least 1")
    examples = _examples(tokenizer, items, model.config.max_position_embeddings, getattr(model, "prefix_ids", ()))
    if not examples:
        raise Phi1Error("solution_loss: no problem has a canonical solution")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, tuple[float, int]] = {}
    try:
        examples.sort(key=lambda e: len(e[0]))  # similar lengths per batch: less padding
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            T = max(len(ids) for ids, _, _ in batch)
            ids = torch.zeros((len(batch), T), dtype=torch.long)
            labels = torch.full((len(batch), T), -100, dtype=torch.long)
            for row, (x, y, _) in enumerate(batch):  # right padding cannot affect earlier positions (causal)
                ids[row, :len(x)] = torch.tensor(x)
                labels[row, :len(y)] = torch.tensor(y)
            ids, labels = ids.to(device), labels.to(device)
            logits = model(ids)  # (B, T, V)
            # Position t predicts token t+1.
            pred, tgt = logits[:, :-1].float(), labels[:, 1:]
            nll = F.cross_entropy(pred.transpose(1, 2), tgt, ignore_index=-100, reduction="none")  # (B, T-1)
            sums, counts = nll.sum(dim=1).tolist(), (tgt != -100).sum(dim=1).tolist()
            for (_, _, task_id), s, n in zip(batch, sums, counts):
                out[task_id] = (s, int(n))
    finally:
        model.train(was_training)
    return out


def write_solution_loss(model_dir, benchmark: str = "humaneval", out=None, *, data=None,
                        max_problems: int | None = None, batch_size: int = 8, device: str = "auto",
                        dtype: str = "auto") -> dict:
    """`phi1 eval loss`: the solution loss of a model directory on a benchmark, as a result mapping;
    with `out`, also written there as JSON with each task's (summed nats, tokens), so a mean over any
    subset of tasks can be taken later."""
    from phi1.eval.problems import load_problems
    from phi1.model import load_for_inference
    from phi1.utils.io import atomic_write_json

    problems = load_problems(benchmark, data)
    model, tok = load_for_inference(model_dir, device=device, dtype=dtype)
    per_task = solution_loss_per_task(model, tok, problems, max_problems=max_problems, batch_size=batch_size)
    loss = mean_loss(per_task) or 0.0  # no solution token left to score: 0, as solution_loss says
    result = {"benchmark": benchmark, "solution_loss": round(loss, 6), "model": str(model_dir),
              "problems": len(problems) if max_problems is None else min(len(problems), max_problems),
              "tokens": sum(n for _, n in per_task.values())}
    if out:
        atomic_write_json(out, {**result, "per_task": {k: [round(s, 6), n] for k, (s, n) in per_task.items()}})
    return result
