"""8. Fault run: the real CLI against the stub injecting 16 kinds of failure (seeded, logged),
over a 3-tier chain with a short tier timeout. Every injected fault must be recorded with its
outcome (and retried / re-asked / not re-asked as it should be), no document lost or duplicated,
no attempt's latency far beyond its timeout, and the API key (echoed by the stub into every field
it can) found nowhere: not in the ledger dump, --out, any report format, stdout or stderr.

    python -m benchmarks.bench_faults [--size tiny|full] [--documents N] [--timeout 1.5]

Exits 3 when any check fails (the table says which), so it is a real check, not just a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, ROOT, document, machine, stub
from benchmarks.stub_server import FAULT_KINDS

SIZES = {
    "tiny": {"documents": 17, "timeout": 1.0, "concurrency": 16, "fault_rate": 0.0, "hang_s": 2.5, "drip_s": 2.5,
             "huge_mb": 5.0},  # over the 4 MiB default cap
    "full": {"documents": 240, "timeout": 1.5, "concurrency": 16, "fault_rate": 0.05, "hang_s": 30.0,
             "drip_s": 6.0, "huge_mb": 16.0},
}  # fmt: skip
# one model per tier: the stub tells the tiers apart by the request's model
MODELS = {"zero_shot": "gpt-4o-mini", "few_shot": "gpt-4o", "fine_tuned": "ft:gpt-4o-mini-2024-07-18:acme:inv:f4u1t"}
REASKS = 1  # `retries` of every tier: re-asks after a validation failure
MAX_TRANSIENT_TRIES = 4  # extractkit's RetryPolicy.max_attempts (one call + three retries)
CLOCK_SLACK_S = 0.0  # a request is received after its attempt started (one clock: this machine's; the stub answers in well under 1 ms, so no slack)
LATENCY_MARGIN_S = 1.0  # "no attempt's recorded latency exceeds its timeout by more than a small margin"
KEY = "sk-faults-" + "5e3c7a91d0b24f6e8a17c2d9b4e06f31"
KEY_SECRET = KEY.removeprefix("sk-faults-")  # grepped for: a partial redaction still leaks this

EXPECTED: dict[str, set[str]] = {
    "none": {"ok"}, "fence": {"ok"},
    "hang": {"timeout"}, "drip": {"timeout"}, "huge": {"response_too_large"},
    "html200": {"api_error"}, "reset": {"connection_error", "api_error"}, "http429": {"rate_limited"},
    "http500": {"api_error"}, "http503": {"api_error"}, "echo_403": {"api_error"},
    "refusal": {"refusal"}, "length": {"truncated"}, "invalid_json": {"invalid_json"},
    "schema_invalid": {"schema_invalid"}, "ungrounded": {"ungrounded"}, "echo_args": {"ungrounded", "schema_invalid"},
}  # fmt: skip
RETRIED = {"hang", "drip", "html200", "reset", "http429", "http500", "http503"}  # must be sent again
REASKED = {"invalid_json", "schema_invalid", "ungrounded", "echo_args"}  # re-asked while re-asks remain
TRANSIENT = {"rate_limited", "api_error", "timeout", "connection_error"}
VALIDATION = {"invalid_json", "schema_invalid", "ungrounded"}
_DOC = re.compile(r"DOC-\d+")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="tiny: a smoke test; full: the figures")
    p.add_argument("--out", type=Path, default=None, help="JSON results file (default benchmarks/results/)")
    p.add_argument("--documents", type=int, help="documents (default: by size)")
    p.add_argument("--timeout", type=float, help="every tier's timeout_s")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--fault-rate", type=float, help="random faults on requests no plan names")
    p.add_argument("--hang-s", type=float, help="how long a hang holds the connection")
    p.add_argument("--drip-s", type=float, help="how long a slow drip takes")
    p.add_argument("--huge-mb", type=float, help="size of the huge body")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--cli-timeout", type=float, default=600, help="kill the extract run after this many seconds")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder here (ledger, logs, reports)")
    p.add_argument("--analyse", type=Path, default=None, help="check a folder kept by --keep again (runs nothing)")
    ns = p.parse_args(argv)
    for k, v in SIZES[ns.size].items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    return ns


def plan(i: int) -> tuple[str, str, dict[str, str]]:
    """Document i's fault: the kind, the tier it hits, and the plan line (earlier tiers refuse)."""
    kinds = ["none", *FAULT_KINDS]
    kind, depth = kinds[i % len(kinds)], (i // len(kinds)) % 3
    tiers = list(MODELS)
    faults = {MODELS[t]: "refusal" for t in tiers[:depth]}
    faults[MODELS[tiers[depth]]] = kind
    return kind, tiers[depth], faults


def make_inputs(folder: Path, n: int) -> dict[str, str]:
    folder.mkdir(parents=True)
    docs = {}
    for i in range(n):
        ref = f"DOC-{i:05d}"
        _, _, faults = plan(i)
        line = " ".join(f"{m}={k}" for m, k in faults.items())
        (folder / f"{ref}.txt").write_text(f"Ref: {ref}\nFault-plan: {line}\n" + document(i + 1, padding=3))
        docs[ref] = line
    return docs


def write_config(tmp: Path, base_url: str, timeout: float) -> Path:
    examples = tmp / "examples.jsonl"
    with examples.open("w") as f:
        for i in range(900, 910):
            f.write(json.dumps({"input": document(i), "output": {"issuer": f"Firm {i} Ltd", "total": i + 0.5}}) + "\n")
    lines = ['schema = "benchmarks._common:Invoice"']
    for kind, model in MODELS.items():
        lines += ["[[tiers]]", f'kind = "{kind}"', f'model = "{model}"', f'base_url = "{base_url}"',
                  f"timeout_s = {timeout}", f"max_reasks = {REASKS}"]  # fmt: skip
        if kind == "few_shot":
            lines += ['examples = "examples.jsonl"', "k = 2"]
    config = tmp / "extractkit.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess; killed after ``timeout`` (exit -9, what it printed kept)."""
    env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=str(ROOT), COLUMNS="200", NO_COLOR="1")
    env.pop("OPENAI_BASE_URL", None)
    cmd = [sys.executable, "-m", "extractkit", *args]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        text = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)]
        print(f"extractkit {args[0]} did not finish in {timeout:.0f} s: killed", file=sys.stderr)
        return subprocess.CompletedProcess(cmd, -9, text[0], text[1])


