"""Defects a new user's trial found after issue 14 (each test fails on the code before the fix):
output paths checked before anything is paid for and errors naming the user's file, the summary's
cost of a resumed rerun, a rerun of failed documents saying why nothing was sent, an empty gold
conversion, a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .fakes import FakeLLMServer, completion, echo_invoice_responder

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "EXTRACTKIT_"))}
    env.update(OPENAI_API_KEY="sk-test", COLUMNS="200", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "extractkit", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _project(tmp: Path, url: str, n: int = 3) -> tuple[Path, Path]:
    docs = tmp / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"inv{i}.txt").write_text(f"From: ACME Tools Ltd\nInvoice {i}\nTotal due: 1,249.5{i} EUR\n")
    cfg = tmp / "cfg.toml"
    cfg.write_text(f'schema = "tests.conftest:Invoice"\n[ledger]\npath = "ledger.sqlite3"\n'
                   f'[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{url}"\nmax_reasks = 0\n')  # fmt: skip
    return docs, cfg


def test_eval_checks_its_output_files_before_sending_anything(tmp_path):
    docs, cfg = _project(tmp_path, "http://127.0.0.1:9/v1")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        json.dumps({"id": "a", "document": str(docs / "inv0.txt"), "expected": {"total": 1249.5}}) + "\n"
    )
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg.write_text(cfg.read_text().replace("http://127.0.0.1:9/v1", server.base_url))
        for option, path in (("--html", "/proc/x.html"), ("--csv", tmp_path)):
            proc = _cli("eval", gold, "-c", cfg, option, path)
            assert proc.returncode == 2, proc.stderr
            assert f"cannot write {option} {path}" in proc.stderr and "Traceback" not in proc.stderr
        assert server.requests == []  # nothing paid for


def test_report_to_a_folder_names_it_and_leaves_no_temporary_file(tmp_path):
    docs, cfg = _project(tmp_path, "")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg.write_text(cfg.read_text().replace('base_url = ""', f'base_url = "{server.base_url}"'))
        assert _cli("extract", docs, "-c", cfg).returncode == 0
    target = tmp_path / "somedir"
    target.mkdir()
    proc = _cli("report", "-c", cfg, "--html", target)
    assert proc.returncode == 2
    assert f"cannot write --html {target}: is a folder" in proc.stderr, proc.stderr
    assert not any(".tmp" in p.name for p in tmp_path.rglob("*"))


def test_a_resumed_rerun_costs_nothing_and_says_why_failed_documents_were_not_sent(tmp_path):
    def ungrounded(body):  # valid JSON, an issuer that is not in the document: `ungrounded`
        name = body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
        return 200, completion({"issuer": "Invented Corp", "total": 1.0}, name=name), {}

    docs, cfg = _project(tmp_path, "")
    with FakeLLMServer(ungrounded) as server:
        cfg.write_text(cfg.read_text().replace('base_url = ""', f'base_url = "{server.base_url}"'))
        first = _cli("extract", docs, "-c", cfg, "--json")
        again = _cli("extract", docs, "-c", cfg, "--json")
        text = _cli("extract", docs, "-c", cfg)
        sent = len(server.requests)
    assert first.returncode == again.returncode == 1
    assert json.loads(first.stdout)["cost_usd"] > 0
    rerun = json.loads(again.stdout)
    assert rerun["attempts"] == 0 and rerun["cost_usd"] == 0  # was the first run's spend
    assert sent == 3  # only the first run sent anything
    assert "3 of them failed in an earlier run with this chain and were not sent again" in text.stdout
    assert "--retry-failed" in text.stdout


def test_gold_conversion_of_a_folder_without_gold_says_why_and_writes_nothing(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("ACME")
    out = tmp_path / "gold.jsonl"
    proc = _cli("gold", "from-invoice2data", folder, "-o", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no gold item" in proc.stderr and "NAME.json" in proc.stderr
    assert not out.exists()


def test_a_closed_pipe_ends_quietly(tmp_path):
    docs, cfg = _project(tmp_path, "")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg.write_text(cfg.read_text().replace('base_url = ""', f'base_url = "{server.base_url}"'))
        assert _cli("extract", docs, "-c", cfg).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "EXTRACTKIT_"))}
    # the reader is gone before the command writes a byte: every write fails with EPIPE
    proc = subprocess.Popen([sys.executable, "-m", "extractkit", "report", "-c", str(cfg), "--json"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert "Broken pipe" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr, (
        stderr
    )


def test_latency_leaves_out_the_wait_for_the_client_side_rate_limiter(mock_api):
    """A document queued behind the run's rpm/tpm pacing did not take longer to extract: eval showed
    later tiers as slower, the report a p50 of seconds for a provider answering in milliseconds."""
    import asyncio
    import time

    import httpx

    from extractkit import Extractor, ZeroShot

    from .conftest import Invoice
    from .fakes import BASE_URL

    class SlowQueue:  # a limiter whose queue holds every request for 1.5 s
        async def acquire(self, tokens: int) -> None:
            await asyncio.sleep(1.5)

    args = {"issuer": "ACME Tools Ltd", "total": 1249.5}
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(args)))
    ex = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)])
    ex.limiter = SlowQueue()
    t0 = time.perf_counter()
    result = ex.extract("ACME Tools Ltd\nTotal due: 1,249.50 EUR")
    wall = time.perf_counter() - t0
    ex.close()
    assert result.ok and wall >= 1.5
    assert result.latency_s < wall - 1.4  # the 1.5 s in the queue is not the document's latency


def on(cfg: Path, ledger_target: str) -> str:
    """The project's ledger moved to ``ledger_target`` when that is PostgreSQL; the ledger it names."""
    if "://" not in ledger_target:
        return str(cfg.parent / "ledger.sqlite3")
    cfg.write_text(cfg.read_text().replace('path = "ledger.sqlite3"', f'url = "{ledger_target}"'))
    return ledger_target


