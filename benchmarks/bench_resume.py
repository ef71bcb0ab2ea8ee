"""4. Resume: run `extractkit extract` over a folder of 10,000 documents (stub at zero latency),
then run the same command again. Targets for the rerun: 0 requests, <= 5 s. The first run, in
the same benchmark, is the baseline the rerun is compared with.

    python -m benchmarks.bench_resume [--size tiny|full]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, args, report, stub
from benchmarks.bench_throughput import make_docs

SIZES = {"tiny": {"documents": 50}, "full": {"documents": 10_000}}


def run_cli(folder: Path, config: Path, ledger: Path, out: Path) -> float:
    env = dict(os.environ, OPENAI_API_KEY="sk-bench", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "extractkit", "extract", str(folder), "--config", str(config), "--ledger", str(ledger),
         "--out", str(out), "--concurrency", "64", "--json"],
        env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    return elapsed


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    n = size["documents"]
    with tempfile.TemporaryDirectory() as tmp, stub() as s:
        folder = Path(tmp) / "docs"
        make_docs(folder, n)
        config = Path(tmp) / "extractkit.toml"
        config.write_text(f'schema = "benchmarks._common:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                          f'base_url = "{s.base_url}"\nmax_reasks = 0\n')  # fmt: skip
        ledger, out = Path(tmp) / "ledger.sqlite3", Path(tmp) / "out.jsonl"
        first = run_cli(folder, config, ledger, out)
        sent_first = s.stats()["requests"]
        s.reset()
        rerun = run_cli(folder, config, ledger, out)
        sent_rerun = s.stats()["requests"]
        lines = sum(1 for _ in out.open())
    rows = [
        {"measure": f"rerun of a finished {n:,}-document batch: seconds (baseline: the first run)", "value": rerun,
         "baseline": first, "ratio": rerun / first, "target": "<= 5 s", "met": rerun <= 5.0},
        {"measure": "  requests sent by the rerun (first run sent)", "value": sent_rerun, "baseline": sent_first,
         "ratio": None, "target": "0", "met": sent_rerun == 0},
        {"measure": "  lines in --out after the rerun", "value": lines, "baseline": n, "ratio": lines / n,
         "target": "one per document", "met": lines == n},
    ]  # fmt: skip
    report("resume", ns, rows)


if __name__ == "__main__":
    main()