def doc_of(path: Any) -> str | None:
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    m = _DOC.search(str(path or ""))
    return m.group(0) if m else None


def check_attempts(log: Path, ledger: Path, timeout: float) -> dict[str, Any]:
    """Every injected request against the ledger's attempt that sent it: same document and tier,
    and the last attempt started before the stub received the request (both clocks are this
    machine's). Usually that is attempt n for the tier's n-th request; not when an attempt's
    request never reached the stub."""
    injected: dict[tuple[str, str, int], tuple[str, float]] = {}
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "received":
            injected[(e["doc"], e["model"], e["n"])] = (e["fault"], e["t"])
    db = sqlite3.connect(ledger)
    db.row_factory = sqlite3.Row
    recorded: dict[tuple[str, str, int], sqlite3.Row] = {}
    for r in db.execute("SELECT e.path, a.model, a.number, a.outcome, a.follows, a.latency_s, a.started_at,"
                        " a.error FROM attempts a JOIN extractions e ON e.id = a.extraction_id"):  # fmt: skip
        doc = doc_of(r["path"])
        if doc:
            recorded[(doc, r["model"], r["number"])] = r
    db.close()
    starts: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for (doc, model, number), r in recorded.items():
        starts[(doc, model)].append((r["started_at"] or 0.0, number))
    for v in starts.values():
        v.sort(key=lambda x: x[1])
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    examples: dict[str, list[str]] = defaultdict(list)
    matched: set[tuple[str, str, int]] = set()
    for key in sorted(injected):
        doc, model, _ = key
        kind, t = injected[key]
        sent = [number for started, number in starts.get((doc, model), []) if started <= t + CLOCK_SLACK_S]
        number = sent[-1] if sent else None
        attempt = (doc, model, number) if number is not None else None
        if attempt is not None and attempt in matched:
            attempt = None  # two requests for one attempt: the second is not recorded
        verdict = _verdict(kind, attempt, recorded)
        if attempt is not None:
            matched.add(attempt)
        by_kind[kind][verdict] += 1
        if verdict != "expected" and len(examples[kind]) < 3:
            r = recorded.get(attempt) if attempt else None
            examples[kind].append(f"{key}: {verdict}" + (f" ({(r['error'] or '')[:160]})" if r else ""))
    unsent = Counter(r["outcome"] for k, r in recorded.items() if k not in matched and r["outcome"] != "context_overflow")
    over = [(k, r["latency_s"]) for k, r in recorded.items() if (r["latency_s"] or 0) > timeout + LATENCY_MARGIN_S]
    return {"by_kind": by_kind, "examples": examples, "requests": len(injected), "attempts": len(recorded),
            "unrequested": sum(unsent.values()), "unrequested_outcomes": dict(unsent), "over_timeout": len(over),
            "max_latency_s": max((r["latency_s"] or 0 for r in recorded.values()), default=0.0)}  # fmt: skip


