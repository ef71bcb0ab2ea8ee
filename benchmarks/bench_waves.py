"""13. The provider's Batch API: N documents through three tiers in waves (`extract --via batch`)
against the fake Batch API (tests/fakes_batch.py, a thread of this process) with scripted answers:
tier 1 answers 70 % at once, 20 % invalid then right on the re-ask, 10 % ungrounded until its
re-asks run out (then tier 2: half right, half ungrounded again -> tier 3 right); 2 % of the
documents get a 429 line first; the first batch expires with 10 % of its lines unrun. The same
script live (`--via live`, tests/fakes.py FakeLLMServer) gives the cost ratio (goal <= 0.55x).
extractkit's own CPU time per document is the CLI child's rusage (the fakes' CPU stays in this
process). Then the batch run again on a fresh ledger, SIGKILLed twice (once wave 1 is submitted;
during the ingest of wave 2) and resumed: no wave part created twice, every document final once,
the same attempts as the unkilled run.

    python -m benchmarks.bench_waves [--size tiny|full] [--documents N]

Exits 3 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, document, report
from tests.fakes import FakeLLMServer, completion, error_body
from tests.fakes_batch import BatchPlan, FakeBatchServer, Reply, ScriptedResponder

SIZES = {"tiny": {"documents": 500}, "full": {"documents": 10_000}}
T1, T2, T3 = "gpt-4o-mini", "gpt-4.1-mini", "ft:gpt-4o-mini-2024-07-18:acme::bench"
BATCH_DISCOUNT = 0.5  # OpenAI's Batch API price: half the live one (used while a tier has no batch price)
KEY = "sk-bench-waves"
REF = re.compile(r"Ref: (DOC-\d+)")
MAX_REASKS = 2


def ok(i: int, model: str) -> Reply:
    value = {"issuer": f"Firm {i + 1} Ltd", "total": i + 1.5}
    if model == T3:  # json_schema mode: the answer is the content
        return 200, completion(content=json.dumps(value), model=model, usage=(260, 20, 0)), {}
    return 200, completion(value, model=model, usage=(420, 24, 0)), {}


def invalid(model: str) -> Reply:
    return 200, completion({"issuer": "Firm", "total": "a lot"}, model=model, usage=(420, 24, 0)), {}


def ungrounded(model: str) -> Reply:
    return 200, completion({"issuer": "Nobody Ltd", "total": 1.0}, model=model, usage=(420, 24, 0)), {}


LIMITED: Reply = (429, error_body("Rate limit reached", "rate_limit_exceeded", "requests"), {"retry-after": "0"})


def script(n: int) -> ScriptedResponder:
    s: dict[tuple[str, str], list[Reply]] = {}
    for i in range(n):
        ref = f"DOC-{i:05d}"
        kind = i % 10
        first = [LIMITED] if i % 50 == 1 else []  # 2 %: a 429 line first
        if kind <= 6:  # 70 %: right at once
            s[(ref, T1)] = [*first, ok(i, T1)]
        elif kind <= 8:  # 20 %: invalid, right on the re-ask
            s[(ref, T1)] = [*first, invalid(T1), ok(i, T1)]
        else:  # 10 %: ungrounded until tier 1's re-asks are spent
            s[(ref, T1)] = [*first, *[ungrounded(T1)] * (MAX_REASKS + 1)]
            if (i // 10) % 2 == 0:
                s[(ref, T2)] = [ok(i, T2)]
            else:
                s[(ref, T2)] = [ungrounded(T2)] * (MAX_REASKS + 1)
                s[(ref, T3)] = [ok(i, T3)]
    return ScriptedResponder(s, marker=_marker)


def _marker(body: dict[str, Any]) -> str | None:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            found = REF.search(str(m.get("content")))
            if found:
                return found.group(1)
    return None


def planner(no: int, lines: list[dict[str, Any]]) -> BatchPlan:
    if no == 1:  # the first batch expires with 10 % of its lines unrun
        return BatchPlan(end="expired", run_lines=len(lines) - len(lines) // 10, seed=no)
    return BatchPlan(seed=no)


def write_inputs(tmp: Path, n: int, base_url: str) -> tuple[Path, Path]:
    folder = tmp / "docs"
    if not folder.exists():
        folder.mkdir()
        for i in range(n):
            (folder / f"DOC-{i:05d}.txt").write_text(f"Ref: DOC-{i:05d}\n" + document(i + 1))
    cfg = tmp / f"extractkit-{abs(hash(base_url))}.toml"
    tiers = [("zero_shot", "zero", T1), ("zero_shot", "mini", T2), ("fine_tuned", "tuned", T3)]
    cfg.write_text('schema = "benchmarks._common:Invoice"\n[batch]\nconcurrency = 64\n' + "".join(
        f'[[tiers]]\nkind = "{k}"\nname = "{name}"\nmodel = "{m}"\nbase_url = "{base_url}"\nmax_reasks = {MAX_REASKS}\n'
        'timeout_s = 120\n' for k, name, m in tiers))  # fmt: skip
    return folder, cfg


def run_cli(args: list[str], kill_when: threading.Event | None = None) -> tuple[int, float, str]:
    """(exit code, child CPU seconds, stdout); SIGKILLed when ``kill_when`` is set."""
    env = dict(os.environ, OPENAI_API_KEY=KEY, EXTRACTKIT_LEDGER="", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "extractkit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if kill_when is not None:

        def killer() -> None:
            while proc.poll() is None:
                if kill_when.wait(0.05):
                    proc.send_signal(signal.SIGKILL)
                    return

        threading.Thread(target=killer, daemon=True).start()
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, -signal.SIGKILL):
        print(err[-3000:], file=sys.stderr)
    return proc.returncode, cpu, out


def ledger_figures(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(path)
    q = db.execute
    waves = [list(r) for r in q("SELECT wave, COUNT(*), SUM(n_lines) FROM batch_jobs GROUP BY wave ORDER BY wave")]
    cost, live_cost, unknown = q("SELECT SUM(cost_usd), SUM(COALESCE(live_cost_usd, cost_usd)),"
                                 " SUM(cost_usd IS NULL AND outcome != 'timeout' AND prompt_tokens > 0)"
                                 " FROM attempts").fetchone()  # fmt: skip
    finals = q("SELECT COUNT(*), SUM(status = 'ok') FROM extractions WHERE superseded_by IS NULL").fetchone()
    attempts = Counter({f"{t}/{o}": n for t, o, n in q("SELECT tier, outcome, COUNT(*) FROM attempts GROUP BY 1, 2")})
    parts = q("SELECT COUNT(*), COUNT(DISTINCT wave || '/' || part) FROM batch_jobs").fetchone()
    db.close()
    return {"waves": waves, "cost": cost or 0.0, "live_cost": live_cost or 0.0, "unpriced": unknown or 0,
            "final": finals[0], "ok": finals[1] or 0, "attempts": attempts, "parts": parts}  # fmt: skip


def batch_cost(fig: dict[str, Any]) -> float:
    """The batch path's cost: as recorded when every batch attempt has its batch price, else the
    live cost of the same tokens at the provider's batch discount."""
    return fig["cost"] if not fig["unpriced"] else fig["live_cost"] * BATCH_DISCOUNT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--documents", type=int)
    p.add_argument("--keep", type=Path, default=None)
    ns = p.parse_args(argv)
    n = ns.documents or SIZES[ns.size]["documents"]
    checks: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = ns.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        # 1. the batch path, unkilled
        with FakeBatchServer(script(n), advance_on_poll=3, planner=planner) as server:
            docs, cfg = write_inputs(tmp, n, server.base_url)
            t0 = time.perf_counter()
            code, cpu, out = run_cli(["extract", str(docs), "-c", str(cfg), "--ledger", str(tmp / "batch.sqlite3"),
                                      "--via", "batch", "--poll", "0", "--json"])  # fmt: skip
            batch_s = time.perf_counter() - t0
            n_batches = len(server.batches)
        if code != 0:
            checks.append(f"batch run exit {code}")
        batch = ledger_figures(tmp / "batch.sqlite3")
        # 2. the same answers live
        with FakeLLMServer(script(n)) as llm:
            docs, cfg_live = write_inputs(tmp, n, llm.base_url)
            t0 = time.perf_counter()
            code, live_cpu, _ = run_cli(["extract", str(docs), "-c", str(cfg_live), "--ledger",
                                         str(tmp / "live.sqlite3"), "--via", "live", "--json"])  # fmt: skip
            live_s = time.perf_counter() - t0
        if code != 0:
            checks.append(f"live run exit {code}")
        live = ledger_figures(tmp / "live.sqlite3")
        ratio = batch_cost(batch) / live["cost"] if live["cost"] else None
        # 3. the batch path killed twice (wave 1 submitted; during wave 2's ingest) and resumed
        kills: list[dict[str, Any]] = []
        with FakeBatchServer(script(n), advance_on_poll=3, planner=planner) as server:
            docs, cfg_k = write_inputs(tmp, n, server.base_url)
            args = ["extract", str(docs), "-c", str(cfg_k), "--ledger", str(tmp / "killed.sqlite3"), "--via", "batch",
                    "--poll", "0", "--json"]  # fmt: skip
            real = server.handle
            when = {"at": "wave1"}
            fire = threading.Event()

            def handle(method: str, path: str, query: Any, body: Any) -> Any:
                answer = real(method, path, query, body)
                polls = [c for c in server.calls if c[0] == "GET" and c[1].startswith("/v1/batches/")]
                if when["at"] == "wave1" and polls:  # wave 1 submitted and polled once
                    fire.set()
                if when["at"] == "wave2" and method == "GET" and path.endswith("/content"):
                    b2 = server.batch(2) if len(server.batches) >= 2 else None
                    if b2 is not None and path == f"/v1/files/{b2.output_file_id}/content":
                        threading.Timer(0.5, fire.set).start()  # the answers are being written
                return answer

            server.handle = handle  # type: ignore[method-assign]
            for at in ("wave1", "wave2"):
                when["at"], fire = at, threading.Event()
                code, _, _ = run_cli(args, kill_when=fire)
                kills.append({"at": at, "killed": code == -signal.SIGKILL, "exit": code})
            when["at"] = "none"
            code, _, _ = run_cli(args)
            kills.append({"at": "resume", "exit": code})
            creates = [b["metadata"]["extractkit_job"] for m, pth, b in server.calls if (m, pth) == ("POST", "/v1/batches")]
        killed = ledger_figures(tmp / "killed.sqlite3")
    if code != 0:
        checks.append(f"resumed run exit {code}")
    if len(creates) != len(set(creates)) or killed["parts"][0] != killed["parts"][1] or len(creates) != killed["parts"][0]:
        checks.append(f"a wave part created twice: {len(creates)} creates, parts {killed['parts']}")
    for name, fig in (("batch", batch), ("live", live), ("killed", killed)):
        if fig["final"] != n:
            checks.append(f"{name}: {fig['final']} final extractions for {n} documents")
    if killed["attempts"] != batch["attempts"]:
        checks.append(f"killed+resumed attempts differ: {dict(killed['attempts'] - batch['attempts'])} / "
                      f"{dict(batch['attempts'] - killed['attempts'])}")  # fmt: skip
    load = os.getloadavg()
    rows = [
        {"measure": "documents", "value": n},
        {"measure": "waves", "value": len(batch["waves"])},
        {"measure": "provider batches", "value": n_batches},
        {"measure": "request lines, all waves", "value": sum(w[2] for w in batch["waves"])},
        {"measure": "live requests (same answers)", "value": sum(live["attempts"].values())},
        {"measure": "cost batch (USD)", "value": round(batch_cost(batch), 6)},
        {"measure": "cost live (USD)", "value": round(live["cost"], 6)},
        {"measure": "cost ratio batch / live", "value": round(ratio, 4) if ratio is not None else -1.0,
         "target": "<= 0.55", "met": ratio is not None and ratio <= 0.55},
        {"measure": "extractkit CPU ms / document (batch)", "value": round(1000 * cpu / n, 3)},
        {"measure": "extractkit CPU ms / document (live)", "value": round(1000 * live_cpu / n, 3)},
        {"measure": "wall s (batch, poll 0)", "value": round(batch_s, 1)},
        {"measure": "wall s (live)", "value": round(live_s, 1)},
        {"measure": "kills then resume: parts created twice", "value": len(creates) - len(set(creates))},
        {"measure": "kills then resume: final extractions", "value": killed["final"]},
        {"measure": "load average (1 min) at the end", "value": round(load[0], 2)},
    ]  # fmt: skip
    extra = {"waves": [{"wave": w, "parts": p_, "lines": lines} for w, p_, lines in batch["waves"]],
             "kills": kills, "failed_checks": checks, "batch_cost_from": "recorded" if not batch["unpriced"]
             else f"live cost x {BATCH_DISCOUNT} (no batch price on the tiers yet)",
             "attempts_batch": dict(batch["attempts"]), "attempts_live": dict(live["attempts"]),
             "loadavg": load}  # fmt: skip
    report("waves", ns, rows, extra)
    print("waves (wave, parts, lines): " + ", ".join(f"{w}:{p_}/{lines}" for w, p_, lines in batch["waves"]))
    print("kills: " + json.dumps(kills))
    for c in checks:
        print(f"CHECK FAILED: {c}")
    return 3 if checks else 0


if __name__ == "__main__":
    sys.exit(main())
