"""6. The report over a ledger of 10,000,000 attempts (issue 17; 1,000,000 before), on SQLite and,
when a PostgreSQL server can be started (tests/pg.py), on PostgreSQL: a chain of three tiers over 60
days, with re-asks, failures, rejected fields and costs, generated straight into the plain tables
(bulk inserts; COPY on PostgreSQL), then the rollups built from them by ``rebuild_rollups`` (the
backfill a ledger written before the rollups gets). Timed: ``report`` unfiltered, ``--run`` (its one
run: every document) and ``--since`` 7 days, each the best of 3. Baselines in the same run: the
full-scan report (``USE_ROLLUPS = False``, SQLite: the report before the rollups) and one grouped
scan of the attempts table. Target: <= 2 s on both engines.

    python -m benchmarks.bench_report [--size tiny|1m|full]

``EXTRACTKIT_BENCH_ENGINES=sqlite`` (or ``postgresql``) measures one engine only.
``EXTRACTKIT_BENCH_KEEP=DIR`` keeps the generated ledgers and reuses them in later runs (building 10,000,000
attempts takes many minutes): the SQLite one as ``DIR/report-SIZE.sqlite3``; on PostgreSQL the database
``extractkit_bench_report_SIZE`` of the server ``EXTRACTKIT_TEST_POSTGRES_URL`` names (a throwaway server is
deleted at the end); ``EXTRACTKIT_BENCH_FULL_SCAN=0`` skips the full-scan baseline. A kept ledger ages: ``--since`` 7 days covers a little less of it every hour.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import Invoice, args, report
from extractkit import Extractor, FewShot, FineTuned, ZeroShot
from extractkit.ledger import Ledger, new_id, rebuild_rollups
from extractkit.report import Scope, build_report

SIZES = {"tiny": {"attempts": 20_000}, "1m": {"attempts": 1_000_000}, "full": {"attempts": 10_000_000}}
PATHS = [  # (share, attempts per tier as (tier, outcome) lists)
    (0.50, [("zero_shot", "ok")]),
    (0.25, [("zero_shot", "invalid_json"), ("zero_shot", "schema_invalid"), ("few_shot", "ok")]),
    (0.15, [("zero_shot", "invalid_json"), ("zero_shot", "ungrounded"), ("few_shot", "schema_invalid"),
            ("few_shot", "ungrounded"), ("fine_tuned", "ok")]),
    (0.10, [("zero_shot", "invalid_json"), ("zero_shot", "ungrounded"), ("few_shot", "schema_invalid"),
            ("few_shot", "ungrounded"), ("fine_tuned", "schema_invalid"), ("fine_tuned", "ungrounded")]),
]  # fmt: skip
COST = {"zero_shot": 0.00012, "few_shot": 0.0004, "fine_tuned": 0.0003}
MODEL = {
    "zero_shot": "gpt-4o-mini",
    "few_shot": "gpt-4o-mini",
    "fine_tuned": "ft:gpt-4o-mini-2024-07-18:acme::x",
}
ERRORS = {  # what a failed attempt's errors name
    "schema_invalid": json.dumps([{"type": "float_parsing", "loc": ["total"], "msg": "not a number", "input": "'n/a'"}]),
    "ungrounded": json.dumps([{"type": "ungrounded", "loc": ["issuer"], "msg": "not in the document",
                               "input": "'Globex'"}]),
}  # fmt: skip
EXTRACTION_COLUMNS = ("id", "run_id", "document_sha256", "path", "schema_hash", "config_hash", "status", "tier",
                      "outcome", "n_attempts", "cost_usd", "latency_s", "created_at", "superseded_by")  # fmt: skip
ATTEMPT_COLUMNS = ("id", "extraction_id", "run_id", "tier", "model", "number", "outcome", "errors_json",
                   "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "started_at", "follows", "won",
                   "current")  # fmt: skip
BATCH = 100_000  # extractions per insert


def extractor() -> Extractor[Invoice]:
    return Extractor(Invoice, tiers=[
        ZeroShot(model="gpt-4o-mini", api_key="x"),
        FewShot(model="gpt-4o-mini", api_key="x", examples=[{"input": "From: A\nTotal: 1", "output": {"issuer": "A", "total": 1}}]),
        FineTuned(model=MODEL["fine_tuned"], api_key="x"),
    ])  # fmt: skip


def rows(
    run: str, ex: Extractor[Invoice], n_attempts: int, now: float, seed: int = 0
) -> Iterator[tuple[list, list]]:
    """Batches of (extraction rows, attempt rows) until ``n_attempts`` attempts."""
    rng = random.Random(seed)
    weights = [p[0] for p in PATHS]
    made, i = 0, 0
    extractions: list[tuple[Any, ...]] = []
    attempts: list[tuple[Any, ...]] = []
    while made < n_attempts:
        i += 1
        _, steps = rng.choices(PATHS, weights)[0]
        eid = new_id()
        # in time order, as a ledger is written (about 0.37 documents per attempt: the paths' mix)
        created = now - 60 * 86_400 * (1 - i / (n_attempts * 0.37)) - rng.random() * 30
        winner = steps[-1][0] if steps[-1][1] == "ok" else None
        cost = latency = 0.0
        prev: dict[str, str] = {}
        for tier, outcome in steps:
            c = COST[tier] * rng.uniform(0.8, 1.2)
            lat = rng.uniform(0.3, 3.0)
            cost += c
            latency += lat
            number = 2 if tier in prev else 1
            attempts.append((new_id(), eid, run, tier, MODEL[tier], number, outcome, ERRORS.get(outcome),
                             rng.randint(300, 900), 60, c, lat, created - 5, "reask" if tier in prev else None,
                             int(tier == winner), 1))  # fmt: skip
            prev[tier] = outcome
        made += len(steps)
        extractions.append((eid, run, f"{i:064x}", f"docs/{i}.txt", ex.schema_hash, ex.config_hash,
                            "ok" if winner else "failed", winner, "ok" if winner else steps[-1][1], len(steps),
                            cost, latency, created, None))  # fmt: skip
        if len(extractions) >= BATCH or made >= n_attempts:
            yield extractions, attempts
            extractions, attempts = [], []


def generate(ledger: Ledger, n_attempts: int) -> int:
    """The plain tables, in bulk (outside ``Ledger.record``), then the rollups rebuilt from them."""
    ex = extractor()
    run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
    made = n = 0
    postgres = getattr(ledger, "engine", "sqlite") == "postgresql"
    for extractions, attempts in rows(run, ex, n_attempts, time.time()):
        n += len(extractions)
        made += len(attempts)
        if postgres:
            _copy(ledger, "extractions", EXTRACTION_COLUMNS, extractions)
            _copy(ledger, "attempts", ATTEMPT_COLUMNS, attempts)
            continue
        with ledger.transaction() as c:
            c.executemany(f"INSERT INTO extractions ({', '.join(EXTRACTION_COLUMNS)})"
                          f" VALUES ({', '.join('?' * len(EXTRACTION_COLUMNS))})", extractions)  # fmt: skip
            c.executemany(f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)})"
                          f" VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})", attempts)  # fmt: skip
    ledger.finish_run(run, "done", n_documents=n)
    analyze(ledger)
    return made


def analyze(ledger: Ledger) -> None:
    with ledger.transaction() as tx:
        tx.execute("ANALYZE")


def _copy(ledger: Ledger, table: str, columns: tuple[str, ...], data: list[tuple[Any, ...]]) -> None:
    """PostgreSQL COPY ... FROM STDIN (text format) on the ledger's own connection."""
    buf = io.StringIO()
    for row in data:
        buf.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    with ledger.transaction() as tx, tx._conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        cp.write(buf.getvalue())  # the PgTx's psycopg connection: COPY has no SQLite counterpart


