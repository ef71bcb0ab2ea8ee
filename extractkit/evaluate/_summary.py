"""The eval report: per tier and per field scores, chain simulation and verdicts, from the ledger.

Everything is read back from ``eval_items``, ``eval_results``, ``eval_scores`` and ``extractions``
for one eval run, by the ledger's named queries (``ledger.EVAL_SQL``, returned with the report), on
either engine.

Chain simulation: from the forced-tier results, each ordering of the tiers (every subsequence of
the configured order: zero -> few -> fine-tuned, few -> fine-tuned, fine-tuned alone, ...) is
replayed per document: the first tier whose answer was *valid* gives the answer (the chain cannot
know whether a valid answer is right), and the document costs what every tier it reached cost.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .._redact import redact_json
from .._words import plural
from ..ledger import EVAL_SQL, Ledger
from ..local import accuracy_note, ran_locally
from ..report import Economics, headline_sentence, marginal_verdict, mcnemar_exact, percentile, wilson
from ._score import prf

WRONG = ("wrong", "fn", "fp")  # a field a tier did not get right (tn: both empty, is right)


def latest_eval_run(ledger: Ledger) -> str | None:
    return ledger.latest_eval_run()


def _correct(r: dict[str, Any]) -> bool:
    return r["status"] == "ok" and r["fp"] + r["fn"] + r["wrong"] == 0


def build_eval(ledger: Ledger, run_id: str, *, economics: Economics | None = None) -> dict[str, Any]:
    economics = economics or Economics()
    queries: list[dict[str, Any]] = []

    def q(name: str) -> list[dict[str, Any]]:
        queries.append({"name": name, "sql": EVAL_SQL[name].strip(), "params": [run_id]})
        return ledger.eval_rows(name, run_id)

    runs = q("run")
    if not runs or runs[0]["kind"] != "eval":
        raise ValueError(f"no eval run {run_id!r} in {ledger.target}")
    config = json.loads(runs[0]["config_json"] or "{}")
    items = q("items")
    results = q("results")
    by: dict[tuple[str, str], dict[str, Any]] = {(r["gold_id"], r["tier"]): r for r in results}
    ran = {r["tier"] for r in results}
    order = [t["name"] for t in config.get("tiers", []) if t["name"] in ran] or sorted(ran)
    kinds = {t["name"]: t.get("kind") for t in config.get("tiers", [])}
    models = {t["name"]: t.get("model") for t in config.get("tiers", [])}
    scored = [i["gold_id"] for i in items if i["document_sha256"] is not None]
    docs = [g for g in scored if all((g, t) in by for t in order)]
    n = len(docs)

    tiers = []
    for t in order:
        rows = [by[(g, t)] for g in docs]
        valid = sum(r["status"] == "ok" for r in rows)
        correct = sum(_correct(r) for r in rows)
        tp, fp, fn, wrong = (int(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn", "wrong"))
        p, rec, f1 = prf(tp, fp, fn, wrong)
        costs = [r["cost_usd"] for r in rows]
        cost = None if any(c is None for c in costs) else sum(costs)
        lat = [r["latency_s"] for r in rows if r["latency_s"] is not None]
        tiers.append(
            {
                "tier": t,
                "kind": kinds.get(t),
                "model": models.get(t),
                "documents": len(rows),
                "valid": valid,
                "valid_rate": valid / n if n else None,
                "correct": correct,
                "accuracy": correct / n if n else None,
                "accuracy_ci": list(wilson(correct, n)) if n else None,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "wrong": wrong,
                "precision": p,
                "recall": rec,
                "f1": f1,
                "cost_usd": cost,
                "cost_per_document_usd": cost / n if cost is not None and n else None,
                "cost_per_correct_usd": cost / correct if cost is not None and correct else None,
                "latency_p50_s": percentile(lat, 0.5),
                "latency_p95_s": percentile(lat, 0.95),
                "reused": sum(r["reused"] for r in rows),
            }
        )

    fields: dict[str, dict[str, Any]] = {}
    # in code points, as SQLite sorts (PostgreSQL sorts by the database's collation: "amount" < "IBAN")
    for r in sorted(q("fields"), key=lambda r: (r["field"], r["tier"])):
        if r["tier"] not in order:
            continue
        p, rec, f1 = prf(int(r["tp"]), int(r["fp"]), int(r["fn"]), int(r["wrong"]))
        fields.setdefault(r["field"], {})[r["tier"]] = {
            "tp": int(r["tp"]),
            "fp": int(r["fp"]),
            "fn": int(r["fn"]),
            "wrong": int(r["wrong"]),
            "tn": int(r["tn"]),
            "precision": p,
            "recall": rec,
            "f1": f1,
        }

    chains = [
        simulate(list(c), docs, by)
        for k in range(len(order), 0, -1)
        for c in itertools.combinations(order, k)
    ]
    verdicts = []
    for k in range(1, len(order)):
        before, tier = order[:k], order[k]
        reach = [g for g in docs if all(by[(g, b)]["status"] != "ok" for b in before)]
        rescued = sum(_correct(by[(g, tier)]) for g in reach)
        costs = [by[(g, tier)]["cost_usd"] for g in reach]
        spend = None if any(c is None for c in costs) else float(sum(costs))
        v = marginal_verdict(
            tier,
            before,
            n=n,
            rescued=rescued,
            spend=spend,
            economics=economics,
            what="it answered {k} of {n_documents} correctly where {before} gave no valid answer",
            kind=kinds.get(tier),
        )
        d = v.to_dict()
        d["wrong_answers_accepted"] = sum(
            by[(g, tier)]["status"] == "ok" and not _correct(by[(g, tier)]) for g in reach
        )
        verdicts.append(d)
    comparisons = [
        compare(a, b, docs, by)
        for a in order
        for b in order
        if kinds.get(a) == "few_shot" and kinds.get(b) == "fine_tuned"
    ]
    text_stored = q("text_stored")[0]
    values_hidden = bool(text_stored["n"]) and not text_stored["stored"]
    documents_view = per_document(items, q("scores"), by, order, hide_values=values_hidden)
    headline = _headline(verdicts, kinds, order, n)
    unreadable = [i for i in items if i["document_sha256"] is None]
    incomplete = [g for g in scored if g not in docs]
    notes = []
    local_tiers = [t["name"] for t in config.get("tiers", []) if t["name"] in order and ran_locally(t)]
    if local_tiers:
        notes.append(accuracy_note(local_tiers, "these scores"))
    if unreadable:
        notes.append(f"{plural(len(unreadable), 'gold document')} could not be read and are not scored.")
    if values_hidden:
        notes.append(
            "the per-document view shows which fields each tier got right, not the values: this "
            "ledger keeps no document text (store_text = false)."
        )
    if incomplete:
        notes.append(
            f"{plural(len(incomplete), 'gold document')} lack a result for some tier (an error during the "
            "run) and are left out of every number; run eval again to complete them."
        )
    return {
        "run_id": run_id,
        "status": runs[0]["status"],
        "documents": n,
        "economics": economics.__dict__,
        "tiers": tiers,
        "fields": fields,
        "chains": chains,
        "verdicts": verdicts,
        "verdict": headline,
        "comparisons": comparisons,
        "unreadable": unreadable,
        "incomplete": incomplete,
        "documents_view": documents_view,
        "values_hidden": values_hidden,
        "notes": notes,
        "queries": queries,
    }


def per_document(
    items: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    by: dict[tuple[str, str], dict[str, Any]],
    order: list[str],
    *,
    hide_values: bool = False,
) -> list[dict[str, Any]]:
    """Every scored gold document: each field's expected value and what each tier answered, with its
    score (tp, tn, fp, fn, wrong), and how each tier's extraction ended. Worst first: the most
    (field, tier) answers that were not right, then the most tiers without a valid answer, then the
    gold file's order. With ``hide_values`` the values are None (the scores stay)."""
    fields: dict[str, dict[str, dict[str, Any]]] = {}
    for s in scores:
        if s["tier"] not in order:
            continue
        expected = _value(s["expected_json"], hide_values)
        cell = fields.setdefault(s["gold_id"], {}).setdefault(
            s["field"], {"field": s["field"], "expected": expected, "answers": {}}
        )
        cell["answers"][s["tier"]] = {"value": _value(s["got_json"], hide_values), "result": s["result"]}
    view = []
    for position, item in enumerate(items):
        g = item["gold_id"]
        if item["document_sha256"] is None or not any((g, t) in by for t in order):
            continue
        rows = list(fields.get(g, {}).values())
        tiers = {}
        for t in order:
            r = by.get((g, t))
            if r is None:
                continue
            wrong = sum(row["answers"].get(t, {}).get("result") in WRONG for row in rows)
            tiers[t] = {"status": r["status"], "outcome": r["outcome"], "error": r["error"],
                        "correct": _correct(r), "wrong_fields": wrong}  # fmt: skip
        view.append(
            {
                "gold_id": g,
                "path": item["path"],
                "wrong": sum(t["wrong_fields"] for t in tiers.values()),
                "failed_tiers": sum(t["status"] != "ok" for t in tiers.values()),
                "tiers": tiers,
                "fields": rows,
                "_position": position,
            }
        )
    view.sort(key=lambda d: (-d["wrong"], -d["failed_tiers"], d["_position"]))
    for d in view:
        del d["_position"]
    return view


