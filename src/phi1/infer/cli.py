"""`phi1 generate` (one prompt, one completion) and `phi1 serve` (`phi1.infer.server.serve`)."""

from __future__ import annotations

import sys

from phi1.utils.cliio import declare_io


def register(sub) -> None:
    p = sub.add_parser("generate", help="complete a prompt with a model directory")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True, help="prompt text, or @FILE to read it from a file")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", nargs="*", default=[])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="weight-only group-wise quantization of the linear layers (less memory; see docs/export.md)")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the model's chat template; stop at its end marker")
    declare_io(p, inputs=("model", "prompt"))
    p.set_defaults(func=_generate)

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


def _generate(args) -> int:
    from pathlib import Path

    from phi1.errors import Phi1Error
    from phi1.infer.generate import generate
    from phi1.model import load_for_inference
    from phi1.model.create import check_tokenizer_fits

    from phi1.infer.settings import sampling_problem

    problem = sampling_problem(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    if problem is not None:  # before the model loads: a bad flag costs nothing
        name = problem.split(" ", 1)[0]
        raise Phi1Error("--" + name.replace("_", "-") + problem[len(name):])
    prompt = args.prompt
    if prompt.startswith("@"):
        f = Path(prompt[1:])
        if not f.exists():
            raise Phi1Error(f"--prompt {prompt}: file not found")
        prompt = f.read_text()
    check_tokenizer_fits(args.model)
    model, tok = load_for_inference(args.model, args.device, args.dtype, quantize=args.quantize)
    stop = list(args.stop)
    if args.chat:
        from phi1.chat import PHI3_TEMPLATE

        template = tok.chat(default=PHI3_TEMPLATE)
        prompt = template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        stop += [template.end_marker()] if template.end_marker() else []
    [c] = generate(model, tok, [prompt], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, top_k=args.top_k, stop=stop, seed=args.seed, batch_size=1)
    if args.echo:
        sys.stdout.write(prompt)
    sys.stdout.write(c.text + "\n")
    return 0
