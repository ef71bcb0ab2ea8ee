"""10. Workers: 1, 2 and 4 `extractkit worker` processes on one PostgreSQL ledger and its queue,
against the stub at a fixed latency, each with the same documents in flight; documents/s as a
ratio to one worker (target: 4 workers >= 3.5x).

    python -m benchmarks.bench_workers [--size tiny|full] [--workers 1,2,4] [--per-worker N]

Each case gets a fresh database and ``per_worker x workers`` documents (so every case runs about
as long), queued with `extractkit enqueue`; the workers are started together. The rate is measured
from the queue's own clock: documents / (last job finished - first job claimed), so the processes'
start-up is left out (the wall time from start to the last exit, start-up included, is shown
beside it). Checks: every job done, every document extracted once (the stub answered exactly as
many requests as documents). PostgreSQL: ``EXTRACTKIT_TEST_POSTGRES_URL`` or a throwaway server
started here (tests/pg.py).

The machine's cores are shared by the workers, PostgreSQL and the stub, so the 4-worker case is
bound by the CPU each document costs: each case reports CPU ms per document for the worker
processes (start-up and exit left out), the PostgreSQL server (its backends) and the stub
separately. The stub is the same as for the other benchmarks (no precomputed answers).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, document, report, stub

SIZES = {
    "tiny": {"workers": "1,2", "per_worker": 48, "latency": 0.2, "concurrency": 16,
             "light_workers": "1,2", "light_per_worker": 16, "light_concurrency": 4},
    "full": {"workers": "1,2,4", "per_worker": 1024, "latency": 1.0, "concurrency": 64,
             "light_workers": "1,4", "light_per_worker": 256, "light_concurrency": 16},
}  # fmt: skip
KEY = "sk-bench-workers"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny: a smoke test; full: the figures")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default benchmarks/results/)")
    p.add_argument("--workers", help="comma list of worker counts")
    p.add_argument("--per-worker", type=int, help="documents per worker")
    p.add_argument("--latency", type=float, help="the stub's seconds per answer")
    p.add_argument("--concurrency", type=int, help="documents in flight per worker")
    p.add_argument("--light-workers", help="second series, fewer in flight: worker counts ('' for none)")
    p.add_argument("--light-per-worker", type=int)
    p.add_argument("--light-concurrency", type=int)
    ns = p.parse_args(argv)
    for k, v in SIZES[ns.size].items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    return ns


POSTMASTER: list[int] = []  # the pid of the server started here (its CPU is measured), if any


def postgres() -> tuple[Any, Any]:
    """(a function giving a fresh database URL, a stop function)."""
    sys.path.insert(0, str(ROOT))
    from tests import pg

    cluster = pg.start()
    if isinstance(cluster, str):
        raise SystemExit(f"bench_workers needs PostgreSQL: {cluster}")
    if cluster.owned_dir is not None:
        pidfile = cluster.owned_dir / "data" / "postmaster.pid"
        if pidfile.exists():
            POSTMASTER[:] = [int(pidfile.read_text().split()[0])]
    return cluster.new_database, cluster.stop


def cli(*args: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "extractkit", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def span(url: str) -> tuple[float, int, int]:
    """(seconds from the first claim to the last finish, jobs done, jobs not done) by the DB's clock."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(claimed_at)),"
            " count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state != 'done') FROM work_queue"
        ).fetchone()
    assert row is not None
    return float(row[0] or 0.0), int(row[1]), int(row[2])


