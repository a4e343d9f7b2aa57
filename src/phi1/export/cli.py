"""`phi1 export gguf`: parse flags, call `phi1.export.gguf_export.export_gguf`, then check the file in llama.cpp."""

from __future__ import annotations

from phi1.utils.cliio import declare_io, needs_subcommand


def register(sub) -> None:
    e = sub.add_parser("export", help="export a model directory for other runtimes (GGUF: llama.cpp, Ollama)")
    esub = e.add_subparsers(dest="export_command", metavar="COMMAND")
    p = esub.add_parser("gguf", help="write one GGUF file (phi -> llama.cpp phi2, phi-3 -> phi3)")
    p.add_argument("--model", required=True, help="HF-format model directory")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="f16", help="f32, f16, bf16, q8_0, q4_0 (gguf's quantizers) or q4_k_m "
                                                  "(llama.cpp's llama-quantize); default f16")
    p.add_argument("--eval-text", default=None, metavar="FILE",
                   help="held-out text for the loss check in llama.cpp (default: phi1's library problems)")
    p.add_argument("--no-check", action="store_true", help="skip the loss check in llama.cpp")
    declare_io(p, inputs=("model", "eval_text"), outputs=("out",), overwrite=True)
    p.set_defaults(func=_gguf)
    e.set_defaults(func=needs_subcommand(e))


def _gguf(args) -> int:
    from pathlib import Path

    from phi1.errors import Phi1Error
    from phi1.export import llamacpp
    from phi1.export.gguf_export import check_type, export_gguf

    check_type(args.type)
    text = None
    if args.eval_text is not None:
        f = Path(args.eval_text)
        if not f.is_file():
            raise Phi1Error(f"--eval-text {f}: file not found")
        text = f.read_text(errors="replace")
    r = export_gguf(args.model, args.out, args.type, overwrite=args.overwrite)
    print(f"wrote {r.path} ({r.arch}, {r.type}, {r.n_tensors} tensors, {r.size_bytes / 2**20:.2f} MiB"
          f"{', quantized by ' + r.quantizer if r.quantizer != 'gguf' else ''})")
    for n in r.notes:
        print(f"  note: {n}")
    if args.no_check:
        return 0
    if not llamacpp.have_llama_cpp():
        print("  loss check skipped: llama-cpp-python is not installed (pip install -e '.[llamacpp]')")
        return 0
    c = llamacpp.compare(args.model, r.path, text if text is not None else llamacpp.held_out_text())
    print(f"  held-out loss over {c['tokens']} tokens: phi1 fp32 {c['phi1_loss']:.4f}, llama.cpp {r.type} "
          f"{c['llama_cpp_loss']:.4f} (delta {c['delta']:+.4f}); top-1 agreement {c['top1_agreement']:.1%}")
    return 0
