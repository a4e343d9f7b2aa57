"""Create and describe model directories (the library side of `phi1 model ...`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from phi1.errors import Phi1Error
from phi1.model.phi.config import PhiConfig
from phi1.model.family import build_model, config_from_preset, family_of, preset_vocab_size
from phi1.model import hf
from phi1.model.hf import check_save_target, check_weights, planned_weight_files, read_config, save_model_dir
from phi1.tokenizer import load_tokenizer, resolve_tokenizer
from phi1.utils.io import read_json
from phi1.utils.safety import OutputLock, claim_output_dir


INIT_OWNER = "model init"


def init_model_dir(preset: str, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   seed: int = 0, overwrite: bool = False, chat_template: str | None = None,
                   **overrides) -> Path:
    """A randomly initialised model directory whose vocabulary fits the tokenizer: the preset's
    vocab_size for the released shapes (phi-1: 51200), else the tokenizer's size padded to 64.

    `out_dir` must be new, empty, or one an earlier `model init` wrote (its `.phi1-output.json`
    says so); anything else, a trained model included, is refused unless `overwrite`. Even then
    only the model's own files are replaced: nothing else in the directory is deleted.
    `chat_template` (a name such as phi-3, or a .jinja file) replaces the tokenizer's own template.
    """
    if not -(2**63) <= seed <= 2**64 - 1:
        raise Phi1Error(f"--seed {seed}: use an integer from 0 to {2**64 - 1} (torch's seed range)")
    tok = load_tokenizer(resolve_tokenizer(tokenizer_dir, "--tokenizer"))
    if chat_template is not None:
        from phi1.chat import ChatTemplate, template_source

        tok.chat_template = ChatTemplate(template_source(chat_template), where=f"--chat-template {chat_template}").source
    cfg = config_from_preset(preset, **overrides)
    if "vocab_size" not in overrides:
        cfg = cfg.replace(vocab_size=preset_vocab_size(preset, len(tok), "--tokenizer"))
    elif cfg.vocab_size < len(tok):
        raise Phi1Error(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {len(tok)} tokens")
    cfg = cfg.replace(bos_token_id=tok.eos_id, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    # Before the weights are built (minutes and ~16 GB for phi-3-mini): the files this save writes
    # must not be shadowed by other weights already in the directory.
    check_save_target(out_dir, planned_weight_files(cfg, max_shard_bytes=hf.MAX_SHARD_BYTES))
    out = claim_output_dir(out_dir, INIT_OWNER, overwrite=overwrite)
    with OutputLock(out, is_dir=True, what="model directory"):
        torch.manual_seed(seed)
        model = build_model(cfg)
        return save_model_dir(model, out, tokenizer=tok, max_shard_bytes=hf.MAX_SHARD_BYTES)


def check_tokenizer_fits(model_dir: str | os.PathLike, cfg: PhiConfig | None = None) -> None:
    """Fail clearly if the directory's tokenizer has more tokens than the model's vocabulary."""
    cfg = cfg or read_config(model_dir)
    tok = load_tokenizer(model_dir)
    if len(tok) > cfg.vocab_size:
        raise Phi1Error(
            f"{model_dir}: the tokenizer has {len(tok)} tokens but the model's vocab_size is {cfg.vocab_size}; "
            "use the tokenizer the model was made with"
        )


def model_info(model_dir: str | os.PathLike) -> dict:
    """Shape, preset match, parameter counts, dtype and tokenizer of a model directory."""
    path = Path(model_dir)
    cfg = read_config(path)
    check_weights(path)  # header and size only: a truncated model.safetensors fails here
    from phi1.model.family import all_presets

    preset = None
    for name in all_presets():
        probe = config_from_preset(name)
        if family_of(probe) == family_of(cfg) and all(getattr(cfg, k) == getattr(probe, k) for k in
               ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "partial_rotary_factor")):
            preset = name
            break
    raw = read_json(path / "config.json", "model config", expect=dict)
    tok_info = None
    try:
        tok = load_tokenizer(path)
        tok_info = {"size": len(tok), "eos": tok.eos_token, "fingerprint": tok.fingerprint()}
    except Phi1Error as exc:
        tok_info = {"error": str(exc)}
    return {
        "path": str(path),
        "family": family_of(cfg).name,
        "preset": preset,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "heads": cfg.num_attention_heads,
        "head_dim": cfg.head_dim,
        "rotary_dim": cfg.rotary_dim,
        "vocab_size": cfg.vocab_size,
        "context": cfg.max_position_embeddings,
        "parameters": cfg.num_parameters(),
        "non_embedding_parameters": cfg.num_parameters(include_embeddings=False),
        "train_flops_per_token_at_context": cfg.flops_per_token(cfg.max_position_embeddings),
        "dtype": raw.get("dtype") or raw.get("torch_dtype"),
        "tokenizer": tok_info,
    }
