"""Ledgers whose truth is known: every document follows a scripted path through the chain.

Paths: "zero" (zero-shot answers at once), "few" (zero-shot fails twice, few-shot answers),
"ft" (zero- and few-shot fail twice each, the fine-tuned tier answers), "none" (every tier fails
twice). Each attempt costs the tier's fixed price, so every total can be worked out by hand.
"""

from __future__ import annotations

from extractkit import Attempt, Extractor, FewShot, FineTuned, Outcome, Result, Usage, ZeroShot
from extractkit.ledger import Ledger, rebuild_rollups

from .conftest import Invoice

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
COSTS = {"zero_shot": 0.001, "few_shot": 0.002, "fine_tuned": 0.01}
LATENCY = {"zero_shot": 1.0, "few_shot": 2.0, "fine_tuned": 0.5}
MODELS = {"zero_shot": "gpt-4o-mini", "few_shot": "gpt-4o-mini", "fine_tuned": FT_MODEL}
PATHS = {
    "zero": [("zero_shot", ["ok"])],
    "few": [("zero_shot", ["invalid_json", "schema_invalid"]), ("few_shot", ["ok"])],
    "ft": [("zero_shot", ["invalid_json", "schema_invalid"]), ("few_shot", ["schema_invalid", "ungrounded"]),
           ("fine_tuned", ["ok"])],
    "none": [("zero_shot", ["invalid_json", "schema_invalid"]), ("few_shot", ["schema_invalid", "ungrounded"]),
             ("fine_tuned", ["schema_invalid", "ungrounded"])],
}  # fmt: skip


def chain(tiers: tuple[str, ...] = ("zero_shot", "few_shot", "fine_tuned")) -> Extractor[Invoice]:
    made = {
        "zero_shot": ZeroShot(model="gpt-4o-mini", api_key="sk-fixture"),
        "few_shot": FewShot(model="gpt-4o-mini", api_key="sk-fixture",
                            examples=[{"input": "From: A Ltd. Total: 1.00", "output": {"issuer": "A Ltd.", "total": 1.0}}]),
        "fine_tuned": FineTuned(model=FT_MODEL, api_key="sk-fixture"),
    }  # fmt: skip
    return Extractor(Invoice, tiers=[made[t] for t in tiers])


def result(
    extractor: Extractor[Invoice], path: str, doc: str, costs: dict[str, float | None]
) -> Result[Invoice]:
    attempts = []
    winner = None
    for tier, outcomes in PATHS[path]:
        if tier not in extractor.tier_hashes:
            continue
        for i, outcome in enumerate(outcomes, 1):
            attempts.append(Attempt(tier=tier, model=MODELS[tier], number=i, outcome=Outcome(outcome),
                                    usage=Usage(prompt_tokens=100, completion_tokens=20),
                                    cost_usd=costs[tier], latency_s=LATENCY[tier]))  # fmt: skip
            if outcome == "ok":
                winner = tier
    value = Invoice(issuer="A Ltd.", total=1.0) if winner else None
    return Result(value=value, tier=winner, attempts=attempts,
                  latency_s=sum(a.latency_s for a in attempts), schema_hash=extractor.schema_hash,
                  document_sha256=f"{doc:0>64}"[-64:])  # fmt: skip


def populate(
    ledger: Ledger,
    counts: dict[str, int],
    *,
    extractor: Extractor[Invoice] | None = None,
    costs: dict[str, float | None] | None = None,
    created_at: float | None = None,
    prefix: str = "d",
) -> Extractor[Invoice]:
    """Add ``counts[path]`` documents for each path, in one batch run."""
    ex = extractor or chain()
    costs = {**COSTS, **(costs or {})}
    run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
    i = 0
    for path, n in counts.items():
        for _ in range(n):
            i += 1
            doc = f"{prefix}{i}".encode().hex()
            ledger.record(ex, result(ex, path, doc, costs), run_id=run, path=f"{prefix}/{path}-{i}.txt")
    ledger.finish_run(run, "done", n_documents=i)
    if created_at is not None:
        with ledger.transaction() as tx:  # either engine
            tx.execute("UPDATE extractions SET created_at = ? WHERE run_id = ?", (created_at, run))
            tx.execute("UPDATE attempts SET started_at = ? WHERE run_id = ?", (created_at - 1, run))
        rebuild_rollups(ledger)  # the report's sums follow edits that bypass Ledger.record
    return ex
