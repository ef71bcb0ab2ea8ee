"""Run every benchmark in turn (they share the machine, so never in parallel).

    python -m benchmarks.run_all [--size tiny|full]

Each script prints its table and writes benchmarks/results/NAME-SIZE.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks._common import ROOT

SCRIPTS = ["bench_overhead", "bench_throughput", "bench_ratelimit", "bench_resume", "bench_memory",
            "bench_report", "bench_fewshot", "bench_faults", "bench_kill", "bench_workers",
            "bench_crash", "bench_shared_limit", "bench_waves", "bench_ocr"]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    size = p.parse_args().size
    failed = []
    for name in SCRIPTS:
        t0 = time.perf_counter()
        print(f"== {name} ({size})", flush=True)
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", "--size", size], cwd=ROOT)
        print(f"== {name}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
