"""Each benchmark script runs at its tiny size, so the scripts do not rot. No timing is asserted
here: the numbers live in BENCHMARKS.md, measured at full size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench_overhead", "bench_throughput", "bench_ratelimit", "bench_resume", "bench_memory",
           "bench_report", "bench_fewshot"]  # fmt: skip


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_at_tiny_size(name, tmp_path):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--size", "tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["size"] == "tiny" and data["machine"]["cpus"] and data["rows"]
    for row in data["rows"]:
        assert isinstance(row["value"], (int, float)), row


def test_run_all_lists_every_script():
    from benchmarks.run_all import SCRIPTS as listed

    assert listed == SCRIPTS
    assert sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")) == sorted(SCRIPTS)