def measure(ledger: Ledger, name: str, full_scan: bool) -> dict[str, Any]:
    """Times of each scope's report (best of 3; the full scan once), and the baseline scan."""
    import extractkit.report._aggregate as agg

    ledger.query("SELECT COUNT(*) FROM attempts")  # warm the caches for both
    t0 = time.perf_counter()
    ledger.query("SELECT tier, COUNT(*), SUM(cost_usd) FROM attempts GROUP BY tier")
    scan = time.perf_counter() - t0
    [run] = [r["id"] for r in ledger.query("SELECT id FROM runs")]
    scopes = {"all": Scope(), "run": Scope(run_id=run), "since": Scope(since=time.time() - 7 * 86_400)}
    times: dict[str, list[float]] = {s: [] for s in scopes}
    reports: dict[str, Any] = {}
    for _ in range(3):
        for s, scope in scopes.items():
            t0 = time.perf_counter()
            reports[s] = build_report(ledger, scope)
            times[s].append(time.perf_counter() - t0)
    full: dict[str, float] = {}
    same: dict[str, bool] = {}
    if full_scan:
        agg.USE_ROLLUPS = False
        try:
            for s, scope in scopes.items():
                t0 = time.perf_counter()
                old = build_report(ledger, scope, as_of=reports[s]["scope"]["as_of"])
                full[s] = time.perf_counter() - t0
                same[s] = old["totals"]["documents"] == reports[s]["totals"]["documents"] and all(
                    a["attempts"] == b["attempts"] and a["resolved"] == b["resolved"]
                    for a, b in zip(old["tiers"], reports[s]["tiers"], strict=True))  # fmt: skip
        finally:
            agg.USE_ROLLUPS = True
    return {"engine": name, "scan": scan, "times": times, "full": full, "same": same,
            "documents": reports["all"]["totals"]["documents"], "verdict": reports["all"]["verdict"]}  # fmt: skip


