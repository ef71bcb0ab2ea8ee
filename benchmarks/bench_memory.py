"""5. Memory: `extractkit extract` over a generated folder of 100,000 documents (stub at zero
latency, ledger and --out on), peak RSS of the process. Baseline in the same run: the same command
over 1,000 documents, so the ratio shows how memory grows with the size of a batch. Target:
<= 300 MB.

    python -m benchmarks.bench_memory [--size tiny|full]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import ROOT, args, report, stub
from benchmarks.bench_throughput import make_docs

SIZES = {"tiny": {"documents": 200, "baseline": 20}, "full": {"documents": 100_000, "baseline": 1_000}}
MEASURE = (
    "import resource, runpy, sys\n"
    "sys.argv = ['extractkit'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('extractkit', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "else:\n"
    "    code = 0\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def peak_rss_mb(folder: Path, config: Path, tmp: Path, name: str) -> float:
    env = dict(os.environ, OPENAI_API_KEY="sk-bench", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, "extract", str(folder), "--config", str(config),
         "--ledger", str(tmp / f"{name}.sqlite3"), "--out", str(tmp / f"{name}.jsonl"), "--concurrency", "64", "--json"],
        env=env, capture_output=True, text=True, timeout=7200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return kb / 1024


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    with tempfile.TemporaryDirectory() as tmp_, stub() as s:
        tmp = Path(tmp_)
        config = tmp / "extractkit.toml"
        config.write_text(f'schema = "benchmarks._common:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                          f'base_url = "{s.base_url}"\nmax_reasks = 0\n')  # fmt: skip
        small, big = tmp / "small", tmp / "big"
        make_docs(small, size["baseline"])
        make_docs(big, size["documents"])
        base = peak_rss_mb(small, config, tmp, "small")
        peak = peak_rss_mb(big, config, tmp, "big")
        served = s.stats()["ok"]
    n = size["documents"]
    rows = [
        {"measure": f"peak RSS, MB: {n:,} documents (baseline: {size['baseline']:,})", "value": peak,
         "baseline": base, "ratio": peak / base, "target": "<= 300 MB", "met": peak <= 300},
        {"measure": "  requests served", "value": served, "baseline": n + size["baseline"], "ratio": None,
         "target": ""},
    ]  # fmt: skip
    report("memory", ns, rows, {"self_rusage_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})


if __name__ == "__main__":
    main()
