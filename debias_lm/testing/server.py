"""Start ``debias-lm serve`` on 127.0.0.1 for tests and load scripts, wait until it answers, stop it afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


@dataclasses.dataclass
class LocalServer:
    url: str  # http://127.0.0.1:PORT
    model: str  # the served model id (what requests name in "model")
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


class ServerStartError(RuntimeError):
    """The server exited or did not answer /health in time; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_local(model: str | os.PathLike, log: str | os.PathLike, *, args: Sequence[str] = (),
                vllm_args: Sequence[str] = ("--enforce-eager", "--seed", "0"), timeout_s: float = 300.0,
                env: dict | None = None) -> Iterator[LocalServer]:
    """``debias-lm serve --model MODEL --port <free> ARGS -- VLLM_ARGS`` bound to 127.0.0.1 in its own process group.

    Yields a :class:`LocalServer` once ``/health`` answers 200; on exit the whole group gets SIGTERM (SIGKILL
    after 30 s). The server's output goes to ``log``.
    """
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; from debias_lm.cli.main import main; sys.exit(main())",
           "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *args, "--", *vllm_args]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run_env.setdefault("HF_HUB_OFFLINE", "1")
    run_env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine in its own process
    log = Path(log)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=run_env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerStartError(f"server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(f"server did not come up in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            served = json.loads(r.read())["data"][0]["id"]
        yield LocalServer(url=url, model=served, proc=proc, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
