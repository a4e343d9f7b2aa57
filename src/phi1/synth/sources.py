"""Where a textbook prompt's subject comes from: the spec's inline topics, a topic tree file, or seed documents.

A textbook spec names exactly one source:
  * `topics:`          the inline mapping topic -> subtopic -> [concepts] (drawn uniformly; `prompts.py`);
  * `topics_file:`     a tree written by `phi1 synth topics` (`phi1.synth.topics`); record i gets one leaf;
  * `seed_documents:`  a JSONL file or a data-pipeline stage directory of kept documents (`text`, `id`);
                       record i gets one document, cut to `document_chars`, for the template's `{document}`.

Quotas: leaves (and documents) are dealt out in rounds. Round r = i // L of a source with L items
is one permutation of the L items, seeded by (seed, r); record i takes item i % L of its round. So
every item is used once before any is used twice, any prefix of n records gives each item at most
ceil(n / L) prompts (whatever the job's --count, which never enters), and record i's item is a pure
function of (seed, i): redrawing a repeated prompt with another salt changes audience, style and
seed words, never the item, so the quota holds after redraws too.

Relative paths in a spec are resolved against the spec file's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from phi1.utils.io import json_loads
from phi1.errors import ConfigError, Phi1Error

log = logging.getLogger(__name__)

TREE_FORMAT = "phi1-topic-tree"
SOURCES = ("topics", "topics_file", "seed_documents")
DEFAULT_DOCUMENT_CHARS = 3000
# The placeholders each source can fill (beyond audience, style, seed_words).
SOURCE_PLACEHOLDERS = {
    "topics": {"topic", "subtopic", "concepts"},
    "topics_file": {"topic", "subtopic", "concepts", "leaf", "path"},
    "seed_documents": {"document"},
}


@dataclass
class TopicTree:
    """The leaves of a topic tree file, in depth-first order, each as its path from the seed subject."""

    path: str
    leaves: list[tuple[str, ...]]
    n_nodes: int
    sha256: str


@dataclass
class SeedDocuments:
    """Kept documents (id, text cut to `chars`) that web-seeded prompts are built from."""

    path: str
    ids: list[str]
    texts: list[str]
    chars: int
    sha256: str = ""
    cut: int = 0  # documents longer than `chars`


@dataclass
class TextbookSource:
    """The source a textbook spec chose, loaded once when the spec is loaded."""

    name: str  # one of SOURCES
    tree: TopicTree | None = None
    documents: SeedDocuments | None = None
    sha256: str = ""  # of the source's content, folded into the spec's hash


def resolve(source: str, value: Any, key: str) -> Path:
    """A spec's path field, relative to the spec file's folder."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {key} must be a path (a non-empty string), got {value!r}")
    p = Path(value).expanduser()
    if not p.is_absolute() and source and not source.startswith("<"):
        p = Path(source).resolve().parent / p
    return p


