"""Each benchmark script runs at its tiny size, so the scripts do not rot. No timing is asserted
here: the numbers live in BENCHMARKS.md, measured at full size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.stub_server import FAULT_KINDS

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench_overhead", "bench_throughput", "bench_ratelimit", "bench_resume", "bench_memory",
            "bench_report", "bench_fewshot", "bench_faults", "bench_kill", "bench_workers",
            "bench_crash", "bench_shared_limit", "bench_waves", "bench_ocr"]  # fmt: skip
# checks rather than timings: they exit 3 when a check fails (the figures are still written)
CHECKS = ["bench_faults", "bench_kill", "bench_waves"]


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s not in CHECKS])
def test_benchmark_runs_at_tiny_size(name, tmp_path, request):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if name == "bench_shared_limit":  # workers sharing a PostgreSQL database: the session's server
        env["EXTRACTKIT_TEST_POSTGRES_URL"] = request.getfixturevalue("pg_cluster").base_url
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--size", "tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["size"] == "tiny" and data["machine"]["cpus"] and data["rows"]
    for row in data["rows"]:
        assert isinstance(row["value"], (int, float)), row


def test_fault_plan_puts_every_kind_on_every_tier():
    from benchmarks.bench_faults import MODELS, plan

    planned = {plan(i)[:2] for i in range(240)}
    assert planned == {(k, t) for k in ("none", *FAULT_KINDS) for t in MODELS}
    kind, tier, faults = plan(17 * 2 + 5)  # third tier: the two before refuse
    assert tier == "fine_tuned" and list(faults.values()) == ["refusal", "refusal", kind]


def test_run_all_lists_every_script():
    from benchmarks.run_all import SCRIPTS as listed

    assert listed == SCRIPTS
    assert sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", CHECKS)
def test_check_benchmark_runs_at_tiny_size(name, tmp_path):
    """The harness runs end to end, writes its figures, and its checks pass at tiny size too
    (one document per fault kind: every fault recorded with its outcome, nothing lost or
    duplicated, the key found nowhere). The full-size figures are in BENCHMARKS.md."""
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--size", "tiny", "--out", str(out),
                           "--keep", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    data = json.loads(out.read_text())
    assert proc.returncode == 0 and not data["failed_checks"], (data["failed_checks"], proc.stdout[-3000:])
    assert data["size"] == "tiny" and data["rows"]
    for row in data["rows"]:
        assert isinstance(row["value"], (int, float)), row
    if name == "bench_faults":  # one document per fault kind: each was injected and looked for
        assert {k["fault"] for k in data["faults"] if k["injected"]} == {"none", *FAULT_KINDS}
    elif name == "bench_waves":  # killed twice (wave 1 submitted, wave 2 mid-ingest), then resumed
        assert data["kills"][0]["killed"] and data["kills"][-1]["exit"] == 0 and data["waves"]
    else:
        assert data["figures"]["requests_answered"] >= data["settings"]["documents"]