def _verdict(kind: str, key: tuple[str, str, int] | None, recorded: dict[tuple[str, str, int], sqlite3.Row]) -> str:
    if key is None:
        return "not recorded"
    doc, model, n = key
    r = recorded[key]
    outcome = r["outcome"]
    if outcome not in EXPECTED[kind]:
        return outcome
    after = recorded.get((doc, model, n + 1))
    before = [recorded[(doc, model, i)]["outcome"] for i in range(1, n) if (doc, model, i) in recorded]
    if kind in RETRIED:
        streak = 0
        for o in reversed(before):
            if o not in TRANSIENT:
                break
            streak += 1
        if streak + 1 < MAX_TRANSIENT_TRIES and (after is None or after["follows"] != "retry"):
            return f"{outcome}, not retried"
    reasks_left = sum(o in VALIDATION for o in before) < REASKS
    if kind in REASKED and reasks_left and (after is None or after["follows"] != "reask"):
        return f"{outcome}, not re-asked"
    if kind == "fence" and after is not None:
        return "ok, then re-asked"
    return "expected"


def check_documents(inputs: set[str], out: Path, ledger: Path) -> dict[str, Any]:
    in_out: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for line in out.read_text().splitlines() if out.exists() else []:
        row = json.loads(line)
        in_out[doc_of(row.get("path")) or "?"] += 1
        statuses[row.get("status")] += 1
    db = sqlite3.connect(ledger)
    current: Counter[str] = Counter(
        doc_of(p) or "?" for (p,) in db.execute(
            "SELECT path FROM extractions WHERE superseded_by IS NULL AND forced_tier IS NULL")
    )  # fmt: skip
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    return {
        "lost_out": len(inputs - set(in_out)), "duplicated_out": sum(1 for d in inputs if in_out[d] > 1),
        "lost_ledger": len(inputs - set(current)), "duplicated_ledger": sum(1 for d in inputs if current[d] > 1),
        "strangers": len((set(in_out) | set(current)) - inputs), "statuses": dict(statuses), "integrity": integrity,
    }  # fmt: skip


