"""Tokenizers: train a byte-level BPE for code, or load any Hugging Face tokenizer directory.

Like codegen-350M-mono's tokenizer (the one phi-1 used), ours has dedicated
tokens for runs of 2..31 spaces and 2..N tabs, so Python indentation costs one
token per line instead of one per space. `<|endoftext|>` is the EOS token and
the document separator.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from phi1.errors import Phi1Error
from phi1.utils.io import read_json

EOS_TOKEN = "<|endoftext|>"
SPACE_RUNS = range(2, 32)  # codegen adds "  " .. 31 spaces
TAB_RUNS = range(2, 10)


def whitespace_tokens() -> list[str]:
    return [" " * n for n in reversed(SPACE_RUNS)] + ["\t" * n for n in reversed(TAB_RUNS)]


class PhiTokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` with the few calls phi1 needs."""

    def __init__(self, tok, eos_token: str = EOS_TOKEN, source: str | None = None):
        self._tok = tok
        self.eos_token = eos_token
        eos_id = tok.token_to_id(eos_token)
        if eos_id is None:
            raise Phi1Error(f"{source or 'tokenizer'}: has no {eos_token!r} token; phi1 needs it as EOS/separator")
        self.eos_id = eos_id
        self.source = source
        self.bos_token = ""          # the template's `bos_token` (tokenizer_config.json's, when it has one)
        self.chat_template: str | None = None  # Jinja source; phi1.chat renders it

    def chat(self, default: str | None = None):
        """This tokenizer's ChatTemplate (`default`, a template's source, when it carries none)."""
        from phi1.chat import ChatTemplate

        source = self.chat_template or default
        if source is None:
            raise Phi1Error(f"{self.source or 'tokenizer'}: has no chat template; give one with --chat-template "
                            "(a name such as phi-3, or a .jinja file)")
        return ChatTemplate(source, bos_token=self.bos_token, eos_token=self.eos_token,
                            where=f"{self.source or 'tokenizer'}: chat template")

    @property
    def backend(self):
        return self._tok

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def fingerprint(self) -> str:
        """A hash of the full tokenizer definition (vocab, merges, added tokens)."""
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:16]

    def save(self, out_dir: str | os.PathLike, default_chat_template: str | None = None) -> None:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json (AutoTokenizer-loadable);
        the chat template is this tokenizer's, else `default_chat_template`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.eos_token,
            "eos_token": self.eos_token,
            "unk_token": self.eos_token,
            "pad_token": self.eos_token,
            "model_max_length": 2048,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
        }
        if (self.chat_template or default_chat_template) is not None:
            cfg["chat_template"] = self.chat_template or default_chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        special = {k: self.eos_token for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


PAPER_TOKENIZER = "Salesforce/codegen-350M-mono"  # the tokenizer phi-1 used (section 2 of the paper)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_tokenizer(ref: str | os.PathLike, where: str = "tokenizer", cache_dir: str | None = None) -> Path:
    """A tokenizer directory: `ref` itself when it is one, else (for a hub name such as
    Salesforce/codegen-350M-mono) its snapshot in the Hugging Face cache. Never downloads: a name
    that is not cached is one error saying how to fetch it."""
    path = Path(ref)
    if path.is_dir():
        return path
    name = str(ref)
    if not _HUB_ID.match(name) or Path(name).parent.is_dir():  # `runs/tok` with runs/ here: a local path
        raise Phi1Error(f"{where} = {name!r}: tokenizer directory not found")
    from huggingface_hub import constants, try_to_load_from_cache

    cache = cache_dir or constants.HF_HUB_CACHE
    for f in ("tokenizer.json", "vocab.json"):
        hit = try_to_load_from_cache(name, f, cache_dir=cache)
        if isinstance(hit, str) and (f == "tokenizer.json" or (Path(hit).parent / "merges.txt").is_file()):
            return Path(hit).parent
    raise Phi1Error(f"{where} = {name!r}: not a local directory and not in the Hugging Face cache ({cache}); "
                    f"phi1 does not download it. On a machine with network run `hf download {name} --include "
                    f"'*.json' '*.txt'` (the tokenizer files, no weights; it fills that cache, which you can copy to "
                    f"an offline machine), or add --local-dir DIR to that command and give DIR instead")


def load_tokenizer(path: str | os.PathLike) -> PhiTokenizer:
    """Load tokenizer.json, or vocab.json + merges.txt (+ added_tokens.json), from a directory (or a
    hub name found in the Hugging Face cache, see `resolve_tokenizer`).

    With vocab.json + merges.txt (GPT-2's and codegen's layout) the EOS token is a special token, as
    transformers makes it, and added_tokens.json's tokens keep their ids. A Llama/SentencePiece-style
    tokenizer.json (phi-3's) loads the same way. The directory's chat template comes along."""
    from phi1.chat import read_chat_template

    path = resolve_tokenizer(path)
    tok = _load_backend(path)
    tok.chat_template = read_chat_template(path)
    return tok


def _load_backend(path: Path) -> PhiTokenizer:
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel

    eos, bos = EOS_TOKEN, ""
    cfg_file = path / "tokenizer_config.json"
    if cfg_file.exists():
        cfg = read_json(cfg_file, "tokenizer config", expect=dict)
        e, b = cfg.get("eos_token"), cfg.get("bos_token")
        eos = (e.get("content") if isinstance(e, dict) else e) or EOS_TOKEN
        bos = (b.get("content") if isinstance(b, dict) else b) or ""
    tj = path / "tokenizer.json"
    if tj.exists():
        try:
            tok = Tokenizer.from_file(str(tj))
        except Exception as exc:
            raise Phi1Error(f"{tj}: cannot parse tokenizer ({exc})") from None
        out = PhiTokenizer(tok, eos, source=str(path))
        out.bos_token = bos
        return out
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.exists() and merges.exists():
        tok = Tokenizer(BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
        tok.decoder = ByteLevelDecoder()
        added = path / "added_tokens.json"
        if added.exists():
            extra = read_json(added, "added tokens", expect=dict)
            for content, want in sorted(extra.items(), key=lambda kv: kv[1]):
                if tok.token_to_id(content) is None:
                    tok.add_tokens([AddedToken(content, normalized=False)])
                if tok.token_to_id(content) != want:
                    raise Phi1Error(f"{added}: token {content!r} has id {want} but would get "
                                    f"{tok.token_to_id(content)}; added token ids must follow vocab.json's")
        if tok.token_to_id(eos) is not None:
            tok.add_special_tokens([AddedToken(eos, special=True, normalized=False)])  # keeps its id
        out = PhiTokenizer(tok, eos, source=str(path))
        out.bos_token = bos
        return out
    raise Phi1Error(f"{path}: no tokenizer found (expected tokenizer.json, or vocab.json + merges.txt)")


def _is_record_dir(p: Path) -> bool:
    """A directory holding records rather than code: a stage directory or a folder of JSONL shards."""
    if (p / "manifest.json").is_file() and (p / "data").is_dir():
        return True
    return not any(p.rglob("*.py")) and any(f.name.endswith((".jsonl", ".jsonl.gz")) for f in p.rglob("*.jsonl*"))


def iter_texts(inputs: Iterable[str | os.PathLike], max_bytes: int | None = None, *,
               skip_bad_lines: bool = False, counts: dict | None = None) -> Iterator[str]:
    """Texts from files, directories of .py files, JSONL / .jsonl.gz files (the `text` field) and
    directories of record shards (a `phi1 data run` stage directory).

    A JSONL line (or a text file) that is not UTF-8 or not JSON is fatal, naming file:line and
    `--skip-bad-lines`; with `skip_bad_lines` it is skipped and counted in `counts`
    (`bad_utf8`, `bad_json`).
    """
    counts = {} if counts is None else counts
    seen = 0
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise Phi1Error(f"{p}: input not found")
        records = p.is_dir() and _is_record_dir(p)  # a stage directory (`phi1 data run`) or a folder of shards
        files = [p] if records or not p.is_dir() else sorted(p.rglob("*.py"))
        for f in files:
            if records or f.name.endswith(".jsonl.gz"):
                from phi1.data.records import StageReport, iter_records

                rep = StageReport("tokenizer")
                for rec in iter_records(f, rep, skip_bad_lines=skip_bad_lines):
                    seen += len(rec["text"])
                    yield rec["text"]
                    if max_bytes is not None and seen >= max_bytes:
                        return
                for k, v in rep.dropped.items():
                    counts[k] = counts.get(k, 0) + v
            elif f.suffix == ".jsonl":
                from phi1.utils.io import read_jsonl

                for rec in read_jsonl(f, strict=not skip_bad_lines, skip_flag="--skip-bad-lines", counts=counts):
                    t = rec.get("text")
                    if isinstance(t, str):
                        seen += len(t)
                        yield t
            else:
                try:
                    raw = f.read_bytes()
                except OSError as exc:
                    raise Phi1Error(f"{f}: cannot read ({exc.strerror})") from None
                try:
                    t = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    why = f"not valid UTF-8 (byte 0x{raw[exc.start:exc.start + 1].hex()} at offset {exc.start})"
                    if not skip_bad_lines:
                        raise Phi1Error(f"{f}: {why}; fix the file or pass --skip-bad-lines to skip and count "
                                        "such inputs") from None
                    counts["bad_utf8"] = counts.get("bad_utf8", 0) + 1
                    continue
                seen += len(t)
                yield t
            if max_bytes is not None and seen >= max_bytes:
                return


MAX_VOCAB = 1 << 20  # a BPE's ids fit u32, but a vocabulary past a million tokens is a typo


def check_train_args(vocab_size: int, min_frequency: int, max_bytes: int | None) -> list[str]:
    """Refuse impossible training settings (before any output folder is made); returns the
    whitespace tokens the vocabulary starts with."""
    ws = whitespace_tokens()
    n_fixed = 256 + 1 + len(ws)
    if vocab_size < n_fixed + 64:
        raise Phi1Error(f"--vocab-size {vocab_size}: too small; needs at least {n_fixed + 64} "
                        f"(256 bytes + EOS + {len(ws)} whitespace tokens + merges)")
    if vocab_size > MAX_VOCAB:
        raise Phi1Error(f"--vocab-size {vocab_size}: too large; at most {MAX_VOCAB} (phi-1 uses 51200, phi-3 32064)")
    if not 0 <= min_frequency <= 2**32 - 1:
        raise Phi1Error(f"--min-frequency {min_frequency}: use a count from 0 to {2**32 - 1}")
    if max_bytes is not None and max_bytes <= 0:
        raise Phi1Error(f"--max-mb: must be above 0 (got {max_bytes / 1e6:g})")
    return ws


def train_tokenizer(inputs: Iterable[str | os.PathLike], vocab_size: int = 8192, out_dir=None,
                    min_frequency: int = 2, max_bytes: int | None = None, *,
                    skip_bad_lines: bool = False) -> PhiTokenizer:
    """Train a byte-level BPE with whitespace-run tokens and `<|endoftext|>`.

    Bad input lines fail the training (see `iter_texts`); with `skip_bad_lines` they are
    skipped and counted in the result's `skipped_lines` (`{"bad_utf8": n, "bad_json": n}`).
    """
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers.trainers import BpeTrainer

    ws = check_train_args(vocab_size, min_frequency, max_bytes)
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = ByteLevelDecoder()
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(ws),
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=os.environ.get("PHI1_NO_PROGRESS") != "1",
    )
    skipped: dict = {"bad_utf8": 0, "bad_json": 0}
    texts = iter_texts(inputs, max_bytes=max_bytes, skip_bad_lines=skip_bad_lines, counts=skipped)
    first = next(texts, None)
    if first is None:
        raise Phi1Error("tokenizer training: the inputs contain no text")

    def all_texts():
        yield first
        yield from texts

    tok.train_from_iterator(all_texts(), trainer=trainer)
    # Whitespace runs are matched before the byte-level split, longest first.
    tok.add_tokens([AddedToken(w, normalized=False) for w in ws])
    result = PhiTokenizer(tok, EOS_TOKEN, source="trained")
    result.skipped_lines = skipped
    if out_dir is not None:
        result.save(out_dir)
    return result


def padded_vocab_size(n: int, multiple: int = 64) -> int:
    """The model's vocabulary: the tokenizer's size rounded up to a multiple of 64."""
    return ((n + multiple - 1) // multiple) * multiple
