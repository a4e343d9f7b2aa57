"""Everything the trainer checks and builds before the first step.

Each bad input (unknown preset, shards from another tokenizer, a sequence
length over the model's maximum, a checkpoint of another shape, an empty
dataset, a batch that does not divide over the ranks) fails here, before any
training, with a message naming the config field or the file.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from phi1.data.loader import Source, WindowSampler
from phi1.data.shards import MANIFEST, read_manifest
from phi1.errors import ConfigError, Phi1Error
from phi1.model.phi.config import PhiConfig
from phi1.model.family import all_presets, config_from_preset, preset_vocab_size
from phi1.model.family import build_model as build_network
from phi1.model.hf import load_model_dir, read_config
from phi1.model.phi.network import PhiForCausalLM
from phi1.tokenizer import load_tokenizer, resolve_tokenizer
from phi1.train.checkpoint import checkpoint_ref
from phi1.train.config import TrainConfig

SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "partial_rotary_factor", "qk_layernorm", "tie_word_embeddings")


def dropout_overrides(cfg: TrainConfig) -> dict:
    m = cfg.model
    out = {"attention_dropout": m.attention_dropout, "resid_pdrop": m.resid_dropout, "embd_pdrop": m.embd_dropout}
    return {k: v for k, v in out.items() if v is not None}


def init_source(cfg: TrainConfig) -> str:
    """model.init as a preset name or a model directory (`RUN@STEP` names that step's checkpoint)."""
    ref = checkpoint_ref(cfg.model.init)
    return str(ref) if ref is not None else cfg.model.init


def load_tokenizer_for(cfg: TrainConfig):
    init = init_source(cfg)
    tok_dir = cfg.model.tokenizer or (init if Path(init).is_dir() else None)
    if tok_dir is None:
        raise ConfigError(f"config.model.tokenizer: required when model.init is a preset ({cfg.model.init!r})")
    return load_tokenizer(resolve_tokenizer(tok_dir, "config.model.tokenizer"))


def initial_model_config(cfg: TrainConfig, tokenizer) -> PhiConfig:
    """The configuration the run trains: a preset (its vocab_size, or the tokenizer's size padded to
    64 for the presets without one), or a model directory's."""
    init = init_source(cfg)
    if Path(init).is_dir():
        mcfg = read_config(init)
    elif init in all_presets():
        eos = tokenizer.eos_id
        vocab = preset_vocab_size(init, len(tokenizer), "config.model.tokenizer")
        mcfg = config_from_preset(init, vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    else:
        raise ConfigError(f"config.model.init = {init!r}: neither a model directory, a RUN@STEP checkpoint nor a "
                          f"preset (presets: {', '.join(all_presets())})")
    mcfg = mcfg.replace(**dropout_overrides(cfg))
    mcfg.validate()
    if len(tokenizer) > mcfg.vocab_size:
        raise ConfigError(f"config.model.tokenizer: {len(tokenizer)} tokens do not fit the model's vocab_size "
                          f"{mcfg.vocab_size}; use the tokenizer the model was made with")
    if cfg.data.seq_len > mcfg.max_position_embeddings:
        raise ConfigError(f"config.data.seq_len = {cfg.data.seq_len}: exceeds the model's max_position_embeddings "
                          f"({mcfg.max_position_embeddings}); lower it")
    return mcfg


def check_checkpoint_shape(ckpt: Path, mcfg: PhiConfig) -> None:
    saved = read_config(ckpt / "model")
    for f in ("family",) + SHAPE_FIELDS:  # a field one family lacks reads as None in both
        if getattr(saved, f, None) != getattr(mcfg, f, None):
            raise Phi1Error(f"{ckpt / 'model' / 'config.json'}: checkpoint has {f}={getattr(saved, f, None)!r} but the "
                            f"config's model has {getattr(mcfg, f, None)!r}; it is from a different model shape "
                            "(use another run.name or the matching model.init)")


def build_model(cfg: TrainConfig, mcfg: PhiConfig, ckpt: Path | None) -> PhiForCausalLM:
    """Weights from the checkpoint (resume), the init directory (continue/finetune) or a fresh init."""
    overrides = dropout_overrides(cfg)
    if ckpt is not None:
        check_checkpoint_shape(ckpt, mcfg)
        try:
            return load_model_dir(ckpt / "model", dtype=torch.float32, **overrides)
        except Phi1Error as exc:  # a damaged checkpoint: say how to go on from an earlier one
            raise Phi1Error(f"{exc}; to resume from an earlier checkpoint delete {ckpt}") from None
    init = init_source(cfg)
    if Path(init).is_dir():
        return load_model_dir(init, dtype=torch.float32, **overrides)
    torch.manual_seed(cfg.run.seed)
    return build_network(mcfg)


def _check_fingerprint(path: str, tokenizer) -> None:
    m = read_manifest(path)
    fp = (m.get("tokenizer") or {}).get("fingerprint")
    if fp != tokenizer.fingerprint():
        raise Phi1Error(f"{Path(path) / MANIFEST}: shards were made with tokenizer {fp}, but the model's tokenizer "
                        f"is {tokenizer.fingerprint()}; re-pack with --tokenizer of the model")


def _check_manifest_vocab(path: str, vocab_size: int) -> None:
    m = read_manifest(path)
    n = (m.get("tokenizer") or {}).get("vocab_size")
    if isinstance(n, int) and n > vocab_size:
        raise Phi1Error(f"{Path(path) / MANIFEST}: shards were made with a {n}-token vocabulary, more than the "
                        f"model's vocab_size {vocab_size}; re-pack with the model's tokenizer "
                        "(`phi1 data pack --tokenizer MODEL_TOKENIZER ...`)")


def check_token_ids(sampler: WindowSampler, vocab_size: int) -> None:
    """Every id in every shard of the sampler is < vocab_size (one max over each memory map).

    An id outside the vocabulary would otherwise fail deep in the embedding lookup (an index
    error on CPU, a device-side assert on CUDA); here it names the shard.
    """
    for stream in sampler.streams:
        shards = stream.shards
        entries = ((shards.manifest.get("splits") or {}).get(shards.split) or {}).get("shards") or []
        for i, arr in enumerate(shards.arrays):
            if len(arr) == 0:
                continue
            top = int(np.max(arr))
            if top >= vocab_size:
                name = entries[i]["file"] if i < len(entries) else f"{shards.split} shard {i}"
                bad = int(np.argmax(np.asarray(arr) >= vocab_size)) if len(arr) <= 1 << 24 else None
                where = f" (first at token {bad})" if bad is not None else ""
                raise Phi1Error(f"{Path(shards.root) / name}: token id {top}{where} is outside the model's vocabulary "
                                f"of {vocab_size} ids; the shard is damaged or was packed with another tokenizer: "
                                "re-pack the data with the model's tokenizer (`phi1 data pack --tokenizer ...`)")


def build_data(cfg: TrainConfig, tokenizer,
               vocab_size: int | None = None) -> tuple[WindowSampler, WindowSampler | None]:
    """Train sampler (required, non-empty) and val sampler (None when no val tokens exist).

    With `vocab_size` (the model's), every shard is checked for token ids outside it.
    """
    d = cfg.data
    if d.format in ("chat", "preference"):
        return build_chat_data(cfg, tokenizer, vocab_size)
    for src in d.train + d.val:
        _check_fingerprint(src.path, tokenizer)
        if vocab_size is not None:
            _check_manifest_vocab(src.path, vocab_size)
    train = WindowSampler([Source(s.path, s.weight) for s in d.train], "train", d.seq_len, cfg.run.seed)
    if d.val:
        val = WindowSampler([Source(s.path, s.weight) for s in d.val], "val", d.seq_len, cfg.run.seed)
    else:
        try:
            val = WindowSampler([Source(s.path, s.weight) for s in d.train], "val", d.seq_len, cfg.run.seed)
        except Phi1Error:  # train dirs packed without --val-fraction: no validation loss
            val = None
    if vocab_size is not None:
        for sampler in (train, val):
            if sampler is not None:
                check_token_ids(sampler, vocab_size)
    return train, val


def build_chat_data(cfg: TrainConfig, tokenizer, vocab_size: int | None = None):
    """Chat (SFT) or preference (DPO) data: data.train's files, and data.val's (None when it is empty)."""
    from phi1.chat import PHI3_TEMPLATE
    from phi1.data.chat import ChatSampler
    from phi1.train.dpo import PreferenceData

    d = cfg.data
    for name, srcs in (("train", d.train), ("val", d.val)):
        for i, s in enumerate(srcs):
            if s.weight != 1.0:
                raise ConfigError(f"config.data.{name}[{i}].weight = {s.weight}: chat data is read whole, in order; "
                                  "weights apply to token shards only (leave it at 1.0)")
    template = tokenizer.chat(default=PHI3_TEMPLATE)
    if d.format == "preference":
        def make(srcs, split):
            return PreferenceData([s.path for s in srcs], tokenizer, template, d.seq_len, cfg.run.seed, split,
                                  pad_id=tokenizer.eos_id, identical=cfg.dpo.identical)
    else:
        def make(srcs, split):
            return ChatSampler([s.path for s in srcs], tokenizer, template, d.seq_len, cfg.run.seed, split)
    train = make(d.train, "train")
    val = make(d.val, "val") if d.val else None
    for sampler in (train, val):
        if sampler is not None and vocab_size is not None and sampler.max_token_id >= vocab_size:
            raise Phi1Error(f"chat data: token id {sampler.max_token_id} is outside the model's vocabulary of "
                            f"{vocab_size}; use the model's own tokenizer (config.model.tokenizer)")
    return train, val


def build_dpo(cfg: TrainConfig, train_data, val_data, world):
    """The DPO objective: the reference is dpo.reference or model.init (never the resumed policy), frozen,
    or read once for the log-probs cached in RUN/ref_logps.pt (RUN/ref_logps-val.pt for data.val)."""
    from phi1.train.dpo import DPOObjective

    ref_dir = cfg.dpo.reference or init_source(cfg)
    if not Path(ref_dir).is_dir():
        raise ConfigError(f"config.dpo.reference = {ref_dir!r}: DPO needs a model directory as its reference (the SFT "
                          "model); set model.init (or dpo.reference) to one")
    reference = load_model_dir(ref_dir, device=world.device, dtype=torch.float32)
    objective = DPOObjective(cfg.dpo, reference, train_data, world.device,
                             cache_file=cfg.run_dir / "ref_logps.pt" if cfg.dpo.precompute_ref else None)
    if val_data is not None and cfg.dpo.precompute_ref:
        objective.add_data(reference, val_data, world.device, cfg.run_dir / "ref_logps-val.pt")
    return objective


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    t = cfg.train
    per_step = t.micro_batch * world_size
    if t.global_batch % per_step:
        raise ConfigError(f"config.train.global_batch = {t.global_batch}: must be a multiple of "
                          f"train.micro_batch x world size = {t.micro_batch} x {world_size} = {per_step}")
    return t.global_batch // per_step


def total_steps(cfg: TrainConfig) -> int:
    t = cfg.train
    if t.max_steps is not None:
        return t.max_steps
    return max(1, t.max_tokens // (t.global_batch * cfg.data.seq_len))


def load_callback(cfg: TrainConfig) -> Callable | None:
    """Import `package.module:factory` and call it with eval.callback_args."""
    spec = cfg.eval.callback
    if not spec:
        return None
    mod_name, _, fn_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config.eval.callback = {spec!r}: cannot import ({exc})") from None
    return factory(**cfg.eval.callback_args)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorms)."""
    o = cfg.optimizer
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    fused = o.fused if o.fused is not None else device.type == "cuda"
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
