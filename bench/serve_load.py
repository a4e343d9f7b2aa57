"""Load test for `phi1 serve`: N concurrent clients on loopback for a bounded time.

Reports requests/s, completion tokens/s, p50/p99 latency and errors (which must
be zero) for each concurrency level, plus the server's mean decode batch size
from GET /metrics.json, so the gain from continuous batching over one-at-a-time
(concurrency 1) shows in one run. A server it starts itself also reports its start-up time
(model load + warm-up, until /health answers); `--stream` sends streaming requests (SSE) and
reports the time to the first token. Each figure also comes as one `result key=value ...` line.

    python bench/serve_load.py                              # starts a tiny-preset server itself (CPU)
    python bench/serve_load.py --concurrency 1,8,32 --seconds 20 --model DIR --device cuda
    python bench/serve_load.py --url http://127.0.0.1:8000  # an already running server
    python bench/serve_load.py --concurrency 16 --stream     # 16 streaming clients (the GPU check's row)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPTS = ["def fibonacci(n):\n    ", "import json\n\nclass Encoder:", "x = [1, 2, 3]\nfor", "# sort a list\n",
           "from email import message\n", "def parse(s: str) -> dict:\n", "class Stack:\n    def push(self"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, args) -> tuple[subprocess.Popen, str, float]:
    """(process, url, seconds until /health answered): start-up is model load plus the server's warm-up
    (every decode bucket compiled before the socket listens)."""
    port = _free_port()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "phi1", "serve", "--model", str(model_dir), "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--device", args.device, "--dtype", args.dtype,
           "--log-level", "warning"]
    if args.compile:
        cmd.append("--compile")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, time.perf_counter() - t0
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start within 300 s")


async def run_level(url: str, model: str, concurrency: int, seconds: float, max_tokens: int, key: str | None,
                    stream: bool = False):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    lat, ttft, toks, errors = [], [], 0, []
    stop_at = time.perf_counter() + seconds

    async def one(body, http) -> int:
        """Completion tokens of one request; streamed, the time to its first token goes to ttft."""
        t = time.perf_counter()
        if not stream:
            r = await http.post(url + "/v1/completions", json=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {r.text[:200]}")
            return r.json()["usage"]["completion_tokens"]
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        used, first = None, None
        async with http.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                    first = time.perf_counter() - t
                if chunk.get("usage"):
                    used = chunk["usage"]["completion_tokens"]
        if used is None:
            raise RuntimeError("stream ended without a usage chunk")
        ttft.append(first if first is not None else float("nan"))
        return used

    async def client(i: int, http: httpx.AsyncClient):
        nonlocal toks
        k = i
        while time.perf_counter() < stop_at:
            body = {"model": model, "prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": max_tokens,
                    "temperature": 0}
            k += concurrency
            t = time.perf_counter()
            try:
                toks += await one(body, http)
                lat.append(time.perf_counter() - t)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                errors.append(repr(exc))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        m0 = (await http.get(url + "/metrics.json", headers=headers)).json()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(concurrency)))
        wall = time.perf_counter() - t0
        m1 = (await http.get(url + "/metrics.json", headers=headers)).json()
    steps = m1["decode_steps"] - m0["decode_steps"]
    occ = sum(int(k) * v for k, v in m1["batch_size_histogram"].items()) - \
        sum(int(k) * v for k, v in m0["batch_size_histogram"].items())
    lat.sort()
    return {
        "concurrency": concurrency, "requests": len(lat), "rps": len(lat) / wall, "tok_s": toks / wall,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "errors": errors, "mean_batch": occ / steps if steps else 0.0,
        "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--model", help="model directory for the server it starts (default: a tiny-preset one)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--api-key-env", default=None)
    ap.add_argument("--stream", action="store_true", help="streaming requests (SSE); reports time to first token")
    args = ap.parse_args(argv)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None

    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            if args.model:
                model_dir = Path(args.model)
            else:
                sys.path.insert(0, str(Path(__file__).parent))
                from decode import make_model_dir

                model_dir = make_model_dir(args.preset, Path(tmp))
            proc, url, ready = start_server(model_dir, args)
            print(f"result server_ready_s={ready:.1f}", flush=True)
        try:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            model = httpx.get(url + "/v1/models", headers=headers).json()["data"][0]["id"]
            print(f"# {url} model {model}, {args.max_tokens} tokens per request (greedy), "
                  f"{args.seconds:.0f} s per level")
            print(f"{'clients':>7} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'batch':>6} {'errors':>6}")
            base = None
            failed = False
            for c in [int(x) for x in args.concurrency.split(",")]:
                r = asyncio.run(run_level(url, model, c, args.seconds, args.max_tokens, key, args.stream))
                print(f"result clients={c} rps={r['rps']:.2f} tok_s={r['tok_s']:.1f} p50_s={r['p50']:.3f} "
                      f"p99_s={r['p99']:.3f} ttft_p50_s={r['ttft_p50']:.3f} mean_batch={r['mean_batch']:.2f} "
                      f"errors={len(r['errors'])} requests={r['requests']}", flush=True)
                base = base or r["tok_s"]
                print(f"{c:>7} {r['rps']:>7.2f} {r['tok_s']:>8.1f} {r['p50']:>7.3f} {r['p99']:>7.3f} "
                      f"{r['mean_batch']:>6.2f} {len(r['errors']):>6}   ({r['tok_s'] / base:.2f}x clients=1)")
                for e in r["errors"][:3]:
                    print(f"    error: {e}")
                failed |= bool(r["errors"])
                sys.stdout.flush()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