def _value(raw: str | None, hide: bool) -> Any:
    return None if hide or raw is None else redact_json(json.loads(raw))


def simulate(chain: list[str], docs: list[str], by: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Replay one ordering of tiers over the documents from their forced results."""
    answered = correct = 0
    tp = fp = fn = wrong = 0
    cost: float | None = 0.0
    latencies: list[float] = []
    wins: dict[str, int] = {t: 0 for t in chain}
    for g in docs:
        spent, took, final = 0.0, 0.0, None
        unknown = False
        for t in chain:
            r = by[(g, t)]
            if r["cost_usd"] is None:
                unknown = True
            else:
                spent += r["cost_usd"]
            took += r["latency_s"] or 0.0
            final = r
            if r["status"] == "ok":
                answered += 1
                wins[t] += 1
                break
        assert final is not None
        correct += _correct(final)
        tp, fp, fn, wrong = (
            tp + int(final["tp"]),
            fp + int(final["fp"]),
            fn + int(final["fn"]),
            wrong + int(final["wrong"]),
        )
        cost = None if cost is None or unknown else cost + spent
        latencies.append(took)
    n = len(docs)
    p, rec, f1 = prf(tp, fp, fn, wrong)
    return {
        "chain": chain,
        "name": " -> ".join(chain),
        "documents": n,
        "valid_rate": answered / n if n else None,
        "accuracy": correct / n if n else None,
        "accuracy_ci": list(wilson(correct, n)) if n else None,
        "correct": correct,
        "precision": p,
        "recall": rec,
        "f1": f1,
        "wins": wins,
        "cost_usd": cost,
        "cost_per_document_usd": cost / n if cost is not None and n else None,
        "cost_per_correct_usd": cost / correct if cost is not None and correct else None,
        "latency_mean_s": sum(latencies) / n if n else None,
        "latency_p95_s": percentile(latencies, 0.95),
    }


def compare(a: str, b: str, docs: list[str], by: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Two tiers alone on the same documents (e.g. few-shot with a harvested pool against a model
    fine-tuned on the same data): paired, so the test is McNemar's on the documents they disagree on."""
    right_a = [_correct(by[(g, a)]) for g in docs]
    right_b = [_correct(by[(g, b)]) for g in docs]
    only_a = sum(x and not y for x, y in zip(right_a, right_b, strict=True))
    only_b = sum(y and not x for x, y in zip(right_a, right_b, strict=True))
    p = mcnemar_exact(only_a, only_b)
    costs: dict[str, float | None] = {}
    for t in (a, b):
        c = [by[(g, t)]["cost_usd"] for g in docs]
        costs[t] = None if any(x is None for x in c) or not docs else sum(c) / len(docs)
    n, ka, kb = len(docs), sum(right_a), sum(right_b)
    both = costs[a] is not None and costs[b] is not None
    money = f", at ${costs[a]:.4f} and ${costs[b]:.4f} per document" if both else ""
    seen = f"on the same {n} gold documents {a} was right on {ka} and {b} on {kb}{money}"
    if n == 0:
        winner, sentence = None, f"No gold document to compare {a} and {b} on."
    elif p < 0.05:
        winner = a if ka > kb else b
        sentence = f"{winner} is more accurate: {seen} (McNemar exact p = {p:.3g})."
    else:
        cheaper = None
        ca, cb = costs[a], costs[b]
        if ca is not None and cb is not None and ca != cb:
            cheaper = a if ca < cb else b
        winner = cheaper
        tail = f"; the cheaper, {cheaper}, is the better buy" if cheaper else ""
        sentence = f"No significant difference: {seen} (McNemar exact p = {p:.3g}){tail}."
    return {
        "a": a, "b": b, "documents": n, "correct_a": ka, "correct_b": kb, "only_a": only_a,
        "only_b": only_b, "p_value": p, "cost_per_document_a": costs[a], "cost_per_document_b": costs[b],
        "winner": winner, "sentence": sentence,
    }  # fmt: skip


def _headline(verdicts: list[dict[str, Any]], kinds: dict[str, str | None], order: list[str], n: int) -> str:
    if n == 0 or not order:
        return ("No gold document was scored: see the errors (a provider that refused the key or did "
                "not answer stops the eval), the unreadable documents and the gold file.")
    sentence = headline_sentence(verdicts, kinds)
    if sentence is None:
        return f"Only one tier ({order[0]}) was evaluated: see its scores; add tiers to compare."
    return sentence
