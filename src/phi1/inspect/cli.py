"""`phi1 inspect attention|neurons` and `phi1 compare`."""

from __future__ import annotations

import contextlib

from phi1.utils.cliio import declare_io, needs_subcommand
from phi1.utils.device import add_device_flags, device_options


def _model_args(p) -> None:
    p.add_argument("--model", required=True, help="model directory (HF format)")
    add_device_flags(p)


def _stream_args(p) -> None:
    p.add_argument("--seq-len", type=int, help="tokens per window (default 256)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: the inspection's own)")
    p.add_argument("--max-tokens", type=int, default=None, help="read at most this many tokens of the corpus")


def _given(args, *names) -> dict:
    """The options given on the command line (a flag left out: the library's default)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def register(sub) -> None:
    from phi1.inspect.attention import HeadRules
    from phi1.inspect.compare import CompareConfig
    from phi1.utils.config import add_config_flags

    g = sub.add_parser("inspect", help="look inside a model: attention heads, MLP neurons",
                       description="Look inside a model through forward hooks (docs/inspect.md).")
    gsub = g.add_subparsers(dest="inspect_command", metavar="COMMAND")

    p = gsub.add_parser("attention", help="attention patterns, distance, entropy and a label per head")
    _model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a UTF-8 text file (or JSONL of records with \"text\") to read")
    src.add_argument("--prompt", help="the text itself")
    p.add_argument("--out", required=True, help="output directory: attention.png, heads.json/.md, attention.html")
    p.add_argument("--layers", default="all", help="'all' (default), 'middle' or indices like 0,2,-1")
    p.add_argument("--grid-tokens", type=int, help="tokens shown in each heat map (default 32)")
    add_config_flags(p, HeadRules, only=("window",))
    p.add_argument("--top", type=int, help="most-attended tokens listed per long-range head (default 10)")
    _stream_args(p)
    declare_io(p, inputs=("model", "text"), out_dirs=("out",), overwrite=True)
    p.set_defaults(func=_attention)

    p = gsub.add_parser("neurons", help="top-activating tokens of every MLP neuron, streamed over a corpus")
    _model_args(p)
    p.add_argument("--corpus", required=True, help="a UTF-8 text file or a JSONL file of records with \"text\"")
    p.add_argument("--out", required=True, help="output directory: neurons.json, neurons.html")
    p.add_argument("--layers", default="middle", help="'middle' (default), 'all' or indices like 0,2,-1")
    p.add_argument("--top-k", type=int, dest="k", help="activations kept per neuron (default 10)")
    p.add_argument("--context", type=int, help="tokens shown before each token, half as many after (default 8)")
    p.add_argument("--threshold", type=float,
                   help="monosemantic: one token class covers at least this share of the top k (default 0.8)")
    p.add_argument("--html-rows", type=int, default=256, help="neurons per layer on the HTML page (all in the JSON)")
    _stream_args(p)
    declare_io(p, inputs=("model", "corpus"), out_dirs=("out",), overwrite=True)
    p.set_defaults(func=_neurons)
    g.set_defaults(func=needs_subcommand(g))

    p = sub.add_parser("compare", help="the same prompts through two checkpoints, side by side (phi-1 section 3)",
                       description="Greedy completions of judge problems, HumanEval prompts and library prompts by "
                                   "two models; tests in the sandbox, optional LLM judge; compare.html.")
    p.add_argument("--base", required=True, help="the first model directory (e.g. the pretrained base)")
    p.add_argument("--tuned", required=True, help="the second model directory (e.g. the finetuned model)")
    p.add_argument("--out", required=True, help="output directory: compare.json, compare.md, compare.html")
    add_config_flags(p, CompareConfig, skip=("base", "tuned", "out", "overwrite", "judge_concurrency"))
    declare_io(p, inputs=("base", "tuned", "exercises"), out_dirs=("out",), overwrite=True)
    p.set_defaults(func=_compare)


def _check_model(path: str, flag: str = "--model") -> None:
    from pathlib import Path

    from phi1.errors import Phi1Error

    p = Path(path)
    if not p.is_dir():
        raise Phi1Error(f"{flag} {path}: {'not a directory' if p.exists() else 'not found'}; "
                        "pass a model directory (config.json, model.safetensors)")
    from phi1.model.create import check_tokenizer_fits

    check_tokenizer_fits(p)


def _check_layers(model_dir: str, spec: str, default: str) -> None:
    from phi1.inspect.hooks import resolve_layers
    from phi1.model.hf import read_config

    resolve_layers(spec, read_config(model_dir).num_hidden_layers, default=default)


def _positive(**flags) -> None:
    from phi1.errors import ConfigError

    for name, v in flags.items():
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {v}: use an integer >= 1")


def _attention(args) -> int:
    from phi1.errors import Phi1Error
    from phi1.inspect.attention import HeadRules, inspect_attention, summary_counts, write_attention
    from phi1.inspect.corpus import check_text_file, documents, text_documents

    _positive(**_given(args, "seq_len", "batch_size", "max_tokens", "grid_tokens", "top", "window"))
    _check_model(args.model)
    if args.prompt is not None and not args.prompt.strip():
        raise Phi1Error("--prompt: empty; give some text (or --text FILE)")
    if args.text is not None:
        check_text_file(args.text, "--text")
    rules = HeadRules(**_given(args, "window")).validate()
    _check_layers(args.model, args.layers, "all")
    with _claimed(args, "inspect attention") as out:
        model, tok = _load(args)
        docs = documents(args.text, "--text") if args.text is not None else text_documents([args.prompt])
        rep = inspect_attention(model, tok, docs, layers=args.layers, rules=rules, model_name=str(args.model),
                                **_given(args, "seq_len", "batch_size", "max_tokens", "grid_tokens", "top"))
        paths = write_attention(rep, out)
    counts = summary_counts(rep)
    print(f"{rep.tokens} tokens, {len(rep.heads)} heads: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in rep.heads:
        tag = r["label"] + (" (diffuse)" if r["diffuse"] else "")
        print(f"  L{r['layer']:<2} H{r['head']:<2} {tag:<32} distance {r['mean_distance']:7.2f}  "
              f"entropy {r['entropy']:.3f} ({r['normalized_entropy']:.2f} of uniform)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _neurons(args) -> int:
    from phi1.inspect.corpus import check_text_file, documents
    from phi1.inspect.neurons import inspect_neurons, summary_line, write_neurons

    _positive(**_given(args, "seq_len", "batch_size", "max_tokens", "html_rows"), top_k=args.k)
    _check_model(args.model)
    check_text_file(args.corpus, "--corpus")
    _check_layers(args.model, args.layers, "middle")
    with _claimed(args, "inspect neurons") as out:
        model, tok = _load(args)
        rep = inspect_neurons(model, tok, documents(args.corpus, "--corpus"), layers=args.layers,
                              model_name=str(args.model),
                              **_given(args, "k", "context", "seq_len", "batch_size", "max_tokens", "threshold"))
        paths = write_neurons(rep, out, max_rows=args.html_rows)
    print(f"{rep.tokens} tokens in {rep.windows} windows")
    for layer in rep.layers:
        print("  " + summary_line(rep, layer))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _compare(args) -> int:
    from phi1.inspect.compare import CompareConfig, run_compare

    from phi1.utils.config import fields_from_args

    cfg = CompareConfig(**fields_from_args(CompareConfig, args))
    cfg.validate()
    for flag, d in (("--base", args.base), ("--tuned", args.tuned)):
        _check_model(d, flag)
    rep = run_compare(cfg)
    from phi1.inspect.compare_page import compare_markdown

    print(compare_markdown(rep), end="")
    print(f"wrote {args.out}/compare.html, compare.md, compare.json")
    failures = sum(rep["judge_failures"].values())
    if failures:
        print(f"phi1: {failures} judge requests failed; rerun the same command to grade them")
        return 1
    return 0


def _load(args):
    from phi1.model import load_for_inference

    return load_for_inference(args.model, **device_options(args))


@contextlib.contextmanager
def _claimed(args, owner: str):
    """The output directory, claimed for `owner` and locked for this process (docs/guarantees.md).

    A directory this call created is removed again if the command fails before writing into it.
    """
    from pathlib import Path

    from phi1.utils.safety import DIR_LOCK, MARKER, OutputLock, claim_output_dir

    new = not Path(args.out).exists()
    out = claim_output_dir(args.out, owner, overwrite=args.overwrite)
    try:
        with OutputLock(out, is_dir=True, what=f"{owner} output directory"):
            yield out
    except BaseException:
        if new and {e.name for e in out.iterdir()} <= {MARKER, DIR_LOCK}:
            for name in (MARKER, DIR_LOCK):
                (out / name).unlink(missing_ok=True)
            out.rmdir()
        raise
