"""Issue 17, training side: per-block compile, eval outside the compiled graphs, freed logits,
FSDP2 mixed precision and DDP buffers (CPU: aot_eager counting backend, gloo via torchrun)."""

from __future__ import annotations

import functools
import json
import sys
import weakref

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from phi1.model.family import build_model, config_from_preset
from phi1.train import trainer as trainer_mod
from phi1.train.config import load_config
from phi1.train.distributed import World, eager_modules, prepare_model
from test_train_support import micro_config, run, stdlib_shards  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(stdlib_shards):
    return stdlib_shards


def _pair(layers: int):
    cfg = config_from_preset("micro").replace(num_hidden_layers=layers)
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(0)
    return a, build_model(cfg)


@pytest.mark.parametrize("layers", [2, 5])
def test_per_block_compile_is_one_graph_and_matches_eager(layers):
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    model, ref = _pair(layers)
    prepare_model(model, World(), activation_checkpointing=False, compile=True, compile_kw={"backend": cnt})
    x = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    loss = model(x, x)[1]
    loss.backward()
    ref_loss = ref(x, x)[1]
    ref_loss.backward()
    assert cnt.frame_count == 1, cnt.frame_count  # one block graph, whatever the depth
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n
    model.eval()
    with torch.no_grad(), eager_modules(model):  # eval through the plain modules: nothing new compiled
        out = model(x[:1, :7])
    assert cnt.frame_count == 1 and torch.allclose(out, ref.eval()(x[:1, :7]), atol=1e-5)
    with torch.no_grad():  # the control: eval through the compiled blocks adds a graph
        model(x[:1, :7])
    assert cnt.frame_count == 2


def test_compiled_training_with_eval_compiles_once(tmp_path, shards, tokenizer_dir, monkeypatch):
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(trainer_mod, "prepare_model", functools.partial(prepare_model, compile_kw={"backend": cnt}))
    run_dir = tmp_path / "compiled"
    cfg = load_config(data=micro_config(
        run_dir, shards, tokenizer_dir, train={"max_steps": 4, "compile": True},
        eval={"interval": 2, "callback": "test_train_support:make_scripted_callback",
              "callback_args": {"scores": [0.1, 0.2]}, "best_metric": "val_loss"},
        checkpoint={"interval": 0}))
    result = trainer_mod.train(cfg)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result["step"] == 4 and [r["score"] for r in recs if "score" in r] == [0.1, 0.2]
    assert len([r for r in recs if "val_loss" in r]) == 2
    assert cnt.frame_count == 1, cnt.frame_count  # val loss and the callback's forward compiled nothing
    assert all(r["tflops_per_gpu"] > 0 for r in recs if "loss" in r)


def test_logits_are_freed_before_the_next_micro_step(tmp_path, shards, tokenizer_dir):
    run_dir = tmp_path / "free"
    cfg = load_config(data=micro_config(run_dir, shards, tokenizer_dir,
                                        train={"max_steps": 1, "micro_batch": 2, "global_batch": 8},
                                        eval={"interval": 0}, checkpoint={"interval": 0}))
    t = trainer_mod.Trainer(cfg, World())
    try:
        refs, alive = [], []
        t.model.lm_head.register_forward_hook(lambda mod, inp, out: refs.append(weakref.ref(out)))
        t.model.register_forward_pre_hook(lambda mod, inp: alive.append(any(r() is not None for r in refs)))
        t.train_step()
        assert len(refs) == 4 and alive == [False] * 4, alive
    finally:
        t.release()


DIST_SCRIPT = r'''
import json, os, sys
import torch
from phi1.model.family import build_model, config_from_preset
from phi1.train.distributed import close_world, init_world, prepare_model
w = init_world("cpu", sys.argv[1])
cfg = config_from_preset("micro")
torch.manual_seed(0)
model = build_model(cfg)
out = {}
if w.strategy == "ddp":
    if w.rank == 1:
        model.rope_cos.add_(1.0)  # a rank-local buffer value: a broadcast would overwrite it
    mine = model.rope_cos.clone()
    ddp = prepare_model(model, w, activation_checkpointing=False, compile=False)
    x = torch.randint(0, 512, (2, 16))
    ddp(x, x)[1].backward()
    out = {"broadcast_buffers": ddp.broadcast_buffers, "kept": bool(torch.equal(model.rope_cos, mine))}
else:
    fs = prepare_model(model, w, activation_checkpointing=False, compile=False, precision="bf16")
    seen = []
    fs.layers[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(str(m.weight.dtype)))
    x = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fs(x, x)[1]
    loss.backward()
    pols = [blk._get_fsdp_state()._mp_policy for blk in list(fs.layers) + [fs]]
    out = {"param": sorted({str(p.param_dtype) for p in pols}), "reduce": sorted({str(p.reduce_dtype) for p in pols}),
           "seen": seen, "grad": str(fs.layers[0].mlp.fc1.weight.grad.dtype), "loss": float(loss)}
with open(os.path.join(sys.argv[2], f"rank{w.rank}.json"), "w") as f:
    json.dump(out, f)
close_world(w)
'''


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_distributed_wrappers(tmp_path, strategy):
    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         strategy, str(tmp_path)], timeout=180)
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if strategy == "ddp":
        assert all(r == {"broadcast_buffers": False, "kept": True} for r in res), res
    else:
        for r in res:
            assert r["param"] == ["torch.bfloat16"] and r["reduce"] == ["torch.float32"], r
            assert r["seen"] == ["torch.bfloat16"] and r["grad"] == "torch.float32", r  # sharded grads stay fp32
        assert res[0]["loss"] == res[1]["loss"]
