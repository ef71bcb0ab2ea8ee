"""Step 1 of the report from the rollups (``ledger._rollups``): the scope's sums, whatever the ledger's size.

The scope is split into hours. Whole hours inside it are read from the rollup rows; the hours at its
edges are read from the plain tables, row by row, with the same membership and the same arithmetic
(``ledger._rollups.Sums``' rules), so the sum of both is what a full scan of the scope reads. Whole
days come from the daily twins, except the days that hold an edge or attempts started on a day a
drift window's edge cuts (read hour by hour). The edges: the hours holding ``--since`` and
``--until`` (unless they fall on a whole hour), the hours whose documents were superseded within the
``--until`` hour, the first and last hour with documents in scope (the report's first and last
times), the hours whose attempts were the first or the last of each chain config's tier (first and
last use), and the hours whose attempts started in an hour that a drift window's edge cuts. So
every number is exact except latency percentiles, read from buckets (within a factor ``RATIO``,
exact where a bucket's values are equal, see ``_rollups.bucket``).
First and last times (documents, each tier's attempts) come from the edges alone: the hours that
hold them are edges by construction, so the rollup rows carry no times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..ledger import (
    NOT_GONE,
    ROLLUP_HOUR,
    ROLLUP_RATIO,
    rollup_bucket,
    rollup_field_errors,
    rollup_hour_of,
    rollup_json_value,
    rollup_loc_value,
    rollup_queries,
)

HOUR = ROLLUP_HOUR
DAY_HOURS = 24
EXAMPLES = 20  # unresolved documents shown
WINDOWS = (("r", "recent_since", "recent_until"), ("b", "baseline_since", "baseline_until"))
q = rollup_queries


@dataclass
class Parts:
    """The sums of one scope, in the shapes ``_aggregate`` reads (see ``_Rows``)."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # per (tier, outcome)
    by_config: list[dict[str, Any]] = field(default_factory=list)  # per (config, tier, outcome)
    latency: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # tier ('' documents) -> buckets
    fields: dict[tuple[str, str, Any, int], int] = field(
        default_factory=dict
    )  # (tier, outcome, loc, ungrounded)
    edges: list[int] = field(default_factory=list)
    examples_from: float | None = None  # the most recent unresolved documents were created from then on
    # a --run scope whose extractions were never superseded (by any run): its members are the run's
    # current extractions, read by ``superseded_by IS NULL`` and the attempts' ``current`` flag
    run_current: bool = False


def percentile_of(buckets: dict[int, list[float]] | None, p: float) -> float | None:
    """Nearest-rank percentile from latency buckets: the mean of the bucket holding that rank."""
    if not buckets:
        return None
    n = sum(int(v[0]) for v in buckets.values())
    if n <= 0:
        return None
    rank = max(1, math.ceil(p * n))
    seen = 0
    for b in sorted(buckets):
        count, total = buckets[b]
        seen += int(count)
        if seen >= rank:
            return float(total / count)
    return None


