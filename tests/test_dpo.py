"""DPO: TRL's DPOTrainer is the numerical oracle (same tiny models, same batch, loss to 1e-5); a toy preference
set's reward margin rises under `phi1 train` with train.objective dpo."""

from __future__ import annotations

import json

import pytest
import torch

from phi1.chat import PHI3_TEMPLATE, ChatTemplate
from phi1.train.dpo import DPOObjective, PreferenceData, dpo_loss, sequence_logps, tokenize_pair

CONV_PAIRS = [
    {"prompt": [{"role": "user", "content": "Add two numbers."}],
     "chosen": [{"role": "assistant", "content": "def add(a, b):\n    return a + b"}],
     "rejected": [{"role": "assistant", "content": "I cannot."}]},
    {"prompt": [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Reverse s."}],
     "chosen": [{"role": "assistant", "content": "s[::-1]"}],
     "rejected": [{"role": "assistant", "content": "reversed, maybe: list(s)"}]},
    {"prompt": [{"role": "user", "content": "Square x."}],
     "chosen": [{"role": "assistant", "content": "x * x"}],
     "rejected": [{"role": "assistant", "content": "x + x"}]},
    {"prompt": [{"role": "user", "content": "Sort xs."}],
     "chosen": [{"role": "assistant", "content": "sorted(xs)"}],
     "rejected": [{"role": "assistant", "content": "xs"}]},
]
TEXT_PAIRS = [{"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "    pass\n"},
              {"prompt": "# square\nx = ", "chosen": "y * y", "rejected": "y + y"}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tokenizer_dir):
    """(reference dir, policy dir): a tiny phi-3 and a perturbed copy, so the log-ratios are not zero."""
    from phi1.model.create import init_model_dir
    from phi1.model.hf import load_model_dir, save_model_dir
    from phi1.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("dpo")
    ref = init_model_dir("tiny3", tokenizer_dir, root / "ref", seed=0)
    m = load_model_dir(ref)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    pol = save_model_dir(m, root / "policy", tokenizer=load_tokenizer(ref))
    return ref, pol


@pytest.mark.parametrize("loss,eps,pairs", [("sigmoid", 0.0, "conv"), ("ipo", 0.0, "conv"), ("robust", 0.1, "conv"),
                                            ("sigmoid", 0.0, "text")])
def test_loss_equals_trl(loss, eps, pairs, dirs, tmp_path):
    trl = pytest.importorskip("trl", reason="trl is in the test extra; install it with pip install -r requirements.txt")
    import datasets
    import transformers

    from phi1.model.hf import load_model_dir
    from phi1.tokenizer import load_tokenizer

    ref_dir, pol_dir = dirs
    records = CONV_PAIRS if pairs == "conv" else TEXT_PAIRS
    hf_tok = transformers.AutoTokenizer.from_pretrained(pol_dir)
    policy_hf = transformers.AutoModelForCausalLM.from_pretrained(pol_dir, dtype=torch.float32)
    ref_hf = transformers.AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.2, loss_type=[loss], label_smoothing=eps,
                         per_device_train_batch_size=len(records), report_to=[], use_cpu=True, max_length=None, bf16=False,
                         dataset_num_proc=None, save_strategy="no", logging_strategy="no")
    trainer = trl.DPOTrainer(model=policy_hf, ref_model=ref_hf, args=args, processing_class=hf_tok,
                             train_dataset=datasets.Dataset.from_list(records))
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    inputs = trainer.data_collator(rows)
    trainer.model.eval()  # no dropout anywhere, fp32 (bf16=False: TRL's default autocasts): the same function
    with torch.no_grad():
        want = trainer.compute_loss(trainer.model, inputs).item()

    tok = load_tokenizer(pol_dir)
    template = ChatTemplate(PHI3_TEMPLATE, bos_token=tok.bos_token, eos_token=tok.eos_token)
    for rec, row in zip(records, rows):  # our tokenization is TRL's
        assert list(tokenize_pair(tok, template, rec)) == [row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]]
    ours_pol, ours_ref = load_model_dir(pol_dir).eval(), load_model_dir(ref_dir).eval()
    ids, mask = inputs["input_ids"], inputs["completion_mask"]
    with torch.no_grad():
        pc, pr = sequence_logps(ours_pol, ids, mask).chunk(2)
        rc, rr = sequence_logps(ours_ref, ids, mask).chunk(2)
        lc, lr = mask.sum(1).chunk(2)
        got, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2, loss=loss, label_smoothing=eps, chosen_len=lc, rejected_len=lr)
    assert abs(got.item() - want) < 1e-5, (got.item(), want)
    # And through our own data path (right padding, our collation): the same loss.
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = PreferenceData([str(data_file)], tok, template, max_len=512)

    class Section:
        beta, label_smoothing, precompute_ref = 0.2, eps, False

    Section.loss = loss
    objective = DPOObjective(Section, ours_ref, data, "cpu")
    with torch.no_grad():
        mine, stats = objective(ours_pol, data.sequential_batch(range(len(records))))
    assert abs(mine.item() - want) < 1e-5
    assert set(stats) >= {"reward_margin", "reward_accuracy"}


