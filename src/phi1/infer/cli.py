"""`phi1 serve`: parse flags, call `phi1.infer.server.serve`."""

from __future__ import annotations

from phi1.utils.cliio import declare_io


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model directory over an OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True, help="HF-format model directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer <key>' with the key read from this environment variable")
    p.add_argument("--max-batch-size", type=int, default=8, help="sequences decoded together (KV-cache slots)")
    p.add_argument("--max-tokens-limit", type=int, default=None,
                   help="largest max_tokens a request may ask for (default: the model's context)")
    p.add_argument("--max-n", type=int, default=16, help="most choices per request (prompts x n)")
    p.add_argument("--max-body-mb", type=float, default=8.0, metavar="MIB",
                   help="largest request body in MiB; bigger ones get 413 (default: 8)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--compile", action="store_true", help="CUDA: compile the decode step into a CUDA graph")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="weight-only group-wise quantization of the linear layers (less memory; see docs/export.md)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    declare_io(p, inputs=("model",))
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from phi1.infer.server import ServeConfig, serve

    serve(ServeConfig(model_dir=args.model, host=args.host, port=args.port, api_key_env=args.api_key_env,
                      max_batch_size=args.max_batch_size, max_tokens_limit=args.max_tokens_limit,
                      max_n=args.max_n, max_body_mb=args.max_body_mb, device=args.device, dtype=args.dtype,
                      compile=args.compile, log_level=args.log_level,
                      quantize=args.quantize))
    return 0
