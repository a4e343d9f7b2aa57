"""Prompt builders: one random draw of constraints from a spec, rendered into a prompt.

Each builder takes a `random.Random` and returns the prompt plus the exact
constraints it sampled, so a record can say what it was asked for and the
diversity report can count what was actually used.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from phi1.errors import ConfigError
from phi1.synth.spec import Spec, range_of


@dataclass
class BuiltPrompt:
    """A rendered prompt: chat messages (or one text for `/completions`) and its constraints."""

    messages: list[dict]
    prompt: str  # the text sent to /completions (system + user for completion APIs)
    constraints: dict

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def record_rng(seed: int, index: int, salt: int = 0) -> random.Random:
    """The RNG of record `index`: a function of (seed, index, salt) only, so reruns agree."""
    return random.Random(f"phi1-synth:{seed}:{index}:{salt}")


def pick(rng: random.Random, pool: Any) -> Any:
    """One item: uniform from a list, weighted from a mapping `item: weight`."""
    if isinstance(pool, dict):
        keys = list(pool)
        return rng.choices(keys, weights=[float(pool[k]) for k in keys])[0]
    return rng.choice(pool)


def pick_k(rng: random.Random, pool: list, k: int) -> list:
    """k distinct items in a random order (fewer if the pool is smaller)."""
    return rng.sample(list(pool), min(k, len(pool)))


def _render(spec: Spec, fields: dict, constraints: dict) -> BuiltPrompt:
    user = spec.template.format(**fields).strip()
    messages = ([{"role": "system", "content": spec.system.strip()}] if spec.system else []) + [
        {"role": "user", "content": user}
    ]
    prompt = f"{spec.system.strip()}\n\n{user}" if spec.system else user
    return BuiltPrompt(messages, prompt, constraints)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def build_textbook(spec: Spec, rng: random.Random, seed: int = 0, index: int = 0) -> BuiltPrompt:
    """Topic → subtopic → concepts, plus audience, style and seed words (phi-1 / Cosmopedia style).

    With `topics_file` or `seed_documents` the subject is record `index`'s leaf or document, dealt
    out by quota (`sources.dealt`); the inline `topics` are drawn from `rng` alone.
    """
    source = spec.textbook_source
    if source is not None and source.name != "topics":
        return _build_sourced_textbook(spec, rng, seed, index)
    topics = spec.pools["topics"]
    if not isinstance(topics, dict):
        raise ConfigError(f"{spec.source}: topics must map topic -> {{subtopic: [concepts]}}")
    topic = rng.choice(sorted(topics))
    subtopics = topics[topic]
    if not isinstance(subtopics, dict) or not subtopics:
        raise ConfigError(f"{spec.source}: topics.{topic} must map subtopic -> [concepts]")
    subtopic = rng.choice(sorted(subtopics))
    lo, hi = range_of(spec, "concepts_per_prompt", (1, 3))
    concepts = pick_k(rng, subtopics[subtopic], rng.randint(lo, hi))
    wlo, whi = range_of(spec, "seed_words_per_prompt", (2, 4))
    words = pick_k(rng, spec.pools["seed_words"], rng.randint(wlo, whi))
    audience = pick(rng, spec.pools["audiences"])
    style = pick(rng, spec.pools["styles"])
    c = {"topic": topic, "subtopic": subtopic, "concepts": concepts, "audience": audience,
         "style": style, "seed_words": words}
    return _render(spec, {**c, "concepts": _join(concepts), "seed_words": ", ".join(words)}, c)


def _build_sourced_textbook(spec: Spec, rng: random.Random, seed: int, index: int) -> BuiltPrompt:
    """A tree leaf (its path: root topic, the leaf's parent as the section, the leaf as the concept) or a
    seed document, plus audience, style and seed words."""
    from phi1.synth.sources import dealt

    source = spec.textbook_source
    wlo, whi = range_of(spec, "seed_words_per_prompt", (2, 4))
    words = pick_k(rng, spec.pools["seed_words"], rng.randint(wlo, whi))
    audience = pick(rng, spec.pools["audiences"])
    style = pick(rng, spec.pools["styles"])
    common = {"audience": audience, "style": style, "seed_words": words}
    fields = {**common, "seed_words": ", ".join(words)}
    if source.name == "seed_documents":
        docs = source.documents
        k = dealt(len(docs.ids), seed, index, "document")
        return _render(spec, {**fields, "document": docs.texts[k]}, {"document_id": docs.ids[k], **common})
    leaves = source.tree.leaves
    path = leaves[dealt(len(leaves), seed, index, "leaf")]
    section = path[-2] if len(path) >= 3 else path[-1]
    c = {"topic": path[0], "subtopic": section, "concepts": [path[-1]], "leaf": path[-1], "leaf_path": list(path),
         **common}
    return _render(spec, {**fields, "topic": path[0], "subtopic": section, "concepts": path[-1], "leaf": path[-1],
                          "path": " > ".join(path)}, c)


def _singular(key: str) -> str:
    if key.endswith(("xes", "ses", "ches", "shes")):
        return key[:-2]
    return key[:-1] if key.endswith("s") else key


def function_name(spec: Spec, rng: random.Random) -> str:
    """A constrained, randomly composed snake_case name from the spec's name parts."""
    parts = spec.pools["name_parts"]
    for key in ("patterns", "verbs", "nouns"):
        if key not in parts:
            raise ConfigError(f"{spec.source}: name_parts.{key} is missing")
    pattern = pick(rng, parts["patterns"])
    fill = {_singular(k): pick(rng, v) for k, v in parts.items() if k != "patterns"}  # verbs -> {verb}
    try:
        return pattern.format(**fill)
    except KeyError as exc:
        raise ConfigError(f"{spec.source}: name_parts.patterns: {pattern!r} uses {exc} which has no list") from None


def build_exercise(spec: Spec, rng: random.Random, seed: int = 0, index: int = 0) -> BuiltPrompt:
    """A function name, difficulty, concepts and topic; the model writes signature, docstring, solution, asserts."""
    name = function_name(spec, rng)
    difficulty = pick(rng, spec.pools["difficulties"])
    lo, hi = range_of(spec, "concepts_per_prompt", (1, 2))
    concepts = pick_k(rng, spec.pools["concepts"], rng.randint(lo, hi))
    topic = pick(rng, spec.pools["topics"])
    alo, ahi = range_of(spec, "asserts", (3, 5))
    n_asserts = rng.randint(alo, ahi)
    c = {"function_name": name, "difficulty": difficulty, "concepts": concepts, "topic": topic,
         "n_asserts": n_asserts}
    return _render(spec, {**c, "concepts": _join(concepts)}, c)


def build_story(spec: Spec, rng: random.Random, seed: int = 0, index: int = 0) -> BuiltPrompt:
    """TinyStories: one noun, verb and adjective from the simple vocabulary plus a random feature subset."""
    vocab = spec.pools["vocabulary"]
    for key in ("nouns", "verbs", "adjectives"):
        if not vocab.get(key):
            raise ConfigError(f"{spec.source}: vocabulary.{key} is missing or empty")
    noun, verb, adjective = rng.choice(vocab["nouns"]), rng.choice(vocab["verbs"]), rng.choice(vocab["adjectives"])
    features = spec.pools["features"]
    if not isinstance(features, dict):
        raise ConfigError(f"{spec.source}: features must map name -> instruction sentence")
    lo, hi = range_of(spec, "features_per_prompt", (0, 3))
    chosen = set(pick_k(rng, list(features), rng.randint(lo, hi)))
    names = [f for f in features if f in chosen]  # spec order, so equal sets render equally
    text = ""
    if names:
        text = "The story should have the following features: " + " ".join(features[n] for n in names) + " "
    c = {"noun": noun, "verb": verb, "adjective": adjective, "features": names}
    return _render(spec, {**c, "features": text}, c)


# (spec, the record's RNG, seed, index): only sourced textbooks use seed and index (their quotas).
BUILDERS: dict[str, Callable[[Spec, random.Random, int, int], BuiltPrompt]] = {
    "textbooks": build_textbook,
    "exercises": build_exercise,
    "stories": build_story,
}


def iter_prompts(spec: Spec, seed: int, count: int, max_salt: int = 50):
    """Yield (index, BuiltPrompt) for 0..count-1, with no two prompts identical.

    Record i's prompt depends only on (seed, i) and the prompts before it: when a
    draw repeats an earlier prompt it is redrawn with the next salt, so the
    sequence is still a pure function of the seed.
    """
    build = BUILDERS[spec.kind]
    seen: set[bytes] = set()  # 16-byte digests: ~60 MB per million prompts
    for i in range(count):
        for salt in range(max_salt):
            bp = build(spec, record_rng(seed, i, salt), seed, i)
            h = bp.sha256()
            key = bytes.fromhex(h[:32])
            if key not in seen:
                break
        else:
            raise ConfigError(f"{spec.source}: the spec's pools are too small for {count} distinct prompts; add entries")
        seen.add(key)
        yield i, bp, h
