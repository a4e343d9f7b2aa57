"""Turn a growing list of token ids into text deltas, honouring EOS, a token budget and stop strings.

A delta never contains text that might still turn out to be the start of a
stop string, nor a trailing incomplete UTF-8 character, so what a streaming
client receives concatenates to exactly the final (stop-truncated) text.
"""

from __future__ import annotations

from typing import Sequence


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest occurrence of any stop string; say whether one occurred."""
    cut = min((idx for s in stop if s and (idx := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def ids_for_prefix(tokenizer, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of `ids` whose decoding covers `text` (for token accounting)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid])) >= len(text):
            hi = mid
        else:
            lo = mid + 1
    return ids[:lo]


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters to hold: a partial stop string or an incomplete character."""
    hold = 0
    for s in stop:
        # The longest k < len(s) with text ending in s[:k]: try only the tail positions where s[0]
        # occurs, longest first (one slice per candidate, not one per k, so a long stop string is cheap).
        m = min(len(s) - 1, len(text))
        if m <= hold:
            continue
        tail = text[len(text) - m:]
        i = tail.find(s[0])
        while i >= 0 and m - i > hold:
            if s.startswith(tail[i:]):
                hold = m - i
                break
            i = tail.find(s[0], i + 1)
    n = len(text)
    while n - hold > 0 and text[n - hold - 1] == "\ufffd":
        hold += 1
    return hold


class TextStream:
    """Accumulates one sequence's tokens; `push` returns the text that is safe to send now."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = ""
        self.finish_reason: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def push(self, toks: list[int], eos_id: int | None, max_new: int) -> str:
        if self.finish_reason is not None:
            return ""
        for t in toks:
            if len(self.ids) >= max_new:
                break
            if t == eos_id:
                self.finish_reason = "stop"
                break
            self.ids.append(t)
        if self.finish_reason is None and len(self.ids) >= max_new:
            self.finish_reason = "length"
        text = self.tokenizer.decode(self.ids)
        if self.stop:
            text, hit = truncate_at_stop(text, self.stop)
            if hit:
                self.finish_reason = "stop"
                self.ids = ids_for_prefix(self.tokenizer, self.ids, text)
        if self.finish_reason is None:
            text = text[: len(text) - _held_back(text, self.stop)]
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
