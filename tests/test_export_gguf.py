"""`phi1 export gguf` and `--quantize`: llama.cpp (llama-cpp-python) is the oracle for the exported files.

The llama.cpp tests skip, with the reason, where llama-cpp-python is not installed (it builds
llama.cpp at install: pip install -e '.[llamacpp]'); the error-path and quantizer tests always run.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from phi1.cli import main

# Measured on the tiny random test model (tests/conftest.py, held-out text = phi1's library problems,
# 512 tokens); the bounds leave a margin below what was measured (see docs/export.md).
Q8_0_MIN_TOP1 = 0.97   # measured 0.984
Q4_0_MIN_TOP1 = 0.75   # measured 0.824 (q4_k_m: 0.852)
INT8_MAX_LOSS_DELTA = 0.01  # solution loss (nats/token) over 20 problems, measured |delta| 0.00005

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n\tif i % 2:\n\t\tprint(i)\n",
    "x = {'a': 1, \"b\": [2, 3.5e-3, None]}\n",
    "    \n\n        # deeply indented comment\n",
    "import os, sys\nfrom pathlib import Path as P\n",
    "s = f\"{name!r:>10} {value:08.3f}\"\n",
    "lambda x: x**2 if x >= 0 else -x  # négatif, naïve café\n",
    "print('日本語のテキスト', '🙂')\n",
    "async def main():\n    await asyncio.sleep(0.1)\n",
    "try:\n    pass\nexcept (ValueError, KeyError) as exc:\n    raise RuntimeError from exc\n",
    "a  b   c    d     e" + " " * 40 + "f\n",
    "''' docstring with 'quotes' and \\\"escapes\\\" '''\n",
    "return [y for y in xs if y is not None and y != 0]\n",
    "0x1F + 0o17 + 0b1010 + 1_000_000 + 12345678901234567890\n",
    "<|endoftext|>def after_eos():\n    pass\n",
    "if __name__ == '__main__':\n    main()\r\n",
    "@dataclass(frozen=True)\nclass P:\n    x: int = 0\n",
    "\t\t\t\t\t\t\t\t\t\t\t\ttabs\n",
    "x=1;y=2;z=x<<y>>1&3|4^5~6\n",
]
PROMPTS = ["def fibonacci(n):\n", "import json\n\nclass Encoder:\n", "    for key, value in items:\n"]


def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install -e '.[llamacpp]'): "
                               "no llama.cpp to check the GGUF files against")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    _llama_cpp()
    from phi1.export.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {t: export_gguf(tiny_model_dir, out / f"tiny-{t}.gguf", t).path for t in ("f32", "q8_0", "q4_0")}


@pytest.fixture(scope="module")
def fp32(tiny_model_dir):
    from phi1.model import load_for_inference

    return load_for_inference(tiny_model_dir, device="cpu", dtype="float32")


def test_f32_greedy_and_tokens_equal_phi1(exported, fp32):
    from phi1.export import llamacpp
    from phi1.infer.generate import SamplingParams, generate_ids

    model, tok = fp32
    llm = llamacpp.open_gguf(exported["f32"], n_ctx=256)
    try:
        for s in SNIPPETS:
            assert llamacpp.tokenize(llm, s) == tok.encode(s), s
        prompts = [tok.encode(p) for p in PROMPTS]
        ours = generate_ids(model, prompts, SamplingParams(max_new_tokens=32), None)
        for p, (o, _) in zip(prompts, ours):
            assert len(o) == 32 and llamacpp.greedy(llm, p, 32) == o
    finally:
        llm.close()


@pytest.mark.parametrize("qtype,bound", [("q8_0", Q8_0_MIN_TOP1), ("q4_0", Q4_0_MIN_TOP1)])
def test_quantized_top1_agreement(exported, tiny_model_dir, qtype, bound):
    from phi1.export import llamacpp

    c = llamacpp.compare(tiny_model_dir, exported[qtype], llamacpp.held_out_text())
    assert c["tokens"] == 512
    assert c["top1_agreement"] >= bound, c
    assert exported[qtype].stat().st_size < exported["f32"].stat().st_size / (3 if qtype == "q8_0" else 4)


def test_cli_export_prints_size_and_loss_delta(tmp_path, tiny_model_dir, capsys):
    _llama_cpp()
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", "--model", str(tiny_model_dir), "--out", str(out), "--type", "f16"]) == 0
    text = capsys.readouterr().out
    assert f"{out.stat().st_size / 2**20:.2f} MiB" in text
    assert "delta +0.000" in text or "delta -0.000" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.gguf.lock", ".phi1-files.json", "m.gguf"]  # no temp


def _fails(capsys, tmp_path, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("phi1: error:"), err
    for w in words:
        assert w in err, err
    assert list(tmp_path.iterdir()) == []  # no file, no temp left


def test_an_existing_file_is_replaced_only_when_an_export_wrote_it(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "m.gguf"
    out.write_text("someone else's file\n")
    argv = ["export", "gguf", "--model", str(tiny_model_dir), "--out", str(out), "--type", "f32", "--no-check"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written by `phi1 export gguf`" in err and "--overwrite" in err, err
    assert out.read_text() == "someone else's file\n" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    # The model's own files are never an output, --overwrite or not (D5).
    weights = tiny_model_dir / "model.safetensors"
    before = weights.read_bytes()
    assert main(["export", "gguf", "--model", str(tiny_model_dir), "--out", str(weights), "--overwrite"]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err and weights.read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0
    first = out.read_bytes()
    assert first[:4] == b"GGUF"
    assert main(argv[:-2] + ["f16", "--no-check"]) == 0  # its own file: replaced without --overwrite
    assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_size < len(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.gguf.lock", ".phi1-files.json", "m.gguf"]


def test_bad_architecture_is_refused(tmp_path, tiny_model_dir, capsys):
    model = tmp_path.parent / (tmp_path.name + "-qkln")
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["qk_layernorm"] = True
    (model / "config.json").write_text(json.dumps(cfg))
    _fails(capsys, tmp_path, ["export", "gguf", "--model", str(model), "--out", str(tmp_path / "x.gguf")],
           "qk_layernorm", "phi2")


def test_inexpressible_tokenizer_is_refused(tmp_path, tiny_model_dir, capsys):
    model = tmp_path.parent / (tmp_path.name + "-nfkc")
    shutil.copytree(tiny_model_dir, model)
    tj = json.loads((model / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "NFKC"}
    (model / "tokenizer.json").write_text(json.dumps(tj))
    _fails(capsys, tmp_path, ["export", "gguf", "--model", str(model), "--out", str(tmp_path / "x.gguf")],
           "cannot be expressed in GGUF", "normalizer")
    tj["normalizer"] = None
    tj["pre_tokenizer"]["add_prefix_space"] = True
    (model / "tokenizer.json").write_text(json.dumps(tj))
    _fails(capsys, tmp_path, ["export", "gguf", "--model", str(model), "--out", str(tmp_path / "x.gguf")],
           "add_prefix_space")


def test_type_without_llama_quantize_is_refused(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    _fails(capsys, tmp_path, ["export", "gguf", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.gguf"),
                              "--type", "q4_k_m"], "q4_k_m", "llama-quantize")
    _fails(capsys, tmp_path, ["export", "gguf", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.gguf"),
                              "--type", "q3"], "--type q3", "q4_0")


def test_q4_k_m_through_llama_cpp_quantizer(tmp_path, tiny_model_dir):
    _llama_cpp()
    from phi1.export import llamacpp
    from phi1.export.gguf_export import export_gguf

    r = export_gguf(tiny_model_dir, tmp_path / "k.gguf", "q4_k_m")
    assert r.quantizer in ("llama_cpp", "llama-quantize")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.gguf.lock", ".phi1-files.json", "k.gguf"]  # no temp
    c = llamacpp.compare(tiny_model_dir, r.path, llamacpp.held_out_text())
    assert c["top1_agreement"] >= Q4_0_MIN_TOP1, c


# ---------------------------------------------------------------- --quantize int8 / int4


def test_quant_linear_matches_its_groups():
    import torch

    from phi1.model.quantize import QuantLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    x = torch.randn(3, 128)
    for mode, qmax in (("int8", 127), ("int4", 7)):
        q = QuantLinear(lin, mode, group_size=64)
        w = lin.weight.detach().reshape(48, 2, 64)
        step = (w.abs().amax(-1, keepdim=True) / qmax).expand_as(w).reshape(48, 128)
        err = (q.dequantize() - lin.weight.detach()).abs()
        assert (err <= step / 2 + 1e-6).all()
        assert torch.allclose(q(x), torch.nn.functional.linear(x, q.dequantize(), lin.bias), atol=1e-5)
    assert QuantLinear(lin, "int4").qweight.numel() == 48 * 128 // 2


def test_int8_solution_loss_delta_and_cli(tiny_model_dir, fp32, capsys):
    from phi1.eval.loss import solution_loss
    from phi1.model.quantize import quantize_model
    from phi1.model import load_for_inference

    model, tok = fp32
    base = solution_loss(model, tok, max_problems=20)
    q, _ = load_for_inference(tiny_model_dir, device="cpu", dtype="float32")
    assert quantize_model(q, "int8") == "phi1"
    assert abs(solution_loss(q, tok, max_problems=20) - base) <= INT8_MAX_LOSS_DELTA
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "def f(x):", "--max-new-tokens", "4",
                 "--device", "cpu", "--quantize", "int8"]) == 0
    assert main(["model", "info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    mem = next(line for line in out.splitlines() if line.strip().startswith("memory"))
    nums = [float(w) for w in mem.replace(",", " ").split() if w.replace(".", "").isdigit()]
    assert len(nums) == 4 and nums[0] > nums[1] > nums[2] > nums[3], mem  # fp32 > bf16 > int8 > int4


def test_phi3_exports_as_llama_cpp_phi3(tmp_path, tokenizer_dir):
    """phi-3 (RMSNorm, fused gate/up, LongRoPE): llama.cpp's logits equal phi1's with the short factors
    (100 tokens, under original_max_position_embeddings = 128) and the long ones (256 tokens)."""
    _llama_cpp()
    from phi1.export import llamacpp
    from phi1.export.gguf_export import export_gguf
    from phi1.model.create import init_model_dir

    model_dir = init_model_dir("tiny3", tokenizer_dir, tmp_path / "tiny3", seed=0)
    r = export_gguf(model_dir, tmp_path / "tiny3.gguf", "f32")
    assert r.arch == "phi3"
    for n in (100, 256):
        c = llamacpp.compare(model_dir, r.path, llamacpp.held_out_text(), max_tokens=n)
        assert c["tokens"] == n and c["top1_agreement"] == 1.0 and abs(c["delta"]) < 1e-4, c
