"""The fixed-shape decode step the GPU path compiles, checked on CPU (issue 17).

The compiled step must update the KV cache in place (no full-cache temporary, no copy back), attend
over a length bucket rather than the whole cache, compile once per bucket (the server warms every
bucket before it listens), and give the eager path's greedy tokens. Also: the chunked cross-entropy
the training forward uses equals F.cross_entropy, value and gradient.
"""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from phi1.infer.decode import DecodeStep, kv_buckets  # noqa: E402
from phi1.model.phi.config import PhiConfig  # noqa: E402
from phi1.model.losses import chunked_cross_entropy
from phi1.model.phi.network import PhiForCausalLM  # noqa: E402

CACHE = 1024  # slots: buckets 256, 512, 768, 1024


def _model(layers: int = 2, vocab: int = 512, ctx: int = CACHE, batch: int = 2) -> PhiForCausalLM:
    torch.manual_seed(0)
    cfg = PhiConfig.from_preset("micro", max_position_embeddings=ctx, num_hidden_layers=layers, vocab_size=vocab)
    m = PhiForCausalLM(cfg).eval()
    m.setup_caches(batch, ctx)
    return m


class Counting:
    """A torch.compile backend that runs the captured graph as is and counts compilations."""

    def __init__(self):
        self.count = 0

    def __call__(self, gm, example_inputs):
        self.count += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Graphs are cached on _step_full_cache's code object: each test starts from none.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---- 1. no full-cache temporary in the generated code ------------------------------------------

_ALLOC = re.compile(r"empty_strided(?:_cpu|_cuda)?\(\(([^)]*)\)")


def full_cache_traffic(code: str, cache_numel: int) -> list[str]:
    """What in inductor's generated code moves a whole cache: buffers of its size, copy kernels/calls."""
    found = []
    for shape in _ALLOC.findall(code):
        dims = [int(d) for d in shape.replace(" ", "").split(",") if d]
        if math.prod(dims) == cache_numel:
            found.append(f"buffer ({shape})")
    found += sorted(set(re.findall(r"\bcpp_fused\w*copy_\w*|\btriton\w*copy_\w*|\.copy_\(", code)))
    return found