def load_tree(path: str | Path) -> TopicTree:
    """Read a tree written by `phi1 synth topics`; errors name the file and what is wrong."""
    p = Path(path)
    if p.is_dir():
        raise Phi1Error(f"{p}: is a directory; give the topic tree JSON written by `phi1 synth topics --out`")
    if not p.is_file():
        raise Phi1Error(f"{p}: topic tree file not found; build it with `phi1 synth topics --out {p}`")
    raw = p.read_bytes()
    try:
        data = json_loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Phi1Error(f"{p}: not a topic tree ({type(exc).__name__}: {str(exc)[:80]}); "
                        "give the JSON written by `phi1 synth topics`") from None
    if not isinstance(data, dict) or data.get("format") != TREE_FORMAT or not isinstance(data.get("tree"), list):
        raise Phi1Error(f"{p}: not a topic tree (no \"format\": \"{TREE_FORMAT}\" with a \"tree\" list); "
                        "give the JSON written by `phi1 synth topics`")
    leaves: list[tuple[str, ...]] = []
    n_nodes = 0
    stack = [((), node) for node in reversed(data["tree"])]
    while stack:
        prefix, node = stack.pop()
        name = node.get("name") if isinstance(node, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise Phi1Error(f"{p}: node under {' > '.join(prefix) or 'the top level'} has no name; "
                            "rebuild the tree with `phi1 synth topics`")
        n_nodes += 1
        here = (*prefix, name)
        children = node.get("children") or []
        if not isinstance(children, list):
            raise Phi1Error(f"{p}: node {' > '.join(here)}: children must be a list")
        if children:
            stack.extend((here, c) for c in reversed(children))
        else:
            leaves.append(here)
    if not leaves:
        raise Phi1Error(f"{p}: the topic tree has no leaves; rebuild it with `phi1 synth topics`")
    return TopicTree(str(p), leaves, n_nodes, hashlib.sha256(raw).hexdigest())


def load_documents(path: str | Path, chars: int) -> SeedDocuments:
    """Kept documents from a JSONL file or a stage directory (its manifest's shards)."""
    from phi1.data.records import iter_records

    docs = SeedDocuments(str(path), [], [], chars)
    h = hashlib.sha256()
    seen: set[str] = set()
    for rec in iter_records(path):
        text = rec["text"]
        if not text.strip():
            continue
        rid = str(rec.get("id"))
        if rid in seen:
            raise Phi1Error(f"{path}: document id {rid!r} appears twice; seed documents need unique ids "
                            "(run them through `phi1 data dedup` or give each line its own id)")
        seen.add(rid)
        docs.cut += len(text) > chars
        text = text[:chars]
        docs.ids.append(rid)
        docs.texts.append(text)
        h.update(json.dumps([rid, text], ensure_ascii=False).encode())
    if not docs.ids:
        raise Phi1Error(f"{path}: no documents with text; seed_documents needs a JSONL file or a stage "
                        "directory of records with a non-empty `text`")
    docs.sha256 = h.hexdigest()
    if docs.cut:
        log.info("%s: %d of %d seed documents cut to document_chars=%d", path, docs.cut, len(docs.ids), chars)
    return docs


def load_source(raw: dict, source: str) -> TextbookSource:
    """Check that a textbook spec names exactly one source and load it."""
    given = [k for k in SOURCES if k in raw]
    if len(given) != 1:
        what = f"it gives {', '.join(given)}" if given else "it gives none"
        raise ConfigError(f"{source}: a textbook spec needs exactly one of topics (inline), topics_file "
                          f"(a tree from `phi1 synth topics`) or seed_documents (kept documents); {what}")
    name = given[0]
    if name != "seed_documents" and "document_chars" in raw:
        raise ConfigError(f"{source}: document_chars only applies with seed_documents; remove it")
    if name == "topics":
        return TextbookSource(name)
    if name == "topics_file":
        tree = load_tree(resolve(source, raw[name], name))
        return TextbookSource(name, tree=tree, sha256=tree.sha256)
    chars = raw.get("document_chars", DEFAULT_DOCUMENT_CHARS)
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 1:
        raise ConfigError(f"{source}: document_chars: {chars!r} must be a whole number >= 1 (characters of each "
                          "document put into the prompt)")
    docs = load_documents(resolve(source, raw[name], name), chars)
    return TextbookSource(name, documents=docs, sha256=docs.sha256)


def check_template(source: str, name: str, placeholders: set[str]) -> None:
    """The template may only use what its source fills, and a document source must show the document."""
    others = set().union(*SOURCE_PLACEHOLDERS.values()) - SOURCE_PLACEHOLDERS[name]
    bad = sorted(placeholders & others)
    if bad:
        raise ConfigError(f"{source}: template uses {bad}, which a spec with {name} does not fill; "
                          f"with {name} use {sorted(SOURCE_PLACEHOLDERS[name] | {'audience', 'style', 'seed_words'})}")
    if name == "seed_documents" and "document" not in placeholders:
        raise ConfigError(f"{source}: a seed_documents spec's template must contain {{document}} (where the "
                          "document's text goes)")


@lru_cache(maxsize=8)
def _round(n: int, seed: int, r: int, tag: str) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"phi1-synth-quota:{tag}:{seed}:{r}").shuffle(order)
    return tuple(order)


def dealt(n: int, seed: int, index: int, tag: str) -> int:
    """Item of record `index` when `n` items are dealt out in seeded rounds (see the module docstring)."""
    return _round(n, seed, index // n, tag)[index % n]
