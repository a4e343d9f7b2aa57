"""`phi1 synth topics`: a topic tree of N leaves, grown once through the LLM from a few seed subjects.

phi-1.5 seeded its textbooks with 20K topics; a spec's hand-written 9 topics cannot spread 500K
prompts. The tree is grown breadth first: every node (seed subject → subtopics → ...) is asked
for `branching` subtopics until the tree has `target` leaves or every node at `depth` is reached.

Determinism and resume, the same way jobs get exactly-once (`job.py`):
  * the prompt of node X is a pure function of its path (and the branching factor);
  * every answered expansion is appended to `OUT.ledger.jsonl`, one whole line per `os.write`
    (`JsonlAppender`; a torn last line is cut off on reopen), keyed by the node's path;
  * the tree is rebuilt from the ledger in breadth-first order, whatever order answers came
    in: a node's children are its answer's subtopics minus every name already in the tree
    (case-insensitively), at most `branching`, and the last expansion keeps only as many as
    reach the target exactly. So a rerun after kill -9 asks only for nodes not in the ledger,
    no node is asked twice, and the tree equals an uninterrupted run's;
  * `OUT.job.json` pins seeds, model, target, branching, depth and sampling (a rerun with other
    settings is refused); `OUT` itself is written atomically when the tree is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

from phi1.utils.io import json_loads, JsonlAppender, read_jsonl
from phi1.utils.config import load_yaml
from phi1.errors import ConfigError, Phi1Error
from phi1.llm.client import ClientSettings, LLMClient
from phi1.synth.job import _check_manifest, _write_json
from phi1.synth.sources import TREE_FORMAT
from phi1.utils.progress import progress
from phi1.utils.safety import OutputLock, clean_stale_temps, oserror_line

log = logging.getLogger(__name__)

PROMPT_VERSION = 1  # bump when the expansion prompt changes: a tree's ledger is only valid for one wording
SYSTEM = "You are an expert curriculum designer who organises a subject into distinct, specific subtopics."
MAX_NAME_CHARS = 100
SEED_SUFFIXES = (".txt", ".json", ".yaml", ".yml")


@dataclass
class TopicsConfig(ClientSettings):
    """One topic-tree build; the client's fields are `ClientSettings`' (keyword-only)."""

    endpoint: str | list[str]
    model: str
    seeds: str  # a .txt/.json/.yaml file of subjects, or a comma-separated list
    target: int  # leaves wanted
    out: str
    branching: int = 10  # subtopics asked for per node (and most kept)
    depth: int = 4  # levels below the seed subjects
    temperature: float = 0.7  # sampling temperature of the expansions
    max_tokens: int = 600  # longest answer per expansion

    def validate(self) -> None:
        for name, lo in (("target", 1), ("branching", 2), ("depth", 1), ("max_tokens", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"--{name.replace('_', '-')}: {v!r} must be a whole number >= {lo}")
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"--temperature: {self.temperature} must be in [0, 2]")


@dataclass
class TopicsReport:
    out: str
    leaves: int
    target: int
    nodes: int
    expanded_before: int  # expansions read back from the ledger
    expanded: int  # expansions asked for by this run
    empty_answers: int  # expansions whose answer gave no new subtopic
    reached_target: bool
    elapsed_s: float
    stats: dict = field(default_factory=dict)
    error: str | None = None  # a request that failed for good: rerun to continue


def side_paths(out: Path) -> tuple[Path, Path]:
    """The manifest and the expansion ledger beside a tree file."""
    return out.with_name(out.name + ".job.json"), out.with_name(out.name + ".ledger.jsonl")


def name_key(name: str) -> str:
    """What makes two topic names the same: case, punctuation and spacing aside."""
    return " ".join(re.sub(r"[^\w\s+#]", " ", name.casefold()).split())


def load_seeds(value: str) -> list[str]:
    """Seed subjects from a file (.txt one per line, .json/.yaml a list or mapping) or a comma list."""
    p = Path(value)
    # a subject may contain "/" (Input/Output): only an existing path or a file-type suffix makes it a file
    looks_like_path = p.exists() or p.suffix.lower() in SEED_SUFFIXES + (".jsonl", ".csv", ".tsv", ".md")
    if not looks_like_path:
        items: list = value.split(",")
    elif p.is_dir():
        raise Phi1Error(f"--seeds {value}: is a directory; give a .txt/.json/.yaml file of subjects or a comma list")
    elif not p.is_file():
        raise Phi1Error(f"--seeds {value}: file not found; give a .txt/.json/.yaml file of subjects or a comma list")
    elif p.suffix.lower() not in SEED_SUFFIXES:
        raise Phi1Error(f"--seeds {value}: unsupported file type {p.suffix or '(none)'}; give a .txt (one subject a "
                        "line), .json or .yaml (a list of subjects) file, or a comma list")
    else:
        items = _seed_file(p)
    seeds, seen = [], set()
    for i, s in enumerate(items, 1):
        if not isinstance(s, str):
            raise Phi1Error(f"--seeds {value}: subject {i} is {type(s).__name__}, not a string")
        s = " ".join(s.split())
        if not s:
            continue
        if any(ord(ch) < 32 for ch in s) or len(s) > MAX_NAME_CHARS:
            raise Phi1Error(f"--seeds {value}: subject {i} ({s[:30]!r}) has control characters or is over "
                            f"{MAX_NAME_CHARS} characters; give plain subject names")
        if name_key(s) not in seen:
            seen.add(name_key(s))
            seeds.append(s)
    if not seeds:
        raise Phi1Error(f"--seeds {value}: no subjects; give at least one (e.g. --seeds 'Python,Algorithms')")
    return seeds


def _seed_file(p: Path) -> list:
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Phi1Error(f"--seeds {p}: not UTF-8 text (byte {exc.start}); give a text file of subjects") from None
    if p.suffix.lower() == ".txt":
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    import yaml

    try:
        data = json_loads(text) if p.suffix.lower() == ".json" else load_yaml(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise Phi1Error(f"--seeds {p}: malformed {p.suffix[1:].upper()} ({' '.join(str(exc).split())[:120]})") from None
    if isinstance(data, dict):  # {seeds: [...]}, a textbook spec's {topics: {...}}, or {subject: ...}
        key = next((k for k in ("seeds", "subjects", "topics") if k in data), None)
        data = data[key] if key else None if "template" in data else list(data)
    if isinstance(data, dict):
        data = list(data)
    if not isinstance(data, list):
        raise Phi1Error(f"--seeds {p}: expected a list of subjects (or a mapping whose keys are subjects)")
    return data


def expansion_prompt(path: tuple[str, ...], branching: int) -> list[dict]:
    """The chat messages asking for node `path`'s subtopics: a pure function of the path."""
    name = path[-1]
    where = " > ".join(path)
    user = (f"We are writing a topic tree for a series of textbooks. The current node is \"{name}\", at this "
            f"place in the tree: {where}.\n"
            f"List {branching} distinct subtopics of \"{name}\" that a chapter on it would cover. Each must be "
            f"narrower than \"{name}\", fit its place in the tree, differ from the others, and be a short name "
            f"(2 to 6 words), not a sentence.\n"
            f"Answer with a JSON list of strings only, for example [\"first subtopic\", \"second subtopic\"].")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_ITEM = re.compile(r"^\s*(?:\d{1,3}\s*[.):]|\(\d{1,3}\)|[-*•+]|[a-zA-Z][.)])\s+(.+)$")