def cpu_s(pid: int | None) -> float:
    """CPU seconds used so far by process ``pid``, its children alive and those it has reaped
    (the PostgreSQL server: its backends); 0 when unknown."""
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> list[int]:
        try:
            return [int(x) for x in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
        except (OSError, ValueError):
            return [0, 0, 0, 0]

    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = sum(stat(pid)) + sum(sum(stat(int(c))[:2]) for c in children)  # utime, stime (+ reaped)
    return total / tick


def startup_cpu(tmp: Path, url: str, s: Any, env: dict[str, str]) -> float:
    """CPU seconds of one `extractkit worker` on an empty queue: start-up and exit, no document."""
    import resource

    config = tmp / "extractkit.toml"
    config.write_text(f'schema = "benchmarks._common:Invoice"\n[[tiers]]\nkind = "zero_shot"\n'
                      f'model = "gpt-4o-mini"\nbase_url = "{s.base_url}"\n')  # fmt: skip
    used0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = cli("worker", "-c", str(config), "--ledger", url, env=env)
    w.communicate(timeout=600)
    used1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used1.ru_utime - used0.ru_utime + used1.ru_stime - used0.ru_stime


def one_case(n: int, per_worker: int, concurrency: int, ns: argparse.Namespace, tmp: Path, url: str, s: Any,
             env: dict[str, str], startup: float) -> dict[str, Any]:  # fmt: skip
    import resource

    docs = tmp / f"docs-{n}-{concurrency}"
    docs.mkdir()
    total = n * per_worker
    for i in range(total):
        (docs / f"DOC-{i:06d}.txt").write_text(f"Ref: DOC-{n}-{i:06d}\n" + document(i + 1, padding=3))
    config = tmp / "extractkit.toml"
    config.write_text(f'schema = "benchmarks._common:Invoice"\n[[tiers]]\nkind = "zero_shot"\n'
                      f'model = "gpt-4o-mini"\nbase_url = "{s.base_url}"\ntimeout_s = 60\n')  # fmt: skip
    q = cli("enqueue", str(docs), "-c", str(config), "--ledger", url, env=env)
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    s.reset()
    t0 = time.perf_counter()
    server = POSTMASTER[0] if POSTMASTER else None
    used0, pg0, stub0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_s(server), cpu_s(s.proc.pid)
    workers = [cli("worker", "-c", str(config), "--ledger", url, "--concurrency", str(concurrency), "--json",
                   env=env) for _ in range(n)]  # fmt: skip
    codes = []
    for w in workers:
        _, err = w.communicate(timeout=3600)
        codes.append(w.returncode)
        if w.returncode:
            print(err[-2000:], file=sys.stderr)
    wall = time.perf_counter() - t0
    used1, pg1, stub1 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_s(server), cpu_s(s.proc.pid)
    worker_cpu = used1.ru_utime - used0.ru_utime + used1.ru_stime - used0.ru_stime - n * startup
    seconds, done, not_done = span(url)
    answered = s.stats()["ok"]
    rate = total / seconds if seconds else 0.0
    cpu = {"workers": round(worker_cpu, 2), "postgres": round(pg1 - pg0, 2), "stub": round(stub1 - stub0, 2)}
    print(f"{n} worker(s) x {concurrency}: {total} documents in {seconds:.1f} s ({rate:.1f}/s), wall {wall:.1f} s, "
          f"exits {codes}, CPU s {cpu}", flush=True)
    return {"workers": n, "concurrency": concurrency, "documents": total, "seconds": round(seconds, 2),
            "wall_s": round(wall, 2), "docs_per_s": round(rate, 2), "done": done, "not_done": not_done,
            "answered": answered, "exits": codes, "cpu_s": cpu,
            "cpu_ms_per_doc": round(1000 * sum(cpu.values()) / total, 2),
            "cpu_ms_per_doc_by_process": {k: round(1000 * v / total, 2) for k, v in cpu.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    series = [(int(x), ns.per_worker, ns.concurrency) for x in str(ns.workers).split(",")]
    light = [(int(x), ns.light_per_worker, ns.light_concurrency) for x in str(ns.light_workers).split(",") if x]
    new_db, stop = postgres()
    env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=str(ROOT), EXTRACTKIT_LEDGER="")
    env.pop("OPENAI_BASE_URL", None)
    cases = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name, stub(latency=ns.latency) as s:
            startup = startup_cpu(Path(tmp_name), new_db(), s, env)
            print(f"CPU of one worker's start-up and exit (left out below): {startup:.2f} s", flush=True)
            for n, per, conc in series + light:
                cases.append(one_case(n, per, conc, ns, Path(tmp_name), new_db(), s, env, startup))
    finally:
        stop()
    rows: list[dict[str, Any]] = []
    cores = os.cpu_count() or 1
    for c in cases:
        first = next(x for x in cases if x["concurrency"] == c["concurrency"])  # one worker, same in flight
        ratio = round(c["docs_per_s"] / (first["docs_per_s"] or 1.0), 3)
        ideal = c["concurrency"] / ns.latency
        row: dict[str, Any] = {"measure": f"{c['workers']} worker(s) x {c['concurrency']} in flight, docs/s",
                               "value": c["docs_per_s"], "baseline": first["docs_per_s"], "ratio": ratio,
                               "target": "", "met": None}  # fmt: skip
        if c["workers"] == 4 and c["concurrency"] == ns.concurrency:
            row["target"], row["met"] = ">= 3.5x one worker", ratio >= 3.5
        rows.append(row)
        rows.append({"measure": f"  share of the ideal ({c['workers']} x {ideal:g}/s)",
                     "value": round(c["docs_per_s"] / (ideal * c["workers"]), 3)})  # fmt: skip
        # what the machine's cores allow at this CPU cost per document (workers + PostgreSQL + stub)
        rows.append({"measure": f"  CPU ms per document (workers, PostgreSQL, stub; {cores} cores: at most "
                                f"{1000 * cores / max(c['cpu_ms_per_doc'], 0.01):.0f} docs/s)",
                     "value": c["cpu_ms_per_doc"]})  # fmt: skip
        for proc, ms in c["cpu_ms_per_doc_by_process"].items():
            rows.append({"measure": f"    of which {proc}", "value": ms})
    checks_ok = all(c["not_done"] == 0 and c["answered"] == c["documents"] and not any(c["exits"]) for c in cases)
    rows.append({"measure": "every job done, each document answered once, every worker exit 0",
                 "value": int(checks_ok), "target": "1", "met": checks_ok})  # fmt: skip
    report("workers", ns, rows, {"cases": cases, "startup_cpu_s": round(startup, 2),
                                 "settings": {k: getattr(ns, k) for k in SIZES["full"]}})  # fmt: skip
    return 0 if checks_ok else 3


if __name__ == "__main__":
    sys.exit(main())
