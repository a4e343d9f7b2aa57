"""A prefill from position 0 runs SDPA with is_causal (flash attention on GPU), not an explicit mask
(issue 27, part 4), and gives the masked path's logits and cache, for both families."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phi1.infer.decode import prefill
from phi1.model.family import build_model, config_from_preset


def _calls(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((attn_mask is None, kw.get("is_causal", False), q.shape[-2], k.shape[-2]))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def test_prefill_is_causal_without_a_mask_and_matches_the_masked_path(monkeypatch):
    for preset, window in (("micro", None), ("tiny3", None), ("tiny3", 5)):
        cfg = config_from_preset(preset)
        if window is not None:
            cfg = cfg.replace(sliding_window=window)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15]]
        seen = _calls(monkeypatch)
        with torch.no_grad():
            model.setup_caches(2, 32, dtype=torch.float32)
            got = prefill(model, prompts, pad=0)
            k_fast = model.layers[0].attn.kv_cache.k.clone()
            T = 8
            pos = torch.arange(T)[None].expand(2, T)
            tokens = torch.tensor([prompts[0], prompts[1] + [0] * 5])
            model.setup_caches(2, 32, dtype=torch.float32)
            h = model.hidden_states(tokens, input_pos=pos, kv_len=T)  # the explicit-mask path
            want = model.lm_head(h[torch.arange(2), torch.tensor([7, 2])])
        fast = seen[: len(model.layers)]
        if window is None:
            assert all(no_mask and causal and q == k == T for no_mask, causal, q, k in fast), (preset, fast)
        else:  # longer than the sliding window: the window mask stays
            assert not any(no_mask for no_mask, *_ in fast), fast
        assert all(not no_mask for no_mask, *_ in seen[len(model.layers):])
        assert torch.allclose(got, want, atol=1e-5), (preset, window)
        assert torch.allclose(k_fast, model.layers[0].attn.kv_cache.k, atol=1e-6)
        monkeypatch.undo()
