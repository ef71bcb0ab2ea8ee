"""6. The report over a ledger of 1,000,000 attempts (generated straight into SQLite: a chain of
three tiers over 60 days, with re-asks, failures and costs). Baseline in the same run: one scan
of the attempts table grouped by tier, the least any tier report must read. Target: <= 2 s.

    python -m benchmarks.bench_report [--size tiny|full]
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from benchmarks._common import Invoice, args, report
from extractkit import Extractor, FewShot, FineTuned, ZeroShot
from extractkit.ledger import Ledger, new_id
from extractkit.report import Scope, build_report

SIZES = {"tiny": {"attempts": 20_000}, "full": {"attempts": 1_000_000}}
PATHS = [  # (share, attempts per tier as (tier, outcome) lists)
    (0.50, [("zero_shot", "ok")]),
    (0.25, [("zero_shot", "invalid_json"), ("zero_shot", "schema_invalid"), ("few_shot", "ok")]),
    (0.15, [("zero_shot", "invalid_json"), ("zero_shot", "ungrounded"), ("few_shot", "schema_invalid"),
            ("few_shot", "ungrounded"), ("fine_tuned", "ok")]),
    (0.10, [("zero_shot", "invalid_json"), ("zero_shot", "ungrounded"), ("few_shot", "schema_invalid"),
            ("few_shot", "ungrounded"), ("fine_tuned", "schema_invalid"), ("fine_tuned", "ungrounded")]),
]  # fmt: skip
COST = {"zero_shot": 0.00012, "few_shot": 0.0004, "fine_tuned": 0.0003}
MODEL = {"zero_shot": "gpt-4o-mini", "few_shot": "gpt-4o-mini", "fine_tuned": "ft:gpt-4o-mini-2024-07-18:acme::x"}


def generate(path: Path, n_attempts: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    ex = Extractor(Invoice, tiers=[
        ZeroShot(model="gpt-4o-mini", api_key="x"),
        FewShot(model="gpt-4o-mini", api_key="x", examples=[{"input": "From: A\nTotal: 1", "output": {"issuer": "A", "total": 1}}]),
        FineTuned(model=MODEL["fine_tuned"], api_key="x"),
    ])  # fmt: skip
    now = time.time()
    with Ledger(path) as ledger:
        run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        extractions, attempts = [], []
        made, i = 0, 0
        weights = [p[0] for p in PATHS]
        while made < n_attempts:
            i += 1
            share, steps = rng.choices(PATHS, weights)[0]
            eid = new_id()
            created = now - rng.random() * 60 * 86_400
            winner = steps[-1][0] if steps[-1][1] == "ok" else None
            cost = 0.0
            prev: dict[str, str] = {}
            for tier, outcome in steps:
                c = COST[tier] * rng.uniform(0.8, 1.2)
                cost += c
                number = 2 if tier in prev else 1
                attempts.append((new_id(), eid, run, tier, MODEL[tier], number, outcome, rng.randint(300, 900), 60,
                                 c, rng.uniform(0.3, 3.0), created, "reask" if tier in prev else None,
                                 int(tier == winner), 1))  # fmt: skip
                prev[tier] = outcome
            made += len(steps)
            extractions.append((eid, run, f"{i:064x}", f"docs/{i}.txt", ex.schema_hash, ex.config_hash,
                                "ok" if winner else "failed", winner, "ok" if winner else steps[-1][1], len(steps),
                                cost, sum(a[10] for a in attempts[-len(steps):]), created))  # fmt: skip
        with ledger.transaction() as c:
            c.executemany(
                "INSERT INTO extractions (id, run_id, document_sha256, path, schema_hash, config_hash, status, tier,"
                " outcome, n_attempts, cost_usd, latency_s, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                extractions,
            )
            c.executemany(
                "INSERT INTO attempts (id, extraction_id, run_id, tier, model, number, outcome, prompt_tokens,"
                " completion_tokens, cost_usd, latency_s, started_at, follows, won, current)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                attempts,
            )
        ledger.finish_run(run, "done", n_documents=len(extractions))
        ledger.conn.execute("ANALYZE")
    return made


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite3"
        t0 = time.perf_counter()
        made = generate(path, size["attempts"])
        gen_s = time.perf_counter() - t0
        with Ledger(path) as ledger:
            ledger.query("SELECT COUNT(*) FROM attempts")  # warm the page cache for both
            t0 = time.perf_counter()
            ledger.query("SELECT tier, COUNT(*), SUM(cost_usd) FROM attempts GROUP BY tier")
            scan = time.perf_counter() - t0
            [run] = [r["id"] for r in ledger.query("SELECT id FROM runs")]
            scopes = {"all": Scope(), "run": Scope(run_id=run), "since": Scope(since=time.time() - 7 * 86_400)}
            times: dict[str, list[float]] = {name: [] for name in scopes}
            for _ in range(3):
                for name, scope in scopes.items():
                    t0 = time.perf_counter()
                    rep = build_report(ledger, scope)
                    times[name].append(time.perf_counter() - t0)
                    if name == "all":
                        whole = rep
    took, by_run, recent = (min(times[n]) for n in ("all", "run", "since"))
    rows = [
        {"measure": f"report over {made:,} attempts, s (baseline: one grouped scan of attempts)", "value": took,
         "baseline": scan, "ratio": took / scan, "target": "<= 2 s", "met": took <= 2.0},
        {"measure": "  the same, filtered by its run (--run: every document of the ledger)", "value": by_run,
         "baseline": scan, "ratio": by_run / scan, "target": "<= 2 s", "met": by_run <= 2.0},
        {"measure": "  the same, filtered to the last 7 days (--since 7d)", "value": recent,
         "baseline": scan, "ratio": recent / scan, "target": "(orientation)"},
    ]  # fmt: skip
    rep = whole
    report("report", ns, rows, {"times_s": times, "generate_s": gen_s, "documents": rep["totals"]["documents"],
                                "verdict": rep["verdict"]})  # fmt: skip


if __name__ == "__main__":
    main()