def rows_for(m: dict[str, Any], made: int) -> list[dict[str, Any]]:
    out = []
    labels = {"all": f"report over {made:,} attempts, {m['engine']}, s",
              "run": "  the same, --run (its one run: every document)",
              "since": "  the same, --since 7 days"}  # fmt: skip
    for s, label in labels.items():
        took = min(m["times"][s])
        base = m["full"].get(s, m["scan"])
        out.append({"measure": label + (" (baseline: the full-scan report)" if s in m["full"] else
                                        " (baseline: one grouped scan of attempts)"),
                    "value": took, "baseline": base, "ratio": took / base, "target": "<= 2 s",
                    "met": took <= 2.0})  # fmt: skip
    return out


KEEP = os.environ.get("EXTRACTKIT_BENCH_KEEP")


def _kept(ledger: Ledger) -> int | None:
    """The attempts of a kept ledger that was completely built (its run finished), else None."""
    done = ledger.query("SELECT COUNT(*) AS n FROM runs WHERE status = 'done'")
    if not done or not done[0]["n"] or not ledger.query("SELECT 1 AS x FROM rollup_documents_daily LIMIT 1"):
        return None  # not generated, or its rollups not rebuilt (interrupted): built again
    return int(ledger.query("SELECT COUNT(*) AS n FROM attempts")[0]["n"])


def _build(ledger: Ledger, attempts: int) -> tuple[int, float | None, float | None]:
    """(attempts, generate s, rebuild s): a kept ledger is reused as it is (None, None)."""
    made = _kept(ledger) if KEEP else None
    if made is not None:
        return made, None, None
    if KEEP and ledger.query("SELECT 1 AS x FROM runs LIMIT 1"):  # a half-built kept ledger
        raise SystemExit(f"{ledger.target}: an interrupted build; delete it (or its database) and run again")
    t0 = time.perf_counter()
    made = generate(ledger, attempts)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuild_rollups(ledger)
    built = time.perf_counter() - t0
    analyze(ledger)
    return made, gen, built


def sqlite_run(attempts: int, results: dict[str, Any], table: list[dict[str, Any]], size: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(KEEP) / f"report-{size}.sqlite3" if KEEP else Path(tmp) / "ledger.sqlite3"
        if KEEP:
            where.parent.mkdir(parents=True, exist_ok=True)
        with Ledger(where) as ledger:
            _sqlite_measure(ledger, attempts, results, table)


def _sqlite_measure(ledger: Ledger, attempts: int, results: dict[str, Any], table: list[dict[str, Any]]) -> None:
    made, gen, built = _build(ledger, attempts)
    full_scan = os.environ.get("EXTRACTKIT_BENCH_FULL_SCAN", "1") != "0"
    results["sqlite"] = {**measure(ledger, "SQLite", full_scan=full_scan), "generate_s": gen, "rebuild_s": built}
    table += rows_for(results["sqlite"], made)


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    engines = os.environ.get("EXTRACTKIT_BENCH_ENGINES", "sqlite,postgresql").split(",")
    results: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    if "sqlite" in engines:
        sqlite_run(size["attempts"], results, table, ns.size)
    pg = _postgres() if "postgresql" in engines else "not asked for"
    if isinstance(pg, str):
        results["postgresql"] = {"skipped": pg}
    else:
        try:
            with Ledger(_pg_database(pg, ns.size)) as ledger:
                made, gen, built = _build(ledger, size["attempts"])
                results["postgresql"] = {**measure(ledger, "PostgreSQL", full_scan=False), "generate_s": gen,
                                         "rebuild_s": built}  # fmt: skip
                table += rows_for(results["postgresql"], made)
        finally:
            pg.stop()
    report("report", ns, table, results)


def _pg_database(pg: Any, size: str) -> str:
    """A fresh database, or with EXTRACTKIT_BENCH_KEEP the kept one (created when absent)."""
    if not KEEP:
        return str(pg.new_database())
    import psycopg

    name = f"extractkit_bench_report_{size}"
    with psycopg.connect(pg.base_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall():
            conn.execute(f'CREATE DATABASE "{name}"')
    return str(pg.url(name))


def _postgres() -> Any:
    """A throwaway PostgreSQL server (tests/pg.py), or why there is none (a PostgreSQL ledger needs
    the store of issue 17: ``Ledger("postgresql://...")``, with ``ledger/_dialect.py``)."""
    import importlib.util

    if importlib.util.find_spec("extractkit.ledger._dialect") is None:
        return "this extractkit has no PostgreSQL ledger"
    try:
        from tests import pg
    except ImportError as exc:
        return f"tests/pg.py not importable: {exc}"
    return pg.start()


if __name__ == "__main__":
    main()
