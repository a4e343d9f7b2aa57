"""The recipes give the papers' models: codegen's tokenizer and the preset's vocab, the finetune from
phi-1-base (RUN@STEP), checkpoint selection off the test set, the phi-1.5 recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import phi1
from phi1.errors import ConfigError, Phi1Error
from phi1.tokenizer import PAPER_TOKENIZER, load_tokenizer, resolve_tokenizer, whitespace_tokens
from phi1.train.config import load_config
from test_train_support import micro_config, pack_stdlib  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(phi1.__file__).parent / "recipes"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer_dir, stdlib_slice) -> Path:
    return pack_stdlib(tokenizer_dir, stdlib_slice, tmp_path_factory.mktemp("packed"))


def codegen_style_tokenizer(out: Path, texts: list[str], merges: int = 600) -> Path:
    """codegen-350M-mono's file layout at a small size: GPT-2 byte-level BPE vocab.json + merges.txt with
    <|endoftext|> last, the whitespace-run tokens in added_tokens.json, a CodeGenTokenizer config."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=merges, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out))  # vocab.json + merges.txt, as GPT-2 and codegen ship them
    vocab = json.loads((out / "vocab.json").read_text())
    vocab["<|endoftext|>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    added = {w: len(vocab) + i for i, w in enumerate(whitespace_tokens())}
    (out / "added_tokens.json").write_text(json.dumps(added))
    special = {k: "<|endoftext|>" for k in ("bos_token", "eos_token", "unk_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CodeGenTokenizer", **special,
                                                           "add_prefix_space": False, "model_max_length": 2048}))
    return out


@pytest.fixture(scope="module")
def codegen_dir(tmp_path_factory, stdlib_slice) -> Path:
    texts = [p.read_text() for p in sorted(stdlib_slice[0].glob("*.py"))]
    return codegen_style_tokenizer(tmp_path_factory.mktemp("codegen"), texts)


# ---- 1. the paper's tokenizer --------------------------------------------------------------------

def test_codegen_layout_gives_transformers_ids(codegen_dir, stdlib_slice):
    from transformers import AutoTokenizer

    ours, theirs = load_tokenizer(codegen_dir), AutoTokenizer.from_pretrained(str(codegen_dir))
    assert len(ours) == len(theirs) == 600 + 1 + len(whitespace_tokens())
    texts = [p.read_text() for p in sorted(stdlib_slice[1].glob("*.py"))[:6]]
    texts += ["def f(x):\n        return x  # eight spaces\n\t\tpass\n" + " " * 40 + "deep<|endoftext|>héllo wörld 😀\n",
              "<|endoftext|>", "a\r\n  b\t\t\tc"]
    for t in texts:
        assert ours.encode(t) == theirs.encode(t, add_special_tokens=False), t[:60]
    assert ours.eos_id == theirs.eos_token_id == 600 and ours.encode("<|endoftext|>") == [600]
    assert ours.encode(" " * 31) == [theirs.convert_tokens_to_ids(" " * 31)] == [601]
    assert ours.decode(ours.encode(texts[0])) == texts[0]


def test_preset_vocab_wins_over_padding(codegen_dir, tokenizer_dir, tmp_path):
    from phi1.model.family import preset_vocab_size
    from phi1.model.phi.config import PRESETS
    from phi1.train.setup import initial_model_config, load_tokenizer_for

    tok = load_tokenizer(codegen_dir)
    for preset in ("phi-1", "phi-1-small", "phi-1.5", "phi-2"):
        cfg = load_config(data=micro_config(tmp_path / "r", tmp_path, codegen_dir, model={"init": preset},
                                            data={"train": [str(tmp_path)], "seq_len": 2048}))
        assert initial_model_config(cfg, load_tokenizer_for(cfg)).vocab_size == PRESETS[preset]["vocab_size"] == 51200
    assert preset_vocab_size("phi-1", 50295) == 51200  # codegen-350M-mono's size; padding alone would give 50304
    assert preset_vocab_size("micro", len(tok)) == 640 and preset_vocab_size("tiny", 1024) == 1024
    with pytest.raises(ConfigError, match="51201 tokens do not fit preset 'phi-1'"):
        preset_vocab_size("phi-1", 51201)
    # `phi1 model init` agrees with the trainer (micro: the tokenizer's size padded to 64)
    from phi1.model.create import init_model_dir
    from phi1.model.hf import read_config

    init_model_dir("micro", codegen_dir, tmp_path / "m")
    assert read_config(tmp_path / "m").vocab_size == 640


