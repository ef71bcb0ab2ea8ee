"""Shared limit: 4 worker processes under one 120,000 TPM limit (issue 17, section 6). The stub
enforces the limit as a provider does (characters / 4 + max_tokens a request, 1 s of burst, 429
with Retry-After beyond it); each worker runs the batch runner at 64 in flight on one PostgreSQL
ledger, with the limiter the ledger gives it (``limiter_for``: shared). Targets: together >= 0.95x
of the limit, < 1 % of requests answered 429. Baseline: the same 4 workers each pacing itself to
the limit (the in-process ``RateLimiter``, what they had before the limit was shared).

    python -m benchmarks.bench_shared_limit [--size tiny|full]

PostgreSQL: a throwaway server (tests/pg.py), or $EXTRACTKIT_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, Invoice, args, document, report, stub

SIZES = {"tiny": {"tpm": 120_000, "seconds": 3, "workers": 4}, "full": {"tpm": 120_000, "seconds": 60, "workers": 4}}
MODEL = "gpt-4o-mini"
PADDING = 20  # as bench_ratelimit: a prompt of a few hundred tokens


def worker(spec: dict[str, Any]) -> None:
    """One worker process: wait for the go on stdin, run the batch, print its figures."""
    from extractkit import Extractor, ZeroShot
    from extractkit.batch import BatchRunner, RateLimiter, SharedLimiter, limiter_for
    from extractkit.ledger import Ledger

    async def main() -> dict[str, Any]:
        ex = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, base_url=spec["base_url"], api_key="sk-bench",
                                                max_reasks=0, transport="aiohttp")])  # fmt: skip
        with Ledger(spec["pg"]) as ledger:  # one PostgreSQL ledger for the 4 workers
            # the limiter the ledger gives (shared), or each worker's own (the baseline)
            limiter = limiter_for(ledger, tpm=spec["tpm"]) if spec["shared"] else RateLimiter(tpm=spec["tpm"])
            runner = BatchRunner(ex, ledger, concurrency=64, freeze_gc=True, limiter=limiter)
            # a worker that has been running a while: connections open, code paths warm
            await BatchRunner(ex, ledger, concurrency=1, limiter=limiter).run([Path(spec["warm"])])
            warm_leases = getattr(limiter, "leases", 0)
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            start = time.monotonic()
            summary = await runner.run([Path(spec["folder"])])
            end = time.monotonic()
        await ex.aclose()
        leases = getattr(limiter, "leases", 0) - warm_leases  # during the run
        if isinstance(limiter, SharedLimiter):
            await limiter.aclose()
        return {"start": start, "end": end, "documents": summary.documents, "ok": summary.ok, "leases": leases}

    print(json.dumps(asyncio.run(main())), flush=True)


def run_workers(specs: list[dict[str, Any]], before_go: Any) -> list[dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.bench_shared_limit", "--worker", json.dumps(s)],
                         cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        for s in specs
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line == "ready", line
    before_go()  # documents written, the stub's bucket refilled, its counters at zero
    for p in procs:  # together
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=3600)
        assert p.returncode == 0, text
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def steady_rate(stats: dict[str, Any], requests: int) -> float:
    """Tokens/minute between the first and the last request the stub accepted (all but the last
    request's tokens over that span: every request costs about the same here)."""
    span = stats["last_accepted"] - stats["first_accepted"]
    per = stats["tokens_accepted"] / max(1, requests)
    return (stats["tokens_accepted"] - per) / span * 60 if span > 0 else 0.0


def postgres() -> Any:
    url = os.environ.get("EXTRACTKIT_TEST_POSTGRES_URL")
    from tests import pg

    cluster = pg.Cluster(url) if url else pg.start()
    if isinstance(cluster, str):
        raise SystemExit(f"bench_shared_limit needs PostgreSQL: {cluster}")
    return cluster


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    tpm, workers = size["tpm"], size["workers"]
    cluster = postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp, stub(latency=0.2, tpm=tpm, burst_s=1) as s:
            runs: dict[str, Any] = {}
            sizing: dict[str, int] = {}

            def write_documents(folders: list[Path]) -> None:
                """Once the warm-ups told what a request costs at the stub: enough documents for
                ``seconds`` at the limit, dealt to the workers' folders."""
                if not sizing:
                    st = s.stats()
                    per_request = st["tokens_accepted"] / max(1, st["requests"])
                    sizing["n"] = max(2 * workers, int(tpm / 60 * size["seconds"] / per_request))
                for w, folder in enumerate(folders):
                    for i in range(w, sizing["n"], workers):
                        (folder / f"doc{i:06d}.txt").write_text(document(i, PADDING))

            for shared in (True, False):
                pg_url = cluster.new_database()  # a ledger per run: the second must not resume the first
                specs, folders = [], []
                for w in range(workers):
                    folder = Path(tmp) / f"{'shared' if shared else 'own'}{w}"
                    folder.mkdir()
                    folders.append(folder)
                    warm = Path(tmp) / f"warm{shared}{w}"
                    warm.mkdir()
                    (warm / "warm.txt").write_text(document(10**6 + w, PADDING))
                    specs.append({"shared": shared, "pg": pg_url, "tpm": tpm, "base_url": s.base_url,
                                  "folder": str(folder), "warm": str(warm)})  # fmt: skip

                def before_go(folders: list[Path] = folders) -> None:
                    write_documents(folders)
                    time.sleep(1.5)  # the stub's bucket refills after the warm-ups
                    s.reset()

                figures = run_workers(specs, before_go=before_go)
                stats = s.stats()
                elapsed = max(f["end"] for f in figures) - min(f["start"] for f in figures)
                runs["shared" if shared else "own"] = {"workers": figures, "stub": stats, "elapsed_s": elapsed}
    finally:
        cluster.stop()
    sh, own, n = runs["shared"], runs["own"], sizing["n"]
    rate = sh["stub"]["tokens_accepted"] / sh["elapsed_s"] * 60
    steady = steady_rate(sh["stub"], n)
    share_429 = sh["stub"]["rate_limited"] / max(1, sh["stub"]["requests"])
    own_rate = own["stub"]["tokens_accepted"] / own["elapsed_s"] * 60
    own_429 = own["stub"]["rate_limited"] / max(1, own["stub"]["requests"])
    leases = sum(f["leases"] or 0 for f in sh["workers"])
    ok = sum(f["ok"] for f in sh["workers"])
    rows = [
        {"measure": f"{workers} workers: tokens/minute together, limit {tpm:,} ({n} documents)", "value": rate,
         "baseline": tpm, "ratio": rate / tpm, "target": ">= 0.95", "met": rate / tpm >= 0.95},
        {"measure": "  from the first request accepted to the last (steady pace)", "value": steady,
         "baseline": tpm, "ratio": steady / tpm, "target": "(info)"},
        {"measure": "share of requests answered 429", "value": share_429, "baseline": None, "ratio": None,
         "target": "< 0.01", "met": share_429 < 0.01},
        {"measure": "documents extracted", "value": ok, "baseline": n, "ratio": ok / n, "target": "all",
         "met": ok == n},
        {"measure": "database round trips (slices leased) per request", "value": leases / max(1, sh["stub"]["requests"]),
         "baseline": None, "ratio": None, "target": "(info)"},
        {"measure": "  each worker pacing itself: tokens/minute (vs limit)", "value": own_rate, "baseline": tpm,
         "ratio": own_rate / tpm, "target": "(baseline)"},
        {"measure": "  each worker pacing itself: share answered 429", "value": own_429, "baseline": None,
         "ratio": None, "target": "(baseline)"},
    ]  # fmt: skip
    report("shared_limit", ns, rows, {"runs": runs, "settings": {"tpm": tpm, "workers": workers, "documents": n}})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