def grep_key(tmp: Path, ledger: Path, out: Path, extract: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Occurrences of the key's secret part in every artifact a user can read."""
    db = sqlite3.connect(ledger)
    dump = "\n".join(db.iterdump())
    tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for t in tables:  # where, for the reader; the check counts the dump
        n = sum(repr(tuple(r)).count(KEY_SECRET) for r in db.execute(f'SELECT * FROM "{t}"'))
        if n:
            print(f"key in ledger table {t}: {n}", file=sys.stderr)
    db.close()
    hits = {"ledger dump (every table)": dump.count(KEY_SECRET),
            "--out": out.read_text().count(KEY_SECRET) if out.exists() else 0,
            "extract stdout": extract.stdout.count(KEY_SECRET), "extract stderr": extract.stderr.count(KEY_SECRET)}  # fmt: skip
    html, csv = tmp / "report.html", tmp / "report.csv"
    with ThreadPoolExecutor(2) as pool:  # two CLI start-ups at once
        json_run = pool.submit(cli, "report", "--ledger", str(ledger), "--json", "--html", str(html), "--csv", str(csv))
        terminal_run = pool.submit(cli, "report", "--ledger", str(ledger))
        as_json, terminal = json_run.result(), terminal_run.result()
    for name, proc in (("report --json", as_json), ("report (terminal)", terminal)):
        hits[f"{name} stdout"] = proc.stdout.count(KEY_SECRET)
        hits[f"{name} stderr"] = proc.stderr.count(KEY_SECRET)
        if proc.returncode != 0:
            hits[f"{name} exit {proc.returncode} (not a hit; see stderr)"] = 0
            print(f"{name} exited {proc.returncode}: {proc.stderr[-1000:]}", file=sys.stderr)
    hits["report --html"] = html.read_text(errors="replace").count(KEY_SECRET) if html.exists() else 0
    hits["report --csv"] = csv.read_text(errors="replace").count(KEY_SECRET) if csv.exists() else 0
    return hits


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = ns.analyse or ns.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        log, ledger, out = tmp / "stub.jsonl", tmp / "ledger.sqlite3", tmp / "out.jsonl"
        for f in () if ns.analyse else (log, ledger, out):
            f.unlink(missing_ok=True)
        if ns.analyse:  # a kept work folder: check it again, without running anything
            inputs = {p.stem: "" for p in (tmp / "docs").glob("DOC-*.txt")}
            ns.documents = len(inputs)
            extract = subprocess.CompletedProcess([], -1, (tmp / "extract.stdout").read_text(),
                                                  (tmp / "extract.stderr").read_text())  # fmt: skip
            attempts = check_attempts(log, ledger, ns.timeout)
            docs = check_documents(set(inputs), out, ledger)
            hits = grep_key(tmp, ledger, out, extract)
            return summarise(ns, 0.0, extract.returncode, attempts, docs, hits)
        inputs = make_inputs(tmp / "docs", ns.documents)
        with stub(faults=1, log=log, echo_key=1, seed=ns.seed, fault_rate=ns.fault_rate, hang_s=ns.hang_s,
                  drip_s=ns.drip_s, huge_mb=ns.huge_mb) as s:  # fmt: skip
            config = write_config(tmp, s.base_url, ns.timeout)
            t0 = time.perf_counter()
            extract = cli("extract", str(tmp / "docs"), "--config", str(config), "--ledger", str(ledger),
                          "--out", str(out), "--concurrency", str(ns.concurrency), "--json", timeout=ns.cli_timeout)  # fmt: skip
            elapsed = time.perf_counter() - t0
        (tmp / "extract.stdout").write_text(extract.stdout)
        (tmp / "extract.stderr").write_text(extract.stderr)
        if not ledger.exists():
            print(f"extract exited {extract.returncode} and left no ledger:\n{extract.stderr[-3000:]}", file=sys.stderr)
            return 2
        attempts = check_attempts(log, ledger, ns.timeout)
        docs = check_documents(set(inputs), out, ledger)
        hits = grep_key(tmp, ledger, out, extract)
    return summarise(ns, elapsed, extract.returncode, attempts, docs, hits)


def summarise(ns: argparse.Namespace, elapsed: float, code: int, attempts: dict[str, Any], docs: dict[str, Any],
              hits: dict[str, int]) -> int:  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title=f"faults ({ns.size}): {ns.documents} documents, 3 tiers, timeout {ns.timeout} s")
    for col in ("fault", "expected outcome", "injected", "as expected", "otherwise (what)"):
        table.add_column(col, justify="left" if col in ("fault", "expected outcome", "otherwise (what)") else "right")
    kinds: list[dict[str, Any]] = []
    totals = Counter[str]()
    for kind in ["none", *FAULT_KINDS]:
        c = attempts["by_kind"].get(kind, Counter())
        n, good = sum(c.values()), c["expected"]
        other = {k: v for k, v in c.items() if k != "expected"}
        totals["injected"] += n
        totals["expected"] += good
        kinds.append({"fault": kind, "expected": sorted(EXPECTED[kind]), "injected": n, "as_expected": good,
                      "otherwise": other, "examples": attempts["examples"].get(kind, [])})  # fmt: skip
        table.add_row(kind, " or ".join(sorted(EXPECTED[kind])), str(n), str(good),
                      ", ".join(f"{v} {k}" for k, v in sorted(other.items())) or "-")  # fmt: skip
    table.add_row("total", "", str(totals["injected"]), str(totals["expected"]),
                  str(totals["injected"] - totals["expected"]))  # fmt: skip
    console.print(table)
    for k in kinds:
        for e in k["examples"]:
            console.print(f"  {k['fault']}: {e}", highlight=False, markup=False)
    mismatches = totals["injected"] - totals["expected"]
    key_hits = sum(hits.values())
    rows = [
        {"measure": "requests whose fault was recorded otherwise", "value": mismatches, "target": "0"},
        {"measure": "requests (stub) / attempts (ledger)", "value": attempts["requests"],
         "baseline": attempts["attempts"], "target": "equal"},
        {"measure": "ledger attempts whose request never reached the stub", "value": attempts["unrequested"],
         "target": "0"},
        {"measure": f"attempts over timeout + {LATENCY_MARGIN_S} s (max latency {attempts['max_latency_s']:.1f} s)",
         "value": attempts["over_timeout"], "target": "0"},
        {"measure": "documents lost from --out", "value": docs["lost_out"], "target": "0"},
        {"measure": "documents lost from the ledger (no current extraction)", "value": docs["lost_ledger"],
         "target": "0"},
        {"measure": "documents duplicated in --out", "value": docs["duplicated_out"], "target": "0"},
        {"measure": "documents duplicated in the ledger (current twice)", "value": docs["duplicated_ledger"],
         "target": "0"},
        {"measure": "key occurrences (ledger, --out, reports, stdout, stderr)", "value": key_hits, "target": "0"},
        {"measure": "integrity_check ok", "value": int(docs["integrity"] == "ok"), "target": "1"},
        {"measure": "seconds for the extract run", "value": round(elapsed, 1), "target": ""},
    ]  # fmt: skip
    for r in rows[:-1]:
        r["met"] = r["value"] == int(r["target"]) if r["target"].isdigit() else r["value"] == r.get("baseline")
    table = Table(title="checks")
    for col in ("measure", "value", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for r in rows:
        met = r.get("met")
        table.add_row(r["measure"], str(r["value"]), r["target"], "-" if met is None else ("yes" if met else "NO"))
    console.print(table)
    console.print("key occurrences: " + ", ".join(f"{k} {v}" for k, v in hits.items()), highlight=False)
    console.print(f"--out statuses: {docs['statuses']}; extract exit code {code}; outcomes of attempts whose request "
                  f"never reached the stub: {attempts['unrequested_outcomes']}", highlight=False)
    failed = [r["measure"] for r in rows if r.get("met") is False]
    out = ns.out or RESULTS / f"faults-{ns.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "faults", "size": ns.size, "machine": machine(), "rows": rows, "faults": kinds,
        "key_hits": hits, "documents": docs, "extract_exit": code, "failed_checks": failed,
        "unrequested_outcomes": attempts["unrequested_outcomes"],
        "settings": {k: getattr(ns, k) for k in ("documents", "timeout", "concurrency", "fault_rate", "seed",
                                                  "hang_s", "drip_s", "huge_mb")},
    }, indent=2))  # fmt: skip
    print(f"wrote {out}")
    if failed:
        print("FAILED checks: " + "; ".join(failed))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