def test_hub_name_resolves_from_the_cache_or_says_how_to_get_it(codegen_dir, tmp_path):
    cache = tmp_path / "hub"
    with pytest.raises(Phi1Error) as err:
        resolve_tokenizer(PAPER_TOKENIZER, "tokenizer.path", cache_dir=str(cache))
    msg = str(err.value)
    assert msg.startswith(f"tokenizer.path = '{PAPER_TOKENIZER}': not a local directory and not in the Hugging Face "
                          f"cache ({cache})") and f"hf download {PAPER_TOKENIZER} --include '*.json' '*.txt'" in msg
    # a cached snapshot (the hub cache's layout) is found without network
    snap = cache / "models--Salesforce--codegen-350M-mono" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in codegen_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--Salesforce--codegen-350M-mono" / "refs").mkdir()
    (cache / "models--Salesforce--codegen-350M-mono" / "refs" / "main").write_text("abc123")
    assert resolve_tokenizer(PAPER_TOKENIZER, cache_dir=str(cache)) == snap
    # the CLI: one line, exit 2 (the environment's own cache holds no codegen)
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "phi1", "model", "init", "--preset", "micro", "--tokenizer",
                        PAPER_TOKENIZER, "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "hf download" in r.stderr, r.stderr


def test_phi1_recipes_use_the_paper_tokenizer():
    from phi1.demo.config import load_demo_config

    for name in ("phi-1", "phi-1-small"):
        assert load_demo_config(RECIPES / f"{name}.yaml").tokenizer.path == PAPER_TOKENIZER
    for name in ("phi-1-pretrain", "phi-1-small-pretrain", "phi-1.5"):
        assert load_config(RECIPES / f"{name}.yaml").model.tokenizer == PAPER_TOKENIZER


def test_demo_with_the_paper_tokenizer_fails_first_when_it_is_missing(tmp_path, monkeypatch):
    from phi1.demo.config import load_demo_config
    from phi1.demo.pipeline import run_demo

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the judge's settings pass: the tokenizer is what is missing
    with pytest.raises(Phi1Error, match=r"tokenizer\.path = 'Salesforce/codegen-350M-mono': not a local directory"):
        run_demo(load_demo_config(RECIPES / "phi-1.yaml"), tmp_path / "run", endpoint="http://127.0.0.1:9/v1",
                 log=lambda *a: None)
    assert not (tmp_path / "run" / "data").exists()  # before any stage ran


# ---- 2. the finetune starts from phi-1-base ------------------------------------------------------

def test_finetune_from_run_at_step(tmp_path, tokenizer_dir, shards):
    from phi1.demo.pipeline import checkpoint_model_dir, finetune_init
    from phi1.model.hf import load_model_dir
    from phi1.train.setup import build_model, init_source
    from phi1.train.trainer import train

    pre = tmp_path / "runs" / "pre"
    train(load_config(data=micro_config(pre, shards, tokenizer_dir, train={"max_steps": 6}, eval={"interval": 0},
                                        checkpoint={"interval": 2, "keep_last_k": 1, "keep_steps": [4]})))
    base = pre / "checkpoints" / "step-4" / "model"
    assert sorted(p.name for p in (pre / "checkpoints").glob("step-*")) == ["step-4", "step-6"]
    ft = load_config(data=micro_config(tmp_path / "runs" / "ft", shards, tokenizer_dir,
                                       model={"init": f"{pre}@4", "tokenizer": None}, train={"max_steps": 2}))
    assert init_source(ft) == str(base)
    model = build_model(ft, load_model_dir(base).config, None)
    want = load_model_dir(base, dtype=torch.float32).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())  # step 4's weights, not step 6's
    assert train(ft)["step"] == 2
    # a step that was not kept: one line naming the steps the run has
    bad = load_config(data=micro_config(tmp_path / "runs" / "ft2", shards, tokenizer_dir, model={"init": f"{pre}@5"}))
    with pytest.raises(Phi1Error, match=r"config\.model\.init = '.*pre@5': no checkpoint .*step-5/model; it has "
                                        r"checkpoints at steps 4, 6"):
        train(bad)
    # the demo finetunes from the keep_steps checkpoint as RUN@STEP; without one, from the latest
    assert finetune_init(pre) == f"{pre}@4" and checkpoint_model_dir(pre, "base") == base
    assert finetune_init(tmp_path / "runs" / "ft") == str(tmp_path / "runs" / "ft" / "checkpoints" / "step-2" / "model")