def _scatter_update(cache_k: torch.Tensor, input_pos: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    # The old KVCache.update: scatter_ into a slice of the cache.
    B, H, T, D = k.shape
    cache_k[:B].scatter_(2, input_pos[:, None, :, None].expand(B, H, T, D), k)
    return cache_k[:B]


def test_compiled_step_updates_the_cache_in_place():
    from torch._inductor.utils import run_and_get_code

    m = _model(layers=1)
    cache = m.layers[0].attn.kv_cache
    numel = cache.k.numel()
    step = DecodeStep(m, mode="compiled", backend="inductor")
    tok, pos = torch.tensor([7, 9]), torch.tensor([3, 5])
    with torch.inference_mode():
        ref = _step_eager(m, tok, pos)
        out, codes = run_and_get_code(step, tok, pos, 6)
    code = "\n".join(codes)
    assert _ALLOC.search(code), "no buffer allocation found: the generated code's format changed"
    assert full_cache_traffic(code, numel) == []
    torch.testing.assert_close(out, ref)
    # The check finds what the old scatter_ update compiled to: a cache-sized buffer copied back.
    kc = torch.zeros_like(cache.k)
    f = torch.compile(_scatter_update, backend="inductor", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        _, ref_codes = run_and_get_code(f, kc, pos[:, None], torch.randn(2, kc.shape[1], 1, kc.shape[3]))
    assert any(s.startswith("buffer") for s in full_cache_traffic("\n".join(ref_codes), numel))


def _step_eager(m, tok, pos):
    return m(tok[:, None], input_pos=pos[:, None], kv_len=int(pos.max()) + 1)[:, -1]


# ---- 2. attended length is the bucket; greedy ids equal eager -----------------------------------

def test_kv_buckets():
    assert kv_buckets(1024) == [256, 512, 768, 1024]
    assert kv_buckets(256) == [256] and kv_buckets(100) == [100]
    assert kv_buckets(1000) == [256, 512, 768, 1000]
    big = kv_buckets(131072)
    assert len(big) == 8 and big[-1] == 131072 and all(b % 256 == 0 for b in big)
    assert len(kv_buckets(5000)) <= 8 and kv_buckets(5000)[-1] == 5000


def _greedy(m, prompts, step, n=12):
    from phi1.infer.generate import SamplingParams, generate_ids

    m._phi1_decode_step = step  # what decode_step_for reuses
    try:
        return generate_ids(m, prompts, SamplingParams(max_new_tokens=n), eos_id=None, compile=step.compiled)
    finally:
        m._phi1_decode_step = None


def test_step_attends_over_the_bucket_and_matches_eager(monkeypatch):
    m = _model()
    # Two rows; the long one crosses from bucket 256 into 512 while generating.
    prompts = [list(range(1, 6)), [int(x) for x in torch.randint(1, 500, (250,))]]
    eager = _greedy(m, prompts, DecodeStep(m, mode="eager"))

    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, *a, **kw):
        if q.shape[-2] == 1:  # decode steps (prefill attends over its prompt)
            seen.append(k.shape[-2])
        return sdpa(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    full = _greedy(m, prompts, DecodeStep(m, mode="full"))
    monkeypatch.undo()
    layers = len(m.layers)
    # kv_len = 250 + step + 1 for steps 0..10: 256 up to kv_len 256, then 512; never the 1024 cache.
    want = [256 if 250 + s + 1 <= 256 else 512 for s in range(11)]
    assert seen == [b for b in want for _ in range(layers)]
    assert full == eager

    compiled = _greedy(m, prompts, DecodeStep(m, mode="compiled", backend="aot_eager"))
    assert compiled == eager


# ---- 3. one compilation per bucket ------------------------------------------------------------

def test_compiles_once_per_bucket():
    m = _model(layers=1)
    be = Counting()
    step = DecodeStep(m, mode="compiled", backend=be)
    tok = torch.tensor([3, 4])
    with torch.inference_mode():
        for kv in range(1, 6):  # bucket 256
            step(tok, torch.tensor([kv - 1, kv - 1]), kv)
        assert be.count == 1
        for kv in (257, 258, 300, 512):  # bucket 512: once more
            step(tok, torch.tensor([kv - 1, 0]), kv)
        assert be.count == 2
        for kv in (6, 256, 400):  # both graphs reused, same batch size
            step(tok, torch.tensor([kv - 1, 1]), kv)
        assert be.count == 2
        step(tok, torch.tensor([900, 2]), 901)  # bucket 1024
        assert be.count == 3


# ---- 4. chunked cross-entropy --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_equals_f_cross_entropy(dtype):
    torch.manual_seed(1)
    N, V = 37, 50
    logits = (torch.randn(N, V) * 3).to(dtype)
    targets = torch.randint(0, V, (N,))
    targets[[0, 5, 6, 36]] = -100
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    loss = chunked_cross_entropy(a, targets, chunk_elements=4 * V)  # 4 rows a chunk: 10 chunks
    ref = F.cross_entropy(b.float(), targets, ignore_index=-100)
    (loss * 2.5).backward()
    (ref * 2.5).backward()
    tol = {} if dtype == torch.float32 else dict(atol=1e-2, rtol=2e-2)
    torch.testing.assert_close(loss, ref, **({} if dtype == torch.float32 else dict(atol=1e-5, rtol=1e-5)))
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad, b.grad, **tol)
    assert (a.grad[[0, 5, 6, 36]] == 0).all()


def test_model_forward_loss_uses_the_chunked_loss():
    m = _model(layers=1)
    m.train()
    x = torch.randint(0, 512, (2, 9))
    y = x.roll(-1, 1)
    y[:, -1] = -100
    logits, loss = m(x, y)
    ref = F.cross_entropy(logits.float().view(-1, 512), y.view(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert m.lm_head.weight.grad is not None and m.lm_head.weight.grad.abs().sum() > 0


# ---- 5. Engine.warmup compiles every bucket before serving --------------------------------------

def test_engine_warmup_compiles_every_bucket_then_serving_adds_none(tokenizer_dir):
    from phi1.infer.engine import Delta, Engine, SeqParams, Sequence
    from phi1.infer.generate import generate
    from phi1.tokenizer import load_tokenizer

    from serve_support import Collector

    tok = load_tokenizer(tokenizer_dir)
    m = _model(layers=1, vocab=1024)
    be = Counting()
    engine = Engine(m, tok, max_batch=2, step_mode="compiled", compile_backend=be)
    assert engine.warmup() == len(kv_buckets(CACHE)) == be.count == 4
    engine.start()
    try:
        sink = Collector()
        prompt = "def f(x):\n    return"
        engine.submit([Sequence(tok.encode(prompt), SeqParams(8), sink)])
        assert sink.done.wait(60)
    finally:
        engine.shutdown()
    assert isinstance(sink.events[-1], Delta), sink.events[-1]
    assert be.count == 4  # the request ran on the warmed graphs
    ref = generate(m, tok, [prompt], max_new_tokens=8)[0]
    assert (sink.text, sink.events[-1].completion_tokens) == (ref.text, ref.completion_tokens)