_DESCRIPTION = re.compile(r"\s+[-–—]\s+|:\s+|\s+\(")


def parse_subtopics(text: str) -> list[str]:
    """Subtopic names from an answer: a JSON list (of strings or {name: ...}), else numbered or bulleted
    lines, else plain lines (or one comma-separated line). Descriptions after ': ' or ' - ' are cut;
    duplicates (case-insensitive) are dropped; order is kept."""
    items = _json_items(text)
    if items is None:
        lines = [ln for ln in text.replace("```", "\n").splitlines() if ln.strip()]
        listed = [m.group(1) for m in map(_ITEM.match, lines) if m]
        if listed:
            items = listed
        else:
            plain = [ln for ln in lines if not ln.rstrip().endswith((":", "!", "?")) and len(ln) <= 2 * MAX_NAME_CHARS]
            items = re.split(r"[;,]", plain[0]) if len(plain) == 1 else plain
    out, seen = [], set()
    for item in items:
        name = _clean(item)
        if name and name_key(name) and name_key(name) not in seen:
            seen.add(name_key(name))
            out.append(name)
    return out


def _json_items(text: str) -> list | None:
    for open_, close in (("[", "]"), ("{", "}")):
        a, b = text.find(open_), text.rfind(close)
        if a < 0 or b <= a:
            continue
        try:
            data = json.loads(text[a : b + 1])
        except ValueError:
            continue
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if isinstance(data, list):
            return [x if isinstance(x, str) else next((x[k] for k in ("name", "topic", "subtopic", "title")
                                                       if isinstance(x, dict) and isinstance(x.get(k), str)), "")
                    for x in data]
    return None


