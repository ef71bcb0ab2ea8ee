"""9. kill -9: start `extractkit extract` over a folder (stub with a fixed latency), kill it with
SIGKILL at a random moment, run it again, N times; then one run to the end. Every document must be
current exactly once in the ledger and once in the final --out, the ledger must pass
`PRAGMA integrity_check`, and no run may be left `running`. Also measured (no target): requests
the stub answered more than once for the same document, tier and request (paid twice).

    python -m benchmarks.bench_kill [--size tiny|full] [--documents N] [--kills N] [--latency S]

Exits 3 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, ROOT, document, machine, stub
from benchmarks.bench_faults import doc_of

SIZES = {
    "tiny": {"documents": 40, "kills": 1, "latency": 0.1, "concurrency": 8, "kill_min": 0.2, "kill_max": 0.4},
    "full": {"documents": 1000, "kills": 10, "latency": 0.3, "concurrency": 16, "kill_min": 0.5, "kill_max": 3.0},
}  # fmt: skip
KEY = "sk-bench-kill"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny: a smoke test; full: the figures")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default benchmarks/results/)")
    p.add_argument("--documents", type=int)
    p.add_argument("--kills", type=int)
    p.add_argument("--latency", type=float, help="the stub's seconds per answer")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--kill-min", type=float, help="earliest kill, seconds after the run's first request")
    p.add_argument("--kill-max", type=float, help="latest kill, seconds after the run's first request")
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    ns = p.parse_args(argv)
    for k, v in SIZES[ns.size].items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    rng = random.Random(ns.seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = ns.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        log, ledger, out = tmp / "stub.jsonl", tmp / "ledger.sqlite3", tmp / "out.jsonl"
        for f in (log, ledger, out, tmp / "ledger.sqlite3-wal", tmp / "ledger.sqlite3-shm"):
            f.unlink(missing_ok=True)
        folder = tmp / "docs"
        folder.mkdir(exist_ok=True)
        inputs = set()
        for i in range(ns.documents):
            ref = f"DOC-{i:05d}"
            (folder / f"{ref}.txt").write_text(f"Ref: {ref}\n" + document(i + 1, padding=3))
            inputs.add(ref)
        env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=str(ROOT))
        env.pop("OPENAI_BASE_URL", None)
        kills: list[dict[str, Any]] = []
        with stub(faults=1, log=log, latency=ns.latency, seed=ns.seed) as s:
            config = tmp / "extractkit.toml"
            config.write_text(f'schema = "benchmarks._common:Invoice"\n[[tiers]]\nkind = "zero_shot"\n'
                              f'model = "gpt-4o-mini"\nbase_url = "{s.base_url}"\ntimeout_s = 30\n')  # fmt: skip
            cmd = [sys.executable, "-m", "extractkit", "extract", str(folder), "--config", str(config),
                   "--ledger", str(ledger), "--out", str(out), "--concurrency", str(ns.concurrency), "--json"]  # fmt: skip
            for _ in range(ns.kills):
                at = rng.uniform(ns.kill_min, ns.kill_max)
                before = s.stats()["requests"]
                proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)  # fmt: skip
                # the clock starts at the run's first request (the CLI's start-up time varies a lot)
                while proc.poll() is None and s.stats()["requests"] == before:
                    time.sleep(0.02)
                try:
                    code = proc.wait(timeout=at)  # finished before the kill
                    killed = False
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
                    killed = True
                assert proc.stderr is not None
                err = proc.stderr.read().decode(errors="replace")
                proc.stderr.close()
                kills.append({"after_s": round(at, 2), "killed": killed, "exit": code, "stderr": err[-500:]})
                print(f"run {len(kills)}: {'killed' if killed else f'exited {code}'} after {at:.2f} s", flush=True)
            t0 = time.perf_counter()
            final = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
            final_s = time.perf_counter() - t0
            time.sleep(ns.latency + 0.2)  # let requests of killed runs still in the stub finish
        (tmp / "final.stdout").write_text(final.stdout)
        (tmp / "final.stderr").write_text(final.stderr)
        figures = measure(inputs, log, ledger, out)
    return summarise(ns, kills, final, final_s, figures)


def measure(inputs: set[str], log: Path, ledger: Path, out: Path) -> dict[str, Any]:
    answered: Counter[tuple[str, str, str]] = Counter()
    received = 0
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "answered":
            answered[(e["doc"], e["model"], e["request"])] += 1
        else:
            received += 1
    in_out: Counter[str] = Counter()
    for line in out.read_text().splitlines() if out.exists() else []:
        in_out[doc_of(json.loads(line).get("path")) or "?"] += 1
    db = sqlite3.connect(ledger)
    current: Counter[str] = Counter(doc_of(p) or "?" for (p,) in db.execute(
        "SELECT path FROM extractions WHERE superseded_by IS NULL AND forced_tier IS NULL"))  # fmt: skip
    every: Counter[str] = Counter(doc_of(p) or "?" for (p,) in db.execute("SELECT path FROM extractions"))
    runs = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    return {
        "requests_received": received, "requests_answered": sum(answered.values()),
        "paid_twice": sum(c - 1 for c in answered.values() if c > 1),
        "documents_paid_twice": len({k[0] for k, c in answered.items() if c > 1}),
        "current_not_once": sum(1 for d in inputs if current[d] != 1),
        "lost_ledger": len(inputs - set(current)), "duplicated_ledger": sum(1 for d in inputs if current[d] > 1),
        "extractions_total": sum(every.values()),
        "lost_out": len(inputs - set(in_out)), "duplicated_out": sum(1 for d in inputs if in_out[d] > 1),
        "runs": runs, "integrity": integrity,
    }  # fmt: skip


def summarise(ns: argparse.Namespace, kills: list[dict[str, Any]], final: subprocess.CompletedProcess[str],
              final_s: float, f: dict[str, Any]) -> int:  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    n_killed = sum(k["killed"] for k in kills)
    rows = [
        {"measure": "documents not current exactly once in the ledger", "value": f["current_not_once"], "target": "0"},
        {"measure": "documents lost / duplicated in the final --out", "value": f["lost_out"] + f["duplicated_out"],
         "target": "0"},
        {"measure": "integrity_check ok", "value": int(f["integrity"] == "ok"), "target": "1"},
        {"measure": "runs left 'running'", "value": f["runs"].get("running", 0), "target": "0"},
        {"measure": "final run exit code", "value": final.returncode, "target": "0"},
        {"measure": "runs killed (of the kill runs)", "value": n_killed, "target": ""},
        {"measure": "runs marked 'interrupted'", "value": f["runs"].get("interrupted", 0), "target": ""},
        {"measure": "requests paid twice (same document, tier, request)", "value": f["paid_twice"], "target": ""},
        {"measure": "  documents with a request paid twice", "value": f["documents_paid_twice"], "target": ""},
        {"measure": "requests answered by the stub (documents)", "value": f["requests_answered"],
         "baseline": ns.documents, "target": ""},
        {"measure": "extractions in the ledger (current or superseded)", "value": f["extractions_total"], "target": ""},
        {"measure": "seconds for the final run", "value": round(final_s, 1), "target": ""},
    ]  # fmt: skip
    for r in rows:
        if r["target"]:
            r["met"] = r["value"] == int(r["target"])
    table = Table(title=f"kill ({ns.size}): {ns.documents} documents, {ns.kills} kill -9, latency {ns.latency} s, "
                        f"concurrency {ns.concurrency}")  # fmt: skip
    for col in ("measure", "value", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for r in rows:
        met = r.get("met")
        table.add_row(r["measure"], str(r["value"]), r["target"], "-" if met is None else ("yes" if met else "NO"))
    console = Console(width=160)
    console.print(table)
    console.print(f"runs by status: {f['runs']}; integrity_check: {f['integrity']}", highlight=False)
    if final.returncode:
        console.print(f"final run stderr: {final.stderr[-2000:]}", highlight=False, markup=False)
    failed = [r["measure"] for r in rows if r.get("met") is False]
    out = ns.out or RESULTS / f"kill-{ns.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "kill", "size": ns.size, "machine": machine(), "rows": rows, "figures": f, "kills": kills,
        "failed_checks": failed,
        "settings": {k: getattr(ns, k) for k in ("documents", "kills", "latency", "concurrency", "kill_min",
                                                  "kill_max", "seed")},
    }, indent=2))  # fmt: skip
    print(f"wrote {out}")
    if failed:
        print("FAILED checks: " + "; ".join(failed))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