def test_recipes_and_docs_finetune_from_phi_1_base():
    pre, ft = load_config(RECIPES / "phi-1-pretrain.yaml"), load_config(RECIPES / "phi-1-finetune.yaml")
    assert ft.model.init == f"{pre.run_dir}@24000" and 24000 in pre.checkpoint.keep_steps
    small = yaml.safe_load((RECIPES / "demo-small.yaml").read_text())
    steps, keep = small["pretrain"]["set"]["train.max_steps"], small["pretrain"]["set"]["checkpoint.keep_steps"]
    assert keep == [steps * 2 // 3]  # 24000 of 36000
    scaling = (Path(phi1.__file__).parents[2] / "docs" / "scaling.md").read_text()
    assert "step-36000" not in scaling and "runs/phi-1@24000" in scaling


# ---- 5. checkpoint selection off the test set ----------------------------------------------------

MBPP = [{"task_id": t, "text": f"Return {t}.", "code": f"def f{t}():\n    return {t}\n",
         "test_list": [f"assert f{t}() == {t}"], "test_setup_code": ""} for t in (11, 12, 511, 512, 600, 601)]


def exercises_file(path: Path, n: int = 12) -> Path:
    rows = []
    for i in range(n):
        prompt = f'def add_{i}(x):\n    """Return x plus {i}."""\n'
        rows.append({"id": f"ex/{i}", "text": prompt + f"    return x + {i}\n",
                     "meta": {"prompt": prompt, "completion": f"    return x + {i}\n", "tests": f"assert add_{i}(1) == {i + 1}\n"}})
    rows.append({"id": "no-tests", "text": "def g():\n    pass\n", "meta": {"prompt": "def g():\n", "completion": "    pass\n"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_selection_splits(tmp_path, local):
    from phi1.data.pack import is_val
    from phi1.eval.callback import EvalCallback
    from phi1.eval.execute import execute_samples

    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text("".join(json.dumps(t) + "\n" for t in MBPP))
    cb = EvalCallback(benchmark="mbpp", data=str(mbpp), workers=1, max_new_tokens=4)
    assert sorted(cb.problems) == ["MBPP/511", "MBPP/512", "MBPP/600"]  # validation: never the test split
    assert cb.selection == f"MBPP validation split (task ids 511-600, 3 problems) of {mbpp}"
    ex = exercises_file(tmp_path / "ex.jsonl")
    held = [f"ex/{i}" for i in range(12) if is_val(f'def add_{i}(x):\n    """Return x plus {i}."""\n'
                                                    f"    return x + {i}\n", 0.5)]
    assert 0 < len(held) < 12
    cb2 = EvalCallback(benchmark="exercises", data=str(ex), val_fraction=0.5, workers=1, max_new_tokens=4)
    assert sorted(cb2.problems) == sorted(held) and "held-out exercises" in cb2.selection
    model, tok = local
    try:
        out = cb2(model, tok)
    finally:
        cb2.close()
    assert out["problems"] == len(held) and 0.0 <= out["pass@1"] <= 1.0 and out["solution_loss"] > 0
    # the programs run the exercise's own asserts: the solution passes, a wrong body fails
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": k, "completion": p.canonical_solution}) + "\n"
                               + json.dumps({"task_id": k, "completion": "    return x\n"}) + "\n"
                               for k, p in cb2.problems.items()))
    res = execute_samples(samples, "exercises", problems=cb2.problems, show_progress=False)
    assert res.summary["pass_at_k"]["pass@1"] == 0.5
    assert "test set the paper reports" in EvalCallback(workers=1).selection
    with pytest.raises(Phi1Error, match="no exercises with meta.prompt, meta.completion and meta.tests"):
        EvalCallback(benchmark="exercises", data=str(mbpp))


class ChoosingCallback:
    selection = "MBPP validation split (test)"

    def __init__(self, scores):
        self.scores = iter(scores)

    def __call__(self, model, tokenizer):
        return {"pass@1": next(self.scores)}


def test_best_json_and_report_state_what_chose_the_checkpoint(tmp_path, tokenizer_dir, shards):
    from phi1.demo.report import build_report
    from phi1.train.trainer import train

    root = tmp_path / "demo"
    run = root / "runs" / "finetune"
    cfg = load_config(data=micro_config(run, shards, tokenizer_dir, train={"max_steps": 4},
                                        eval={"interval": 2, "best_metric": "pass@1", "best_mode": "max"},
                                        checkpoint={"interval": 2}))
    train(cfg, eval_callback=ChoosingCallback([0.5, 0.25]))
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best == {"step": 2, "metric": "pass@1", "value": 0.5, "selected_on": "MBPP validation split (test)"}
    (root / ".stages").mkdir()
    (root / ".stages" / "finetune.json").write_text(json.dumps({"name": "finetune", "seconds": 1, "command": "x"}))
    report = build_report(root).read_text()
    assert "step 2 by pass@1 = 0.5 on MBPP validation split (test)" in report


# ---- 6. the phi-1.5 recipe and the phi-1 labels --------------------------------------------------

def test_phi_1_5_recipe():
    from phi1.train.setup import total_steps

    c = load_config(RECIPES / "phi-1.5.yaml")
    assert (c.model.init, c.schedule.kind, c.schedule.warmup_steps, c.optimizer.lr, c.optimizer.betas,
            c.optimizer.eps, c.optimizer.weight_decay, c.train.global_batch, c.data.seq_len, c.train.max_tokens,
            c.train.precision) == ("phi-1.5", "constant", 0, 2e-4, [0.9, 0.98], 1e-7, 0.1, 2048, 2048, 150 * 10**9,
                                   "fp16")
    w = {s.path.rsplit("/", 1)[-1]: s.weight for s in c.data.train}
    assert w["synthetic-1.5"] == pytest.approx(0.8) and sum(w.values()) == pytest.approx(1.0)
    assert w["code-filtered"] / w["textbooks-synth"] == pytest.approx(0.86 / 0.14)  # phi-1's own mix, 20% in all
    assert total_steps(c) == 150 * 10**9 // (2048 * 2048)
    for name in ("phi-1-pretrain", "phi-1-small-pretrain", "phi-1-finetune"):
        text = (RECIPES / f"{name}.yaml").read_text()
        beta = next(x for x in text.splitlines() if x.strip().startswith("betas:"))
        assert "(paper)" not in beta and "ours" in beta, name