def _clean(item: str) -> str:
    s = re.sub(r"[*`]+", "", item).strip().strip("\"'“”‘’").strip()
    s = _DESCRIPTION.split(s, maxsplit=1)[0]
    s = " ".join(s.split()).strip(" .,;:-–—\"'")
    return s if 0 < len(s) <= MAX_NAME_CHARS and not any(ord(ch) < 32 for ch in s) else ""


class _Tree:
    """The tree being grown: nodes in breadth-first order, the names taken, the leaf count."""

    def __init__(self, seeds: list[str], target: int, branching: int, depth: int):
        self.target, self.branching, self.depth = target, branching, depth
        self.roots = [{"name": s} for s in seeds]
        self.queue = deque(((s,), node) for s, node in zip(seeds, self.roots))
        self.taken = {name_key(s) for s in seeds}
        self.leaves = len(seeds)
        self.nodes = len(seeds)
        self.empty = 0

    def done(self) -> bool:
        return self.leaves >= self.target or not self.queue

    def head_expandable(self) -> bool:
        while self.queue and len(self.queue[0][0]) > self.depth:  # a seed is depth 0, path length 1
            self.queue.popleft()
        return bool(self.queue)

    def commit(self, children: list[str]) -> None:
        """Give the head node its children: the new names, at most `branching`, not past the target."""
        path, node = self.queue.popleft()
        room = min(self.branching, self.target - self.leaves + 1)
        kept = []
        for name in children:
            key = name_key(name)
            if key and key not in self.taken and len(kept) < room:
                self.taken.add(key)
                kept.append(name)
        if not kept:
            self.empty += 1
            return
        node["children"] = [{"name": n} for n in kept]
        self.queue.extend(((*path, n), c) for n, c in zip(kept, node["children"]))
        self.leaves += len(kept) - 1
        self.nodes += len(kept)


def _prompt_sha(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _read_ledger(ledger: Path) -> dict[tuple[str, ...], dict]:
    """path -> {children, prompt_sha256} of the expansions already answered (the first answer of a path wins)."""
    done: dict[tuple[str, ...], dict] = {}
    if not ledger.exists():
        return done
    JsonlAppender(ledger).close()  # cuts off a torn last line left by a crash
    for rec in read_jsonl(ledger, strict=False):
        path, children = rec.get("path"), rec.get("children")
        if isinstance(path, list) and isinstance(children, list):
            done.setdefault(tuple(path), {"children": [c for c in children if isinstance(c, str)],
                                          "prompt_sha256": rec.get("prompt_sha256")})
    return done


def build_topic_tree(cfg: TopicsConfig, client: LLMClient | None = None) -> TopicsReport:
    """Grow (or finish growing) the tree of `cfg` into `cfg.out`; see the module docstring."""
    cfg.validate()
    seeds = load_seeds(cfg.seeds)
    out = Path(cfg.out)
    if out.is_dir():
        raise Phi1Error(f"--out {out}: is a directory; give the path of the tree's JSON file")
    with OutputLock(out, is_dir=False, what="topic tree"):
        for side in side_paths(out):
            clean_stale_temps(out.parent, stem=side.name)
        return _build_locked(cfg, seeds, out, client)


def _build_locked(cfg: TopicsConfig, seeds: list[str], out: Path, client: LLMClient | None) -> TopicsReport:
    manifest_path, ledger = side_paths(out)
    sampling = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    pinned = {"format": TREE_FORMAT, "prompt_version": PROMPT_VERSION, "seeds": seeds, "model": cfg.model,
              "target": cfg.target, "branching": cfg.branching, "depth": cfg.depth, "sampling": sampling}
    manifest = _check_manifest(manifest_path, pinned)
    done = _read_ledger(ledger)
    manifest["pinned"] = pinned
    _write_json(manifest_path, manifest)
    if client is None:
        client = cfg.make_client()
    tree = _Tree(seeds, cfg.target, cfg.branching, cfg.depth)
    t0 = time.monotonic()
    try:
        asked, error = asyncio.run(_grow(tree, done, client, ledger, sampling))
    except OSError as exc:
        raise Phi1Error(f"{oserror_line(exc)}; the expansions written so far are kept: rerun the same command "
                        "to continue") from None
    elapsed = time.monotonic() - t0
    rep = TopicsReport(str(out), tree.leaves, cfg.target, tree.nodes, len(done) - asked, asked, tree.empty,
                       tree.leaves >= cfg.target, round(elapsed, 3), client.stats.as_dict(), error)
    if error is None:
        _write_json(out, {"format": TREE_FORMAT, "version": 1, "settings": pinned, "n_leaves": tree.leaves,
                          "n_nodes": tree.nodes, "reached_target": rep.reached_target, "tree": tree.roots})
    manifest["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - elapsed)),
                             "elapsed_s": rep.elapsed_s, "expanded": asked, "leaves": tree.leaves,
                             "error": error, "stats": rep.stats})
    _write_json(manifest_path, manifest)
    return rep


