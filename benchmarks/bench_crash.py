"""11. Crashes: four `extractkit worker` processes on one PostgreSQL queue, two of them killed with
SIGKILL at random moments of the run. Checks: no document lost, none with two current
extractions, every job done, every job of a dead worker claimed again within the lease (plus one
poll) of the kill. Measured (no target): requests the stub answered twice for the same document
(paid twice: a dead worker's documents in flight at the kill).

    python -m benchmarks.bench_crash [--size tiny|full] [--documents N] [--lease S] [--latency S]

Exits 3 when any check fails. PostgreSQL: ``EXTRACTKIT_TEST_POSTGRES_URL`` or a throwaway server
started here (tests/pg.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, document, report, stub
from benchmarks.bench_faults import doc_of
from benchmarks.bench_workers import postgres

SIZES = {
    "tiny": {"documents": 200, "workers": 4, "kills": 2, "latency": 0.2, "concurrency": 16, "lease": 3.0,
             "kill_min": 0.3, "kill_max": 1.2},
    "full": {"documents": 2000, "workers": 4, "kills": 2, "latency": 1.0, "concurrency": 64, "lease": 10.0,
             "kill_min": 1.0, "kill_max": 5.0},
}  # fmt: skip
KEY = "sk-bench-crash"
POLL_S = 1.0  # an idle worker's poll (batch/_worker.py POLL_S): the reclaim may wait this much more


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny: a smoke test; full: the figures")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default benchmarks/results/)")
    for name in ("documents", "workers", "kills", "concurrency"):
        p.add_argument(f"--{name}", type=int)
    for name in ("latency", "lease", "kill_min", "kill_max"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float)
    p.add_argument("--seed", type=int, default=11)
    ns = p.parse_args(argv)
    for k, v in SIZES[ns.size].items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    return ns


def db_now(url: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM now())").fetchone()
    assert row is not None
    return float(row[0])


def figures(url: str, inputs: set[str], log: Path, kills: list[dict[str, Any]]) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url) as conn:
        current: Counter[str] = Counter(doc_of(p) or "?" for (p,) in conn.execute(
            "SELECT path FROM extractions WHERE superseded_by IS NULL AND status IN ('ok', 'failed')"
            " AND forced_tier IS NULL"))  # fmt: skip
        every = conn.execute("SELECT count(*) FROM extractions").fetchone()
        states = dict(conn.execute("SELECT state, count(*) FROM work_queue GROUP BY state").fetchall())
        reclaimed = conn.execute(
            "SELECT reclaimed_from, extract(epoch FROM claimed_at) FROM work_queue WHERE reclaims > 0"
        ).fetchall()
        dead = {k["worker"] for k in kills}
        # the jobs the dead workers held at their death: each must have been claimed again
        held = conn.execute(
            "SELECT count(*) FROM work_queue WHERE worker_id = ANY(%s) AND state != 'done'", (list(dead),)
        ).fetchone()
    answered: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "answered":
            answered[e["doc"]] += 1
    killed_at = {k["worker"]: k["at"] for k in kills}
    # each reclaimed job against the kill of the worker it was taken from
    delays = [round(float(at) - killed_at[w], 2) for w, at in reclaimed if w in killed_at]
    return {
        "lost": len(inputs - set(current)), "duplicated": sum(1 for d in inputs if current[d] > 1),
        "extractions_total": int(every[0]) if every else 0, "states": states,
        "reclaimed_jobs": len(reclaimed), "held_by_dead_not_done": int(held[0]) if held else 0,
        "max_reclaim_after_kill_s": max(delays, default=0.0),
        "reclaimed_from_others": sum(1 for w, _ in reclaimed if w not in killed_at),
        "paid_twice": sum(c - 1 for d, c in answered.items() if c > 1 and d in inputs),
        "documents_paid_twice": sum(1 for d, c in answered.items() if c > 1 and d in inputs),
        "answered": sum(answered.values()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    rng = random.Random(ns.seed)
    new_db, stop = postgres()
    env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=str(ROOT), EXTRACTKIT_LEDGER="")
    env.pop("OPENAI_BASE_URL", None)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            url = new_db()
            docs, log = tmp / "docs", tmp / "stub.jsonl"
            docs.mkdir()
            inputs = set()
            for i in range(ns.documents):
                ref = f"DOC-{i:05d}"
                (docs / f"{ref}.txt").write_text(f"Ref: {ref}\n" + document(i + 1, padding=3))
                inputs.add(ref)
            with stub(latency=ns.latency, faults=1, log=log, seed=ns.seed) as s:
                config = tmp / "extractkit.toml"
                config.write_text(f'schema = "benchmarks._common:Invoice"\n[[tiers]]\nkind = "zero_shot"\n'
                                  f'model = "gpt-4o-mini"\nbase_url = "{s.base_url}"\ntimeout_s = 60\n')  # fmt: skip
                base = [sys.executable, "-m", "extractkit"]
                q = subprocess.run([*base, "enqueue", str(docs), "-c", str(config), "--ledger", url], cwd=ROOT,
                                   env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
                assert q.returncode == 0, q.stderr
                cmd = [*base, "worker", "-c", str(config), "--ledger", url, "--concurrency", str(ns.concurrency),
                       "--lease", str(ns.lease), "--json"]  # fmt: skip
                procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True) for _ in range(ns.workers)]  # fmt: skip
                while s.stats()["requests"] == 0:  # the clock starts at the first request
                    time.sleep(0.02)
                t0 = time.monotonic()
                victims = rng.sample(range(ns.workers), ns.kills)
                plan = sorted((rng.uniform(ns.kill_min, ns.kill_max), v) for v in victims)
                kills = []
                for at, v in plan:
                    time.sleep(max(0.0, at - (time.monotonic() - t0)))
                    if procs[v].poll() is not None:
                        continue  # it finished first
                    procs[v].send_signal(signal.SIGKILL)
                    kills.append({"process": v, "after_s": round(at, 2), "at": db_now(url), "pid": procs[v].pid})
                    print(f"killed worker {v} (pid {procs[v].pid}) {at:.2f} s after the first request", flush=True)
                results = []
                for i, p in enumerate(procs):
                    out, err = p.communicate(timeout=3600)
                    results.append({"process": i, "exit": p.returncode, "summary": json.loads(out) if out.strip()
                                    and p.returncode == 0 else None, "stderr": err[-1000:]})  # fmt: skip
                wall = time.monotonic() - t0
                time.sleep(ns.latency + 0.3)  # the stub logs answers to requests of the dead workers
                import psycopg

                with psycopg.connect(url) as conn:
                    ids = {r[0] for r in conn.execute("SELECT id FROM work_workers").fetchall()}
                for k in kills:
                    k["worker"] = next((w for w in ids if f":{k['pid']}:" in w), "?")
                f = figures(url, inputs, log, kills)
    finally:
        stop()
    survivors_ok = all(r["exit"] == 0 for r in results if r["process"] not in {k["process"] for k in kills})
    limit = ns.lease + POLL_S + 1.0
    rows = [
        {"measure": "documents lost (no current extraction)", "value": f["lost"], "target": "0"},
        {"measure": "documents with two current extractions", "value": f["duplicated"], "target": "0"},
        {"measure": "jobs not done", "value": sum(v for k, v in f["states"].items() if k != "done"), "target": "0"},
        {"measure": "surviving workers exit 0", "value": int(survivors_ok), "target": "1"},
        {"measure": f"latest reclaim, seconds after its worker's kill (lease {ns.lease:g} s)",
         "value": f["max_reclaim_after_kill_s"], "target": f"<= {limit:g}"},
        {"measure": "workers killed", "value": len(kills), "target": ""},
        {"measure": "jobs reclaimed from dead workers", "value": f["reclaimed_jobs"], "target": ""},
        {"measure": "requests paid twice (answered twice for one document)", "value": f["paid_twice"], "target": ""},
        {"measure": "requests answered by the stub", "value": f["answered"], "baseline": ns.documents, "target": ""},
        {"measure": "extractions in the ledger (current or superseded)", "value": f["extractions_total"],
         "target": ""},
        {"measure": "seconds from the first request to the last exit", "value": round(wall, 1), "target": ""},
    ]  # fmt: skip
    for r in rows:
        if r["target"].startswith("<="):
            r["met"] = r["value"] <= limit
        elif r["target"]:
            r["met"] = r["value"] == int(r["target"])
    report("crash", ns, rows, {"figures": f, "kills": kills, "workers": results,
                               "settings": {k: getattr(ns, k) for k in SIZES["full"]}})  # fmt: skip
    failed = [r["measure"] for r in rows if r.get("met") is False]
    if failed:
        print("FAILED checks: " + "; ".join(failed))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
