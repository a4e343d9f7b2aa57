"""The chunked cross-entropy's gradients against F.cross_entropy on upcast logits (issue 27, part 1).

fp16 training multiplies the loss by the GradScaler's scale (2**16 at the start) before backward. The
logits' gradient, softmax - onehot over n_valid rows, is about 1/(V * N): formed in fp32 and cast to fp16
before that scale is applied, most of it underflows to zero; casting the scale itself to fp16 overflows.
Each case here is an lm_head (its output in the training dtype) followed by the loss, backward at a loss
scale, and compared with an fp64 oracle: the zeroed fraction of the logits' gradient and the relative
errors of the hidden states' and the head bias' gradients must be those of the standard path
F.cross_entropy(logits.float()) (the path transformers and nanoGPT use), up to rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phi1.model.losses import chunked_cross_entropy

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SIZES = [(8192, 4096), (4096, 1024)]  # (N tokens, V vocabulary): N*V where fp16's 2**-24 floor bites
SCALES = [1.0, 2.0**15, 2.0**16, 2.0**20]


def _case(N: int, V: int, seed: int = 0, d: int = 32):
    g = torch.Generator().manual_seed(seed + N + V)
    h = torch.randn(N, d, generator=g)
    W = torch.randn(V, d, generator=g) * 0.02   # init-like logits: std ~ 0.1
    b = torch.zeros(V)
    t = torch.randint(0, V, (N,), generator=g)
    t[::17] = -100                              # ignored positions (SFT masking, padding)
    return h, W, b, t


def _grads(loss_fn, h, W, b, t, dtype, scales):
    """{scale: d(loss)/d(logits, h, b) unscaled, in fp64} from one forward; loss_fn None: the fp64 oracle."""
    h, W, b = (x.clone().requires_grad_() for x in (h, W, b))
    if loss_fn is None:
        logits = h.double() @ W.double().T + b.double()
        loss = F.cross_entropy(logits, t, ignore_index=-100)
    else:
        # the head's output in the training dtype (a cast, not autocast: CPU fp16 matmuls are slow,
        # and what is under test is the loss's gradient w.r.t. these logits and what flows on from it)
        logits = F.linear(h, W, b).to(dtype)
        loss = loss_fn(logits, t)
    out = {}
    for scale in scales:
        grads = torch.autograd.grad(loss * scale, (logits, h, b), retain_graph=True)
        gl, gh, gb = grads  # the logits' gradient stays as it is (only its zeros are counted)
        out[scale] = (loss.detach().double(), gl, gh.double() / scale, gb.double() / scale)
    return out


def _standard(logits, t):
    return F.cross_entropy(logits.float(), t, ignore_index=-100)


def _report(got, ref):
    loss, gl, gh, gb = got
    rloss, rl, rh, rb = ref
    nz = rl != 0
    return {
        "finite": bool(torch.isfinite(gh).all() and torch.isfinite(gb).all()),
        "zeroed": ((gl == 0) & nz).sum().item() / nz.sum().item(),
        "h": ((gh - rh).norm() / rh.norm()).item(),
        "bias": ((gb - rb).norm() / rb.norm()).item(),
        "loss": abs(loss - rloss).item(),
    }


@pytest.mark.parametrize("N,V,dtypes", [(*SIZES[0], ("fp16",)), (*SIZES[1], tuple(DTYPES))])
def test_chunked_ce_gradients_match_the_standard_path(N, V, dtypes):
    """fp16 at both sizes (the larger one is where the bug zeroed a third of the gradient at 2**15 and
    overflowed at 2**16); bf16 and fp32 at the smaller one."""
    h, W, b, t = _case(N, V)
    ref = _grads(None, h, W, b, t, None, [1.0])[1.0]  # unscaled fp64 gradients do not depend on the scale
    for name in dtypes:
        dtype = DTYPES[name]
        std = _grads(_standard, h, W, b, t, dtype, SCALES)
        # small chunks, so every case crosses several chunk boundaries
        ours = _grads(lambda x, y: chunked_cross_entropy(x, y, chunk_elements=V * 300), h, W, b, t, dtype, SCALES)
        for scale in SCALES:
            s, o = _report(std[scale], ref), _report(ours[scale], ref)
            where = f"N={N} V={V} scale={scale:g} {name}: ours {o} standard {s}"
            assert o["finite"] and s["finite"], where
            assert o["zeroed"] <= s["zeroed"] + 1e-4, where
            for key in ("h", "bias", "loss"):
                assert o[key] <= 1.05 * s[key] + 1e-6, where
            if name != "fp16" or scale >= 2.0**15:
                # with the loss scale applied first, fp16 keeps the gradient (the bug zeroed 97.7% of it)
                assert o["zeroed"] < 0.01 and o["bias"] < 5e-3, where


def test_chunked_ce_without_grad_and_with_every_row_ignored_match_cross_entropy():
    logits = torch.randn(10, 7)
    t = torch.randint(0, 7, (10,))
    with torch.no_grad():
        assert torch.allclose(chunked_cross_entropy(logits, t, chunk_elements=14), F.cross_entropy(logits, t))
    none = torch.full((10,), -100)
    x = logits.clone().requires_grad_()
    ours = chunked_cross_entropy(x, none)
    ours.backward()
    assert torch.isnan(ours) and torch.isnan(F.cross_entropy(logits, none, ignore_index=-100))


def _saved_bytes(loss_fn, logits, t) -> int:
    """Bytes autograd keeps for backward beyond the logits themselves (which the head's output holds anyway)."""
    seen: list[torch.Tensor] = []

    def pack(x):
        seen.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss_fn(logits, t)
    storages = {}
    for x in seen:
        if x.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return sum(storages.values())


def test_chunked_ce_keeps_only_per_row_state_for_backward():
    N, V = 2048, 4096
    logits = torch.randn(N, V, dtype=torch.bfloat16).requires_grad_()
    t = torch.randint(0, V, (N,))
    ours = _saved_bytes(chunked_cross_entropy, logits, t)
    standard = _saved_bytes(_standard, logits, t)
    assert ours <= 32 * N, ours                 # logsumexp, targets and mask: a few bytes per row
    assert standard >= 4 * N * V, standard      # the standard path keeps an fp32 (N, V) log-softmax