def test_report_names_what_it_cannot_show_and_why_one_tier_ran(tmp_path, ledger_target):
    docs, cfg = _project(tmp_path, "")
    ledger = on(cfg, ledger_target)
    (tmp_path / "ex.jsonl").write_text(json.dumps({"input": "ACME Ltd total 5.00",
                                                   "output": {"issuer": "ACME Ltd", "total": 5.0}}) + "\n")  # fmt: skip
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg.write_text(cfg.read_text().replace('base_url = ""', f'base_url = "{server.base_url}"')
                       + f'[[tiers]]\nkind = "few_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{server.base_url}"\n'
                       'examples = "ex.jsonl"\nmax_reasks = 0\n')  # fmt: skip
        assert _cli("extract", docs, "-c", cfg).returncode == 0
        gold = tmp_path / "gold.jsonl"
        gold.write_text(
            json.dumps({"id": "a", "document": str(docs / "inv0.txt"), "expected": {"total": 1249.5}}) + "\n"
        )
        ev = _cli("eval", gold, "-c", cfg, "--json")
    assert ev.returncode == 0, ev.stderr
    eval_run = json.loads(ev.stdout)["run_id"]
    report = _cli("report", "-c", cfg)
    assert report.returncode == 0
    # zero_shot resolved everything: few_shot is configured but never ran
    assert "Only zero_shot was needed" in report.stdout and "few_shot never ran" in report.stdout, (
        report.stdout
    )
    assert f"ledger: {ledger}" in report.stderr
    as_eval = _cli("report", "-c", cfg, "--run", eval_run)
    assert as_eval.returncode == 2 and f"extractkit eval --run {eval_run}" in as_eval.stderr
    nosuch = _cli("report", "-c", cfg, "--config-hash", "deadbeef")
    assert nosuch.returncode == 2 and "no such chain config" in nosuch.stderr
    future = _cli("report", "-c", cfg, "--since", "2099-01-01")
    assert future.returncode == 0 and "No extraction by a chain in this scope" in future.stdout


async def test_leaving_aextract_many_early_inside_async_with_marks_the_run_interrupted(tmp_path, ledger_target):
    """`break` out of `async for ... in extractor.aextract_many(...)` inside `async with extractor`:
    closing the extractor stops the batch while its ledger is open (the run was left `running`, and
    a traceback "Cannot operate on a closed database" came at exit)."""
    import asyncio

    from extractkit import Extractor, Ledger, ZeroShot

    from .conftest import Invoice

    def answer(body):
        import time

        time.sleep(0.3)
        return echo_invoice_responder(body)

    path = ledger_target
    with FakeLLMServer(answer) as server:
        async with Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=server.base_url)],
                             ledger=path) as ex:  # fmt: skip
            texts = [f"From: ACME {i} Ltd\nTotal due: {i}.50 EUR" for i in range(8)]
            async for _item in ex.aextract_many(texts, concurrency=2):
                break
        await asyncio.sleep(0)
    with Ledger(path) as ledger:
        runs = [tuple(r) for r in ledger.query("SELECT kind, status FROM runs WHERE kind = 'batch'")]
    assert runs == [("batch", "interrupted")]


def test_finetune_export_checks_its_output_folder_first(tmp_path):
    docs, cfg = _project(tmp_path, "http://127.0.0.1:9/v1")
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = _cli("finetune", "export", "-c", cfg, "-o", afile)
    assert proc.returncode == 2 and f"cannot write --out {afile}: not a folder" in proc.stderr, proc.stderr


def test_the_report_does_not_say_a_tier_was_needed_when_it_resolved_nothing(tmp_path, ledger_target):
    import socket

    with socket.socket() as s:  # a port nobody listens on: every document ends `connection_error`
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    docs, cfg = _project(tmp_path, f"http://127.0.0.1:{port}/v1", n=2)
    on(cfg, ledger_target)
    (tmp_path / "ex.jsonl").write_text(json.dumps({"input": "ACME Ltd total 5.00",
                                                   "output": {"issuer": "ACME Ltd", "total": 5.0}}) + "\n")  # fmt: skip
    cfg.write_text(cfg.read_text() + f'[[tiers]]\nkind = "few_shot"\nmodel = "gpt-4o-mini"\n'
                   f'base_url = "http://127.0.0.1:{port}/v1"\nexamples = "ex.jsonl"\nmax_reasks = 0\n')  # fmt: skip
    assert _cli("extract", docs, "-c", cfg).returncode in (1, 3)
    report = _cli("report", "-c", cfg)
    assert "was needed" not in report.stdout
    assert "left 2 of 2 documents unresolved without escalating them" in report.stdout, report.stdout