def _dpo_raw(run_dir, model_dir, data, steps, **dpo) -> dict:
    return {
        "run": {"name": run_dir.name, "out_dir": str(run_dir.parent), "seed": 3, "device": "cpu"},
        "model": {"init": str(model_dir)},
        "data": {"format": "preference", "train": [str(data)], "seq_len": 128},
        "optimizer": {"lr": 2e-3, "weight_decay": 0.0},
        "schedule": {"kind": "constant", "warmup_steps": 0},
        "train": {"kind": "dpo", "micro_batch": 2, "global_batch": 4, "max_steps": steps, "precision": "fp32",
                  "log_interval": 1},
        "eval": {"interval": 0},
        "checkpoint": {"interval": 0, "keep_last_k": 1},
        "dpo": {"beta": 0.5, **dpo},
    }


def test_toy_preferences_margin_rises(dirs, tmp_path):
    from phi1.train.config import load_config
    from phi1.train.trainer import train

    ref_dir, _ = dirs
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CONV_PAIRS * 2))
    train(load_config(data=_dpo_raw(tmp_path / "cached", ref_dir, data, 6)))
    recs = [json.loads(x) for x in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "reward_margin" in r]
    assert len(recs) == 6
    assert abs(recs[0]["loss"] - 0.693147) < 1e-4 and abs(recs[0]["reward_margin"]) < 1e-4  # policy = reference
    assert recs[-1]["reward_margin"] > recs[0]["reward_margin"] + 0.5
    assert recs[-1]["reward_accuracy"] == 1.0
    assert (tmp_path / "cached" / "ref_logps.pt").exists()
    # A frozen reference instead of the cache: the same run, to float precision.
    train(load_config(data=_dpo_raw(tmp_path / "frozen", ref_dir, data, 2, precompute_ref=False)))
    frozen = [json.loads(x) for x in (tmp_path / "frozen" / "metrics.jsonl").read_text().splitlines()]
    frozen = [r for r in frozen if "reward_margin" in r]
    assert len(frozen) == 2 and all(abs(a["loss"] - b["loss"]) < 1e-4 for a, b in zip(recs, frozen))


def test_dpo_config_errors_name_the_field(dirs, tmp_path):
    from phi1.errors import ConfigError
    from phi1.train.config import load_config

    ref_dir, _ = dirs
    with pytest.raises(ConfigError, match=r"config\.dpo\.loss = 'hinge': allowed: sigmoid, ipo, robust"):
        load_config(data=_dpo_raw(tmp_path / "x", ref_dir, tmp_path / "p.jsonl", 2, loss="hinge"))
    raw = _dpo_raw(tmp_path / "x", ref_dir, tmp_path / "p.jsonl", 2)
    raw["data"]["format"] = "chat"
    with pytest.raises(ConfigError, match=r"config\.data\.format = 'chat'"):
        load_config(data=raw)
