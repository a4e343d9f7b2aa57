"""Start `phi1 serve` as a real subprocess on a free loopback port, for tests that need it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model_dir: Path, log: Path, *extra_args: str, env: dict | None = None, timeout: float = 120):
    """Yield (base_url, process) once /health answers; terminate the server afterwards."""
    port = free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phi1", "serve", "--model", str(model_dir), "--port", str(port),
             "--device", "cpu", "--dtype", "float32", "--log-level", "warning", *extra_args],
            stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"phi1 serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"phi1 serve did not come up:\n{log.read_text()}")
        time.sleep(0.2)
    try:
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def fail_decode_step(engine, on_call: int, message: str) -> None:
    """Make the engine's decode step raise `message` on its `on_call`-th call."""
    real, calls = engine.step_fn, {"n": 0}

    def flaky(tokens, pos, kv_len):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise RuntimeError(message)
        return real(tokens, pos, kv_len)

    flaky.fixed_shape = False  # the engine passes the live kv_len, as its plain step does
    engine.step_fn = flaky
