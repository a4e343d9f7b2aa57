"""Throughput and client CPU cost of phi1's LLMClient against a local OpenAI-compatible server.

The server (tests/fake_openai.py) runs in its own process, so `time.process_time()`
in this process is the client's own CPU (user + system) per request. The reference
is the official `openai` package's AsyncOpenAI client (retries off), run the same way.

    python bench/synth_client.py [--requests 2000] [--latency 0.0] [--concurrency 1 16 64]

With --latency > 0 the server waits that long per answer, which shows whether
the client keeps C requests in flight (ideal rate = C / latency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--no-record",
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split()[1]


def messages(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write a short story about a red kite, number {i}."}] for i in range(n)]


def bench_phi1(url: str, conc: int, n: int) -> tuple[float, float, int]:
    from phi1.llm.client import LLMClient

    client = LLMClient(url, "bench", concurrency=conc, timeout=30)
    client.run_chat_many(messages(min(n, 64)), max_tokens=32)  # warm-up: connections, imports
    msgs = messages(n)
    t0, c0 = time.perf_counter(), time.process_time()
    res = client.run_chat_many(msgs, max_tokens=32)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu / n * 1e3, sum(not r.ok for r in res)


def bench_openai(url: str, conc: int, n: int) -> tuple[float, float, int]:
    from openai import AsyncOpenAI

    async def run(msgs):
        client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=30)
        sem = asyncio.Semaphore(conc)

        async def one(m):
            async with sem:
                try:
                    r = await client.chat.completions.create(model="bench", messages=m, max_tokens=32)
                    return bool(r.choices[0].message.content)
                except Exception:
                    return False

        try:
            return await asyncio.gather(*(one(m) for m in msgs))
        finally:
            await client.close()

    asyncio.run(run(messages(min(n, 64))))
    msgs = messages(n)
    t0, c0 = time.perf_counter(), time.process_time()
    ok = asyncio.run(run(msgs))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu / n * 1e3, sum(not x for x in ok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.0, help="server-side seconds per answer")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--no-reference", action="store_true", help="skip the openai-package reference")
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"server latency {args.latency * 1e3:.0f} ms, {args.requests} requests per row")
    server, url = start_server(args.latency)
    try:
        print(f"{'conc':>5} | {'phi1 req/s':>10} {'phi1 CPU ms/req':>16} | {'openai req/s':>12} "
              f"{'openai CPU ms/req':>18} | {'speed x':>7} {'CPU x':>6}")
        for conc in args.concurrency:
            rate, cpu, fails = bench_phi1(url, conc, args.requests)
            row = f"{conc:>5} | {rate:>10.0f} {cpu:>16.3f} |"
            if args.no_reference:
                print(row + f"{'-':>12} {'-':>18} | {'-':>7} {'-':>6}")
            else:
                orate, ocpu, ofails = bench_openai(url, conc, args.requests)
                print(row + f" {orate:>12.0f} {ocpu:>18.3f} | {rate / orate:>7.2f} {ocpu / cpu:>6.2f}")
                fails += ofails
            if fails:
                print(f"      ({fails} failed requests)")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
