"""`phi1 generate` (one prompt, one completion) and `phi1 serve` (`phi1.infer.server.serve`)."""

from __future__ import annotations

import sys

from phi1.utils.cliio import declare_io


def register(sub) -> None:
    from phi1.infer.generate import SamplingParams
    from phi1.infer.settings import ServeConfig
    from phi1.utils.config import add_config_flags
    from phi1.utils.device import add_device_flags

    p = sub.add_parser("generate", help="complete a prompt with a model directory")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True, help="prompt text, or @FILE to read it from a file")
    add_config_flags(p, SamplingParams, skip=("stop",))
    p.add_argument("--stop", nargs="*", default=None, help="strings that end the completion")
    add_device_flags(p)
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="weight-only group-wise quantization of the linear layers (less memory; see docs/export.md)")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the model's chat template; stop at its end marker")
    declare_io(p, inputs=("model", "prompt"))
    p.set_defaults(func=_generate)

    p = sub.add_parser("serve", help="serve a model directory over an OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True, dest="model_dir", help="HF-format model directory")
    add_config_flags(p, ServeConfig, skip=("model_dir",))
    declare_io(p, inputs=("model_dir",))
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from phi1.infer.server import serve
    from phi1.infer.settings import ServeConfig
    from phi1.utils.config import config_from_args

    serve(config_from_args(ServeConfig, args, where="serve", validate=False))  # serve() validates
    return 0


def _generate(args) -> int:
    from pathlib import Path

    from phi1.errors import Phi1Error
    from phi1.infer.generate import SamplingParams, generate
    from phi1.infer.settings import sampling_problem
    from phi1.model import load_for_inference
    from phi1.model.create import check_tokenizer_fits
    from phi1.utils.config import config_from_args
    from phi1.utils.device import device_options

    sp = config_from_args(SamplingParams, args, where="generate", validate=False)
    problem = sampling_problem(sp.max_new_tokens, sp.temperature, sp.top_p, sp.top_k, sp.seed)
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
    model, tok = load_for_inference(args.model, quantize=args.quantize, **device_options(args))
    stop = list(args.stop or [])
    if args.chat:
        from phi1.chat import PHI3_TEMPLATE

        template = tok.chat(default=PHI3_TEMPLATE)
        prompt = template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        stop += [template.end_marker()] if template.end_marker() else []
    [c] = generate(model, tok, [prompt], max_new_tokens=sp.max_new_tokens, temperature=sp.temperature,
                   top_p=sp.top_p, top_k=sp.top_k, stop=stop, seed=sp.seed, batch_size=1)
    if args.echo:
        sys.stdout.write(prompt)
    sys.stdout.write(c.text + "\n")
    return 0
