"""`phi1 model init|info`, `phi1 tokenizer train`."""

from __future__ import annotations

import json

from phi1.utils.cliio import declare_io, needs_subcommand


def register(sub) -> None:
    m = sub.add_parser("model", help="create and inspect model directories")
    msub = m.add_subparsers(dest="model_command", metavar="COMMAND")
    p = msub.add_parser("init", help="write a randomly initialised HF-format model directory")
    p.add_argument("--preset", required=True, help="phi-1, phi-1-small, phi-1.5, phi-2, tiny, micro; phi-3-mini, "
                   "phi-3-mini-128k, phi-3-medium, phi-4-mini, tiny3")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory or a hub name in the HF cache (the model's vocab: the preset's 51200 for "
                        "phi-1/phi-1-small/phi-1.5/phi-2, else the tokenizer's size padded to 64)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, help="the initial weights' seed (default 0)")
    p.add_argument("--chat-template", default=None,
                   help="the chat template the model carries: a name (phi-3) or a .jinja file (default: the "
                        "tokenizer's own, else phi-3's)")
    declare_io(p, inputs=("tokenizer",), out_dirs=("out",), overwrite=True)
    p.set_defaults(func=_init)
    p = msub.add_parser("info", help="shape, parameter count, dtype and tokenizer of a model directory")
    p.add_argument("model_dir")
    p.add_argument("--json", action="store_true")
    declare_io(p, inputs=("model_dir",))
    p.set_defaults(func=_info)
    m.set_defaults(func=needs_subcommand(m))

    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer for code")
    tsub = t.add_subparsers(dest="tokenizer_command", metavar="COMMAND")
    p = tsub.add_parser("train", help="train on files, directories of .py, or JSONL text fields")
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--max-mb", type=float, default=None, help="stop reading input after this many MB")
    p.add_argument("--out", required=True)
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip (and count) JSONL lines that are not UTF-8 or not JSON, instead of failing")
    declare_io(p, inputs=("input",), out_dirs=("out",), overwrite=True)
    p.set_defaults(func=_tok_train)
    t.set_defaults(func=needs_subcommand(t))


def _init(args) -> int:
    from phi1.model.create import init_model_dir, model_info

    seed = {} if args.seed is None else {"seed": args.seed}
    out = init_model_dir(args.preset, args.tokenizer, args.out, overwrite=args.overwrite,
                         chat_template=args.chat_template, **seed)
    info = model_info(out)
    print(f"wrote {out} ({info['preset'] or 'custom'}, {info['parameters'] / 1e6:.2f}M parameters)")
    return 0


def _info(args) -> int:
    from phi1.model.quantize import memory_table
    from phi1.model.create import model_info

    info = model_info(args.model_dir)
    info["weight_memory_bytes"] = memory_table(args.model_dir)  # fp32, bf16, --quantize int8 / int4
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}")
    print(f"  family      {info['family']}")
    print(f"  preset      {info['preset'] or 'custom'}")
    print(f"  shape       {info['layers']} layers x d={info['hidden_size']}, MLP {info['intermediate_size']}, "
          f"{info['heads']} heads of {info['head_dim']} (rotary {info['rotary_dim']}), context {info['context']}")
    print(f"  parameters  {info['parameters']:,} ({info['non_embedding_parameters']:,} without the embedding)")
    print(f"  vocab       {info['vocab_size']}")
    print(f"  dtype       {info['dtype']}")
    mem = {k: f"{v / 2**20:.2f} MiB" for k, v in info["weight_memory_bytes"].items()}
    print(f"  memory      weights {mem['fp32']} fp32, {mem['bf16']} bf16; --quantize int8 {mem['int8']}, "
          f"int4 {mem['int4']}")
    t = info["tokenizer"]
    print(f"  tokenizer   {t.get('size')} tokens, eos {t.get('eos')!r}" if "error" not in t else f"  tokenizer   {t['error']}")
    return 0


def _tok_train(args) -> int:
    from phi1.tokenizer import check_train_args, train_tokenizer
    from phi1.utils.safety import claim_output_dir

    max_bytes = int(args.max_mb * 1e6) if args.max_mb is not None else None
    check_train_args(args.vocab_size, args.min_frequency, max_bytes)
    from phi1.utils.safety import OutputLock

    out = claim_output_dir(args.out, "tokenizer train", overwrite=args.overwrite)  # its marker: a rerun may replace it
    with OutputLock(out, is_dir=True, what="tokenizer directory"):
        tok = train_tokenizer(args.input, vocab_size=args.vocab_size, out_dir=out, min_frequency=args.min_frequency,
                              max_bytes=max_bytes, skip_bad_lines=args.skip_bad_lines)
    bad = getattr(tok, "skipped_lines", {}) or {}
    skipped = f"; skipped {bad.get('bad_utf8', 0)} non-UTF-8 and {bad.get('bad_json', 0)} malformed JSON lines" \
        if any(bad.values()) else ""
    print(f"wrote {args.out} ({len(tok)} tokens{skipped})")
    return 0
