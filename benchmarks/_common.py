"""Shared by the benchmark scripts: the stub server as a subprocess, timing, results."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from extractkit import Grounded

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class Invoice(BaseModel):
    """The benchmark schema: what the stub answers."""

    issuer: Annotated[str, Grounded()]
    total: Annotated[float, Grounded()]


def document(i: int, padding: int = 0) -> str:
    return f"From: Firm {i} Ltd\nTotal: {i}.50\n" + ("Line item, quantity 1, see terms.\n" * padding)


class Stub:
    def __init__(self, proc: subprocess.Popen[str], port: int):
        self.proc, self.port = proc, port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()


@contextlib.contextmanager
def stub(**options: Any) -> Iterator[Stub]:
    """The stub server in its own process (so its CPU is not the client's event loop)."""
    args = [sys.executable, "-m", "benchmarks.stub_server"]
    for k, v in options.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        yield Stub(proc, port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def args(description: str, sizes: dict[str, dict[str, Any]]) -> tuple[argparse.Namespace, dict[str, Any]]:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", choices=sorted(sizes), default="full", help="tiny: a smoke test; full: the targets")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default benchmarks/results/)")
    ns = p.parse_args()
    return ns, sizes[ns.size]


def report(name: str, ns: argparse.Namespace, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """Print a table (name, value, baseline, ratio, target, met) and write JSON."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name} ({ns.size})")
    for col in ("measure", "extractkit", "baseline", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for r in rows:
        met = r.get("met")
        table.add_row(r["measure"], _fmt(r.get("value")), _fmt(r.get("baseline")), _fmt(r.get("ratio")),
                      str(r.get("target", "")), "-" if met is None else ("yes" if met else "NO"))  # fmt: skip
    Console().print(table)
    out = ns.out or RESULTS / f"{name}-{ns.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "size": ns.size, "machine": machine(), "rows": rows,
                               **(extra or {})}, indent=2))  # fmt: skip
    print(f"wrote {out}")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0