async def _grow(tree: _Tree, done: dict, client: LLMClient, ledger: Path, sampling: dict) -> tuple[int, str | None]:
    """Expand nodes in breadth-first order, asking ahead for up to 2x concurrency pending nodes.

    Answers are written to the ledger as they arrive and committed to the tree in BFS order.
    Returns (expansions asked for, the error that stopped the run or None).
    """
    window = client.concurrency * 2
    last_sync = [time.monotonic()]
    inflight: dict[tuple[str, ...], asyncio.Task] = {}
    errors: list[str] = []
    asked = 0
    bar = progress(total=tree.target, desc="synth topics", unit="leaf", initial=min(tree.leaves, tree.target))

    async def expand(path: tuple[str, ...], writer: JsonlAppender) -> None:
        nonlocal asked
        messages = expansion_prompt(path, tree.branching)
        res = await client.chat(messages, **sampling)
        if not res.ok:
            errors.append(f"expanding {' > '.join(path)} failed after {res.attempts} attempts: {res.error}")
            return
        children = parse_subtopics(res.text)
        sha = _prompt_sha(messages)
        writer.write({"path": list(path), "children": children, "prompt_sha256": sha, "answer": res.text,
                      "usage": res.usage})
        done[path] = {"children": children, "prompt_sha256": sha}
        asked += 1
        if time.monotonic() - last_sync[0] > 1.0:  # os.write survives kill -9; fsync (power loss) once a second
            last_sync[0] = time.monotonic()
            writer.fsync()

    try:
        with JsonlAppender(ledger, sync=False) as writer:
            try:
                while True:
                    before = tree.leaves
                    while not tree.done() and tree.head_expandable() and tree.queue[0][0] in done:
                        path = tree.queue[0][0]
                        if done[path]["prompt_sha256"] != _prompt_sha(expansion_prompt(path, tree.branching)):
                            raise Phi1Error(f"{ledger}: node {' > '.join(path)} was expanded from a different "
                                            "prompt (another phi1 version); write to another --out")
                        tree.commit(done[path]["children"])
                    bar.update(min(tree.leaves, tree.target) - min(before, tree.target))
                    if tree.done() or not tree.head_expandable() or errors:
                        break
                    # ask ahead, in BFS order, for about as many nodes as the target still needs
                    need = -(-(tree.target - tree.leaves) // (tree.branching - 1))
                    for path, _ in islice(tree.queue, window * 4):
                        if len(inflight) >= min(window, max(need, 1)):
                            break
                        if len(path) <= tree.depth and path not in done and path not in inflight:
                            inflight[path] = asyncio.ensure_future(expand(path, writer))
                    finished, _ = await asyncio.wait(inflight.values(), return_when=asyncio.FIRST_COMPLETED)
                    for path in [p for p, t in inflight.items() if t in finished]:
                        inflight.pop(path).result()  # a write error (OSError) stops the run here
                # Asked ahead and not needed (the target is reached), or beside a failure: their answers
                # are paid for already, so they land in the ledger rather than being thrown away.
                await asyncio.gather(*inflight.values())
            finally:
                for t in inflight.values():
                    t.cancel()  # only still running when a write error or a bad ledger stopped the run
                await asyncio.gather(*inflight.values(), return_exceptions=True)
                writer.fsync()
                await client.aclose()
    finally:
        bar.close()
    return asked, (errors[0] if errors else None)


def report_dict(rep: TopicsReport) -> dict:
    return asdict(rep)
