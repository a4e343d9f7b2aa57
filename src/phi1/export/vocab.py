"""A tokenizer as GGUF metadata: the byte-level BPE that phi1 trains (and GPT-2 / codegen's), in llama.cpp's terms.

llama.cpp's `gpt2` tokenizer model is byte-level BPE: tokens in the byte-to-unicode alphabet, merges
as "a b" strings ranked by order, and a pre-tokenizer chosen by name. Ours is exactly
`ByteLevel(add_prefix_space=False, use_regex=True)`, GPT-2's regex, which llama.cpp calls `gpt-2`.
Added tokens are matched before pre-tokenization in both (longest first); a non-special one is a
USER_DEFINED token stored as its raw text, a special one a CONTROL token. Rows of the embedding
past the tokenizer's last id (the vocab is padded to 64) get UNUSED placeholder tokens, which
llama.cpp never produces from text.

Anything llama.cpp would tokenize differently (a normalizer, another pre-tokenizer, BPE options,
added tokens that strip whitespace) is refused with the reason, rather than exported wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from phi1.errors import Phi1Error

# llama.cpp's token types (llama_token_type / gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for GPT-2's regex split (LLAMA_VOCAB_PRE_TYPE_GPT2)


@dataclass
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int
    bos_id: int
    pad_id: int | None
    chat_template: str | None
    pre: str = PRE_TOKENIZER
    n_real: int = 0  # tokens of the tokenizer itself; the rest pad the embedding
    notes: list[str] = field(default_factory=list)


def _refuse(where: str, why: str) -> Phi1Error:
    return Phi1Error(f"{where}: the tokenizer cannot be expressed in GGUF: {why}; llama.cpp would tokenize "
                     "differently. Export needs a byte-level BPE (`phi1 tokenizer train` makes one)")


def _check_byte_level(pre, where: str) -> None:
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel":
        kind = None if pre is None else (pre.get("type") if isinstance(pre, dict) else type(pre).__name__)
        raise _refuse(where, f"pre_tokenizer is {kind!r}, not ByteLevel")
    if pre.get("add_prefix_space"):
        raise _refuse(where, "ByteLevel add_prefix_space=true (llama.cpp's gpt-2 pre-tokenizer adds no space)")
    if not pre.get("use_regex", True):
        raise _refuse(where, "ByteLevel use_regex=false (llama.cpp splits with GPT-2's regex)")


def vocab_from_tokenizer(tok, n_vocab: int, model_dir: str | Path) -> GGUFVocab:
    """GGUF tokenizer metadata for `tok` (a PhiTokenizer) padded to the model's `n_vocab` rows."""
    where = str(tok.source or model_dir)
    d = json.loads(tok.backend.to_str())
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        raise _refuse(where, f"model type {model.get('type')!r}; only BPE maps to llama.cpp's gpt2 tokenizer")
    for opt in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(opt):
            raise _refuse(where, f"BPE option {opt}={model[opt]!r}")
    if model.get("byte_fallback"):
        raise _refuse(where, "BPE byte_fallback (a SentencePiece-style vocabulary)")
    if d.get("normalizer") is not None:
        raise _refuse(where, f"it has a normalizer ({d['normalizer'].get('type')!r})")
    _check_byte_level(d.get("pre_tokenizer"), where)

    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = d.get("added_tokens") or []
    for a in added:
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            raise _refuse(where, f"added token {a['content']!r} has lstrip/rstrip/single_word set")
        if a.get("normalized") and not a.get("special"):
            raise _refuse(where, f"added token {a['content']!r} is normalized")
    n_real = len(tok)
    if n_real > n_vocab:
        raise Phi1Error(f"{where}: {n_real} tokens but the model has only {n_vocab} embedding rows")
    tokens: list[str | None] = [None] * n_vocab
    types = [UNUSED] * n_vocab
    for text, i in vocab.items():
        if i >= n_real:
            raise _refuse(where, f"vocab id {i} is past the tokenizer's size {n_real}")
        tokens[i], types[i] = text, NORMAL
    for a in added:
        i = a["id"]
        tokens[i] = a["content"]  # raw text: llama.cpp matches added tokens before the byte mapping
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    for i in range(n_vocab):
        if tokens[i] is None:
            if i < n_real:
                raise _refuse(where, f"token id {i} is missing from the vocabulary")
            tokens[i] = f"<|phi1-unused-{i}|>"
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    for m in merges:
        if m.count(" ") != 1:
            raise _refuse(where, f"merge {m!r} has a space inside a token")
    eos = tok.eos_id
    return GGUFVocab(tokens=tokens, token_types=types, merges=merges, eos_id=eos, bos_id=eos, pad_id=eos,
                     chat_template=chat_template(tok, model_dir), n_real=n_real)


def chat_template(tok, model_dir: str | Path) -> str | None:
    """The template the model chats with (the tokenizer's, else the directory's), or None for a base model."""
    t = getattr(tok, "chat_template", None)
    if t:
        return t
    try:
        from phi1.chat import read_chat_template
    except ImportError:  # a tree without chat templates
        return None
    return read_chat_template(model_dir)
