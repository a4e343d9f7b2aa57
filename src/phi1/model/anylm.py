"""Any causal LM that `transformers.AutoModelForCausalLM` loads, behind the small interface phi1's
evaluation uses: `model(ids) -> logits`, `.config.max_position_embeddings`, `.eval()/.train()`,
`.parameters()`, and batched generation with phi1's stop sequences and sampling settings.

phi and phi-3 directories keep phi1's own engine (`phi1.model.load_for_inference`); everything else
(GPT-2, Llama, CodeGen, Qwen2, StarCoder2, ...: the baselines of the paper's table) comes here, so the
same harness scores them. Prompts get the tokenizer's own special prefix (Llama's BOS), as
`AutoTokenizer(prompt)` would add it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch

from phi1.errors import Phi1Error

PHI_TYPES = ("phi", "phi3", "phi-msft", "mixformer-sequential")


def model_type_of(model_dir: str | os.PathLike) -> str | None:
    cfg = Path(model_dir) / "config.json"
    try:
        return json.loads(cfg.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_phi_dir(model_dir: str | os.PathLike) -> bool:
    """Whether phi1's own engine loads this directory (a missing or unreadable config.json: let that
    loader say what is wrong)."""
    mt = model_type_of(model_dir)
    return mt is None or mt in PHI_TYPES


def _context_of(hf_config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
        v = getattr(hf_config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


class HFCausalLM:
    """A transformers causal LM seen through the calls phi1's eval makes."""

    def __init__(self, hf_model, prefix_ids: Sequence[int] = (), source: str = ""):
        self.hf = hf_model
        self.prefix_ids = list(prefix_ids)
        self.source = source
        self.config = SimpleNamespace(max_position_embeddings=_context_of(hf_model.config),
                                      model_type=getattr(hf_model.config, "model_type", None))

    # -- what a phi model offers -----------------------------------------------------------
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits

    def parameters(self):
        return self.hf.parameters()

    @property
    def training(self) -> bool:
        return self.hf.training

    def eval(self):
        self.hf.eval()
        return self

    def train(self, mode: bool = True):
        self.hf.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float, top_p: float,
                     top_k: int, eos_id: int | None, stop_check=None, seed: int | None = None
                     ) -> list[tuple[list[int], str]]:
        """One batch, left-padded, through transformers' `generate`; (new ids, finish_reason) per row.
        `stop_check(row, new_ids)` ends a row when a stop sequence appeared (the caller cuts the text)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        ctx = self.config.max_position_embeddings
        lens = [len(p) for p in prompts]
        if min(lens) == 0:
            raise Phi1Error("a prompt encodes to zero tokens; give at least one token")
        T0 = max(lens)
        if T0 >= ctx:
            raise Phi1Error(f"prompt has {T0} tokens, the model's context is {ctx}; shorten the prompt")
        max_new = min(max_new_tokens, ctx - T0)
        pad = eos_id if eos_id is not None else 0
        dev = self.device
        ids = torch.full((len(prompts), T0), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), T0), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, T0 - len(p):] = torch.tensor(p)
            mask[r, T0 - len(p):] = 1
        stopped = [False] * len(prompts)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for r in range(input_ids.shape[0]):
                    new = input_ids[r, T0:].tolist()
                    if eos_id is not None and eos_id in new:
                        done[r] = True
                    elif stop_check is not None and stop_check(r, new):
                        stopped[r] = True
                        done[r] = True
                return done

        if seed is not None:
            torch.manual_seed(seed)
        sample = temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=max_new, pad_token_id=pad,
                      stopping_criteria=StoppingCriteriaList([_Stop()]))
        if eos_id is not None:
            kwargs["eos_token_id"] = eos_id
        if sample:
            kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k) if top_k else 0)
        else:  # greedy: no sampling knobs, so transformers does not warn about unused ones
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.hf.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kwargs)
        results = []
        for r in range(len(prompts)):
            new = out[r, T0:].tolist()
            if eos_id is not None and eos_id in new:
                results.append((new[: new.index(eos_id)], "stop"))
            elif stopped[r]:
                results.append((new, "stop"))
            else:
                results.append((new[:max_new], "length"))
        return results


def load_any_causal_lm(model_dir: str | os.PathLike, tokenizer, device="cpu", dtype: torch.dtype | None = None
                       ) -> HFCausalLM:
    """Load a non-phi model directory with AutoModelForCausalLM (local files only)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise Phi1Error(f"{model_dir}: model_type {model_type_of(model_dir)!r} needs transformers; "
                        "install it (pip install 'phi1[hf]')") from None
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Phi1Error(f"{model_dir}: transformers cannot load it as a causal LM ({first})") from None
    hf.to(device)
    hf.eval()
    return HFCausalLM(hf, prefix_ids=special_prefix(tokenizer), source=str(model_dir))


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer's own template puts before a text (Llama: BOS; GPT-2, Qwen2: none)."""
    probe = "def f():"
    plain = tokenizer.backend.encode(probe, add_special_tokens=False).ids
    full = tokenizer.backend.encode(probe, add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i]
    return []
