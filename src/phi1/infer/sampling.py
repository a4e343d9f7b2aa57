"""Next-token selection: greedy, temperature, top-k and top-p, per row of a batch."""

from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                generator: torch.Generator | None = None, *, any_sampling: bool | None = None) -> torch.Tensor:
    """Pick one token per row of `logits` (B, V).

    `temperature`, `top_k`, `top_p` are (B,) tensors so that requests with
    different sampling settings can share one batch. temperature <= 0 means
    greedy; top_k <= 0 and top_p >= 1 disable those filters. Callers that know
    on the host whether any row samples pass `any_sampling`, which spares a
    GPU->CPU synchronisation per token.
    """
    greedy = logits.argmax(dim=-1)
    do_sample = temperature > 0
    if any_sampling is None:
        any_sampling = bool(do_sample.any())
    if not any_sampling:
        return greedy
    logits = logits.float() / temperature.clamp_min(1e-5)[:, None]
    sorted_logits, order = logits.sort(dim=-1, descending=True)              # (B, V)
    V = logits.size(-1)
    ranks = torch.arange(V, device=logits.device)[None, :]
    remove = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    probs = sorted_logits.softmax(dim=-1)
    cum_before = probs.cumsum(dim=-1) - probs                                # mass strictly above each token
    remove |= cum_before > top_p[:, None]
    remove[:, 0] = False                                                     # always keep the best token
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    choice = torch.multinomial(sorted_logits.softmax(dim=-1), 1, generator=generator)  # (B, 1) in sorted space
    sampled = order.gather(1, choice).squeeze(1)
    return torch.where(do_sample, sampled, greedy)
