"""The local model server process: llama.cpp's own C++ server, embedded by ``xllamacpp``.

Run as ``python -m extractkit.local._serve --model GGUF --port P --n-ctx N --n-parallel K``
(``N`` tokens for each of ``K`` slots): it builds the server, which listens on 127.0.0.1 in
background threads, and waits until it is told to stop (SIGTERM, SIGINT) or, with
``--parent PID``, until that process is gone (a parent killed with SIGKILL runs no atexit
handler: the server must not outlive it). It is a process of its own so that a crash or a leak
in native code never takes the caller down.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any


def params(model: str, *, port: int, n_ctx: int, n_parallel: int, alias: str) -> Any:
    """xllamacpp's ``CommonParams`` for the server (see ``extractkit.local.server_settings``)."""
    import xllamacpp

    from . import server_settings

    p = xllamacpp.CommonParams()
    p.model.path = model
    p.hostnames = ["127.0.0.1"]
    p.port = port
    for name, value in server_settings(n_ctx=n_ctx, n_parallel=n_parallel).items():
        setattr(p, name, value)
    p.model_alias = {alias}
    return p


def _parent_gone(pid: int) -> bool:
    if os.getppid() != pid:  # re-parented: the parent died
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m extractkit.local._serve")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n-ctx", type=int, required=True, help="context window of each slot")
    ap.add_argument("--n-parallel", type=int, default=1)
    ap.add_argument("--alias", default="local")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = ap.parse_args(argv)

    import xllamacpp

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    p = params(args.model, port=args.port, n_ctx=args.n_ctx, n_parallel=args.n_parallel, alias=args.alias)
    server = xllamacpp.Server(p)
    print(f"extractkit: serving at {server.listening_address}/v1", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        if args.parent is not None and _parent_gone(args.parent):
            break
    sys.stderr.flush()
    # the server's threads are native; leaving without running their destructors is the quick
    # and reliable way down (the OS frees the model, the sockets and the KV cache)
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main())