class _Acc:
    def __init__(self, windows: dict[str, float]):
        self.windows = windows
        self.docs: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.att: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.latency: dict[str, dict[int, list[float]]] = {}
        self.fields: dict[tuple[str, str, Any, int], int] = {}

    def doc(self, key: tuple[Any, ...], n: int, cost: float, unpriced: int, prompt: int, completion: int,
            first: float, last: float) -> None:  # fmt: skip
        d = self.docs.get(key)
        if d is None:
            self.docs[key] = d = {"n": 0, "cost_usd": 0.0, "unpriced": 0, "prompt_tokens": 0,
                                  "completion_tokens": 0, "first_at": first, "last_at": last}  # fmt: skip
        d["n"] += n
        d["cost_usd"] += cost
        d["unpriced"] += unpriced
        d["prompt_tokens"] += prompt
        d["completion_tokens"] += completion
        d["first_at"] = min(d["first_at"], first)
        d["last_at"] = max(d["last_at"], last)

    def group(self, key: tuple[str, str, str]) -> dict[str, Any]:
        g = self.att.get(key)
        if g is None:
            g = self.att[key] = {
                "n": 0, "first": 0, "reasks": 0, "retries": 0, "cost": 0.0, "priced": 0, "prompt_tokens": 0,
                "completion_tokens": 0, "own": 0.0, "models": set(), "first_started": None,
                "last_started": None,
            }  # fmt: skip
            for w, _, _ in WINDOWS:
                g.update(
                    {f"{w}_reached": 0, f"{w}_n": 0, f"{w}_priced": 0, f"{w}_cost": 0.0, f"{w}_cost_sq": 0.0}
                )
        return g

    @staticmethod
    def started(g: dict[str, Any], first: float | None, last: float | None) -> None:
        if first is None:
            return
        g["first_started"] = first if g["first_started"] is None else min(g["first_started"], first)
        g["last_started"] = last if g["last_started"] is None else max(g["last_started"], last)

    def bucket(self, tier: str, b: int, n: float, total: float) -> None:
        v = self.latency.setdefault(tier, {}).setdefault(b, [0, 0.0])
        v[0] += n
        v[1] += total

    # -- from rollup rows (whole hours) ------------------------------------------------------
    def rollup_docs(self, rows: list[Any]) -> None:
        for r in rows:
            key = (
                r["day"],
                r["config_hash"],
                r["schema_hash"],
                r["tier"] or None,
                r["status"],
                r["outcome"] or None,
            )
            self.doc(key, int(r["n"]), float(r["cost_usd"]), int(r["unpriced"]), int(r["prompt_tokens"]),
                     int(r["completion_tokens"]), math.inf, -math.inf)  # fmt: skip

    def rollup_attempts(self, rows: list[Any]) -> None:
        for r in rows:
            g = self.group((r["config"], r["tier"], r["outcome"]))
            n = int(r["n"])
            for k in ("first", "reasks", "retries", "priced", "prompt_tokens", "completion_tokens"):
                g[k] += int(r[k])
            g["n"] += n
            g["cost"] += float(r["cost"])
            g["own"] += float(r["own"])
            g["models"].add(r["model"])
            p = r["w"]
            if p:  # whole hours only: those a window's edge cuts are edges, read exactly
                g[f"{p}_reached"] += int(r["first"])
                g[f"{p}_n"] += n
                g[f"{p}_priced"] += int(r["priced"])
                g[f"{p}_cost"] += float(r["cost"])
                g[f"{p}_cost_sq"] += float(r["cost_sq"])

    def rollup_latency(self, rows: list[Any]) -> None:
        for r in rows:
            self.bucket(r["tier"], int(r["bucket"]), int(r["n"]), float(r["total"]))

    def rollup_fields(self, rows: list[Any]) -> None:
        for r in rows:
            key = (r["tier"], r["outcome"], rollup_loc_value(r["loc"]), int(r["ungrounded"]))
            self.fields[key] = self.fields.get(key, 0) + int(r["n"])

    # -- from the plain tables (the edges) ---------------------------------------------------
    def extractions(self, rows: list[Any]) -> dict[str, str]:
        rows = _dicts(rows)
        config_of = {}
        for e in rows:
            config_of[e["id"]] = e["config_hash"]
            cost = e["cost_usd"]
            t = float(e["created_at"])
            key = (int(t // 86_400), e["config_hash"], e["schema_hash"], e["tier"], e["status"], e["outcome"])
            self.doc(key, 1, cost or 0.0, int(cost is None), int(e["prompt_tokens"] or 0),
                     int(e["completion_tokens"] or 0), t, t)  # fmt: skip
            if e["latency_s"] is not None:
                self.bucket("", rollup_bucket(e["latency_s"]), 1, e["latency_s"])
        return config_of

    def attempts(self, rows: Any, config_of: dict[str, str]) -> None:
        w = self.windows
        rows = _dicts(rows)
        for a in rows:
            g = self.group((config_of[a["extraction_id"]], a["tier"], a["outcome"]))
            cost = a["cost_usd"]
            c = cost or 0.0
            first = int(a["number"] == 1)
            g["n"] += 1
            g["first"] += first
            g["reasks"] += int(a["follows"] == "reask")
            g["retries"] += int(a["follows"] == "retry")
            g["cost"] += c
            g["priced"] += int(cost is not None)
            g["prompt_tokens"] += int(a["prompt_tokens"] or 0)
            g["completion_tokens"] += int(a["completion_tokens"] or 0)
            g["own"] += c if a["won"] == 1 else 0.0
            g["models"].add(a["model"])
            s = a["started_at"]
            self.started(g, s, s)
            if s is not None:
                for p, since, until in WINDOWS:
                    if w[since] <= s < w[until]:
                        g[f"{p}_reached"] += first
                        g[f"{p}_n"] += 1
                        g[f"{p}_priced"] += int(cost is not None)
                        g[f"{p}_cost"] += c
                        g[f"{p}_cost_sq"] += c * c
            if a["latency_s"] is not None:
                self.bucket(a["tier"], rollup_bucket(a["latency_s"]), 1, a["latency_s"])
            if a["errors_json"] is not None:
                for err in rollup_field_errors(a["errors_json"]):
                    loc = rollup_json_value(err.get("loc"))
                    key = (a["tier"], a["outcome"], loc, int(err.get("type") == "ungrounded"))
                    self.fields[key] = self.fields.get(key, 0) + 1

    def parts(self, edges: list[int]) -> Parts:
        docs = [{"day": k[0], "config_hash": k[1], "schema_hash": k[2], "tier": k[3], "status": k[4],
                 "outcome": k[5], **v} for k, v in self.docs.items() if v["n"]]  # fmt: skip
        by_config = []
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for (config, tier, outcome), g in self.att.items():
            if not g["n"]:
                continue
            by_config.append({"config_hash": config, "tier": tier, "outcome": outcome, **g})
            t = groups.get((tier, outcome))
            if t is None:
                groups[(tier, outcome)] = {"tier": tier, "outcome": outcome, **g, "models": set(g["models"])}
                continue
            for k, v in g.items():
                if k == "models":
                    t["models"] |= v
                elif k in ("first_started", "last_started"):
                    continue
                else:
                    t[k] += v
            self.started(t, g["first_started"], g["last_started"])
        # in the order SQL's GROUP BY gave them (NULL first): drift and the trend list in that order
        names = ("config_hash", "schema_hash", "tier", "status", "outcome")
        docs.sort(key=lambda r: (r["day"], *((r[k] is not None, r[k] or "") for k in names)))
        out = [groups[k] for k in sorted(groups)]
        by_config.sort(key=lambda r: (r["config_hash"], r["tier"], r["outcome"]))
        for g in out + by_config:
            g["models"] = ",".join(sorted(m for m in g["models"] if m))
        return Parts(docs=docs, groups=out, by_config=by_config, latency=self.latency, fields=self.fields,
                     edges=edges)  # fmt: skip


def _dicts(rows: Any) -> list[dict[str, Any]]:
    """The edge rows as plain dicts: read by name a dozen times each, and a dict's lookup is far
    cheaper than an engine row's (a PostgreSQL ``Row`` resolves every name in Python)."""
    rows = list(rows)
    if not rows:
        return []
    keys = list(rows[0].keys())
    return [dict(zip(keys, r, strict=True)) for r in rows]


def read_parts(ledger: Any, scope: Any, windows: dict[str, float], run: Any) -> Parts:
    """The scope's sums (``scope``: the report's ``Scope``; ``run(name, sql, params)`` runs and keeps
    a query)."""
    since, until, by_run = scope.since, scope.until, bool(scope.run_id)
    gone = "gone_run" if by_run else "gone"
    keys, key_params = q.key_filters("r", schema=scope.schema, config=scope.config_hash, run=scope.run_id)
    # 0. a run none of whose extractions was superseded is read row by row as the current view
    run_current = by_run and not run("rollup_run_moved", q.ROLLUP_RUN_MOVED.format(keys=keys), key_params)
    # 1. the edges of the scope: the hours its bounds cut, and those superseded within the --until hour
    edges: set[int] = set()
    for t in (since, until):
        if t is not None and t % HOUR:
            edges.add(rollup_hour_of(t))
    lo = rollup_hour_of(since) if since is not None else -1
    hi = rollup_hour_of(until) if until is not None else NOT_GONE
    whole: set[int] = set()
    for r in run("rollup_hours", q.ROLLUP_HOURS.format(gone=gone, keys=keys), [*key_params, lo, hi]):
        h, g = int(r["hour"]), int(r["gone"])
        if (since is not None and h * HOUR < since) or (until is not None and (h + 1) * HOUR > until):
            continue  # outside the window (or an edge, already counted)
        if until is None:
            if g == NOT_GONE:
                whole.add(h)
        elif g * HOUR >= until:
            whole.add(h)
        elif (g + 1) * HOUR > until:
            edges.add(h)  # superseded within the --until hour: before or after it, row by row
    whole -= edges
    # 2. the first and last hours with documents (the report's first and last times)
    if whole:
        edges.update((min(whole), max(whole)))
    # the most recent unresolved documents: from the latest whole hour on that holds enough of them
    whole_rows = q.rollup_where("r", since=since, until=until, run=by_run)
    sql = q.ROLLUP_FAILED_HOURS.format(keys=keys, where=whole_rows)
    failed, examples_from = 0, None
    for r in run("rollup_failed_hours", sql, key_params):
        failed += int(r["n"])
        if failed >= EXAMPLES:
            examples_from = float(int(r["hour"]) * HOUR)
            break
    # 3. per chain config and tier, the hours of its first and last attempts; hours cut by drift windows
    # (over every whole row, the edges' too: an edge hour holding a tier's first attempts is read exactly)
    where = q.rollup_where("r", since=since, until=until, run=by_run)
    ahours = {rollup_hour_of(windows[k]) for k in ("recent_since", "recent_until", "baseline_since")
              if windows[k] % HOUR}  # fmt: skip
    for r in run("rollup_attempt_spans", q.ROLLUP_ATTEMPT_SPANS.format(keys=keys, where=where), key_params):
        ahours.update((int(r["lo"]), int(r["hi"])))
    sql = q.ROLLUP_ATTEMPT_HOURS.format(keys=keys, where=where, ahours=q.in_list(ahours or {-2}))
    edges.update(int(r["hour"]) for r in run("rollup_attempt_hours", sql, key_params))
    # 4. whole days from the daily rollups, the other whole hours from the hourly ones; a day is read
    # hour by hour when it holds an edge, or attempts that started on a day a drift window's edge cuts
    partial = {h // DAY_HOURS for h in edges}
    names = ("recent_since", "recent_until", "baseline_since")
    cut_days = {rollup_hour_of(windows[k]) // DAY_HOURS for k in names if windows[k] % (HOUR * DAY_HOURS)}
    if cut_days:
        days = q.day_where("r", since=since, until=until, run=by_run, partial=partial)
        sql = q.ROLLUP_CUT_DAYS.format(keys=keys, where=days, days=q.in_list(cut_days))
        partial.update(int(r["hour"]) // DAY_HOURS for r in run("rollup_cut_days", sql, key_params))
    both = (
        q.key_filters("d", schema=scope.schema, config=scope.config_hash, run=scope.run_id)[0],
        q.key_filters("h", schema=scope.schema, config=scope.config_hash, run=scope.run_id)[0],
    )
    days = q.day_where("d", since=since, until=until, run=by_run, partial=partial)
    hours = (q.rollup_where("h", since=since, until=until, run=by_run, exclude=edges) + " AND "
             + q.partial_hours("h", since=since, until=until, partial=partial))  # fmt: skip
    params = [*key_params, *key_params]
    acc = _Acc(windows)

    def read(name: str, table: str, sql: str) -> list[Any]:
        return run(
            name, sql.format(source=q.source(table, both, hours, days), window=q.window_case(windows)), params
        )

    acc.rollup_docs(read("rollup_documents", "rollup_documents", q.ROLLUP_DOCUMENTS))
    acc.rollup_attempts(read("rollup_attempts", "rollup_attempts", q.ROLLUP_ATTEMPTS))
    acc.rollup_latency(read("rollup_latency", "rollup_latency", q.ROLLUP_LATENCY))
    acc.rollup_fields(read("rollup_fields", "rollup_fields", q.ROLLUP_FIELDS))
    # 5. the edges from the plain tables
    if edges:
        member, member_params = scope_member(scope, run_current)
        ranges, range_params = q.hour_ranges(edges)
        params = [*range_params, *member_params]
        config_of = acc.extractions(run("edge_extractions", q.exact_extractions_sql(ranges, member), params))
        acc.attempts(
            run("edge_attempts", q.EXACT_ATTEMPTS.format(ranges=ranges, member=member), params), config_of
        )
    out = acc.parts(sorted(edges))
    out.examples_from = examples_from
    out.run_current = run_current
    return out


def scope_member(scope: Any, run_current: bool = False) -> tuple[str, list[Any]]:
    """The scope's extractions row by row (``ledger.rollup_queries.member_where``) and its parameters.
    ``run_current``: the scope's run has no superseded extraction (``Parts.run_current``), so the
    latest of each document in the run is its current one (no per-row look for a later one)."""
    where, params = scope.where()
    member = q.member_where(where, run=bool(scope.run_id) and not run_current, until=scope.until is not None)
    return member, [*params, *([scope.until] if scope.until is not None else [])]


RATIO = ROLLUP_RATIO
