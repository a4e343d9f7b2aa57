"""Chat templates rendered as transformers renders them; phi-3 model directories chatting through `phi1 serve`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from serve_support import alone, running_server

from phi1.chat import PHI3_TEMPLATE, ChatTemplate, TemplateError

transformers = pytest.importorskip("transformers")

CHATML = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Block tags on their own lines (trim_blocks/lstrip_blocks matter), loop state, namespace, tojson, bos.
LLAMA_LIKE = """{{ bos_token }}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('roles must alternate user/assistant') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {% set ns.turns = ns.turns + 1 %}
        {{ '[INST] ' + message['content'] + ' [/INST]' }}
    {% else %}
        {{ ' ' + message['content'] + ' ' + eos_token }}
    {% endif %}
    {% if loop.last and message.get('name') %}{{ message['name'] | tojson }}{% endif %}
{% endfor %}
{{ ns.turns }}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sort a list."},
     {"role": "assistant", "content": "sorted(xs)"}, {"role": "user", "content": "  In place?  "}],
    [{"role": "user", "content": "Übersetze: café ☕"}, {"role": "assistant", "content": "coffee"}],
]


def _tokenizer_with(tmp_path, tokenizer_dir, template: str):
    d = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("name,template", [("phi-3", PHI3_TEMPLATE), ("chatml", CHATML), ("llama-like", LLAMA_LIKE)])
def test_rendering_equals_apply_chat_template(name, template, tmp_path, tokenizer_dir):
    from phi1.tokenizer import load_tokenizer

    d = _tokenizer_with(tmp_path, tokenizer_dir, template)
    ours = load_tokenizer(d).chat()
    ref = transformers.AutoTokenizer.from_pretrained(d)
    convs = CONVERSATIONS + [[{"role": "user", "content": "hi", "name": "ada"}]]
    if name == "llama-like":
        convs = [c for c in convs if c[0]["role"] != "system"]
    for conv in convs:
        for gen in (True, False):
            want = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert ours.render(conv, add_generation_prompt=gen) == want, (name, conv, gen)


def test_template_errors_are_one_clear_line():
    t = ChatTemplate(PHI3_TEMPLATE, eos_token="<|endoftext|>")
    with pytest.raises(TemplateError, match="not tool"):
        t.render([{"role": "tool", "content": "x"}])
    with pytest.raises(TemplateError, match="not a valid Jinja template"):
        ChatTemplate("{% for m in messages %}")
    assert t.end_marker() == "<|end|>"
    assert ChatTemplate(CHATML).end_marker() == "<|im_end|>"


def test_sentencepiece_style_tokenizer_json(tmp_path):
    """A Llama-2-style tokenizer.json (Metaspace, byte fallback, <s>/</s>) loads and encodes as transformers does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    from phi1.tokenizer import load_tokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials)
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 20 + ["the quick brown fox"] * 20, trainer)
    tok.add_special_tokens(["<|end|>", "<|user|>", "<|assistant|>"])
    d = tmp_path / "sp"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": PHI3_TEMPLATE}))
    ours = load_tokenizer(d)
    ref = transformers.AutoTokenizer.from_pretrained(d)
    conv = CONVERSATIONS[1]
    text = ours.chat().render(conv)
    assert text == ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    assert ours.eos_token == "</s>" and ours.token_to_id("<|end|>") is not None
    assert ours.decode(ours.encode("héllo wörld ☕")) == ref.decode(ref("héllo wörld ☕", add_special_tokens=False)
                                                                   ["input_ids"])


@pytest.fixture(scope="module")
def tiny3_dir(tmp_path_factory, tokenizer_dir):
    from phi1.model.create import init_model_dir

    out = tmp_path_factory.mktemp("tiny3") / "tiny3"
    init_model_dir("tiny3", tokenizer_dir, out, seed=0)
    return out


def test_saved_models_carry_a_template(tiny3_dir, tmp_path, tokenizer_dir):
    from phi1.model.create import init_model_dir, model_info

    cfg = json.loads((tiny3_dir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == PHI3_TEMPLATE
    assert model_info(tiny3_dir)["family"] == "phi3"
    f = tmp_path / "chatml.jinja"
    f.write_text(CHATML)
    other = init_model_dir("micro", tokenizer_dir, tmp_path / "m", chat_template=str(f))
    ref = transformers.AutoTokenizer.from_pretrained(other)
    assert ref.apply_chat_template(CONVERSATIONS[0], tokenize=False).startswith("<|im_start|>system")


def test_phi3_chat_endpoint_through_openai_client(tiny3_dir, tmp_path):
    openai = pytest.importorskip("openai")
    from phi1.model import load_for_inference

    local = load_for_inference(tiny3_dir, device="cpu", dtype="float32")
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Add two numbers."}]
    prompt = local[1].chat().render(msgs)
    assert prompt.endswith("<|assistant|>\n")
    ref = alone(local, prompt, 24, stop=["<|end|>"])
    with running_server(tiny3_dir, tmp_path / "serve.log", timeout=90) as (base, _proc):
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=60)
        r = client.chat.completions.create(model=tiny3_dir.name, messages=msgs, max_tokens=24, temperature=0)
        assert r.choices[0].message.content == ref.text
        assert r.usage.completion_tokens == ref.completion_tokens
        chunks = list(client.chat.completions.create(model=tiny3_dir.name, messages=msgs, max_tokens=24,
                                                     temperature=0, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    out = subprocess.run([sys.executable, "-m", "phi1", "generate", "--model", str(tiny3_dir), "--chat",
                          "--prompt", "Add two numbers.", "--max-new-tokens", "12", "--device", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    want = alone(local, local[1].chat().render([{"role": "user", "content": "Add two numbers."}]), 12,
                 stop=["<|end|>"]).text
    assert out.stdout == want + "\n"


def test_assistant_spans_with_a_trimming_template():
    """ChatML trims contents: the span is the trimmed reply plus <|im_end|>."""
    t = ChatTemplate(CHATML)
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  hello there  "}]
    text = t.render(conv, add_generation_prompt=False)
    [(b, e)] = t.assistant_spans(conv)
    assert text[b:e] == "hello there<|im_end|>"
