"""Issue 18, the last LOW findings of audit 18b: a second `--via batch` run of a chain another
run is driving reports every one of its documents (waiting for the other run's waves, then
reading their results from the ledger) and says so; a live run names the documents that wait
for a wave and were never sent as such (not "paid twice") with the way to free them; a refused
key is labelled as such in the summary of either path; `extract --help` defines exit code 1 for
a Batch API stop."""

from __future__ import annotations

import json
from pathlib import Path

from extractkit import Extractor, Ledger, ZeroShot
from extractkit.batch._waves import WaveRunner

from .conftest import Invoice
from .fakes import echo_invoice_responder
from .test_batch import cli, lines, write_config
from .test_i18fin import Provider, _run, make_docs, sql
from .test_i18fin2 import _submitted_then_stopped


def _tier(server: Provider) -> ZeroShot:
    return ZeroShot(name="t1", model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake", max_reasks=0)


# -- finding 4: a second run of the chain while another drives its waves ------------------------------


def test_a_run_whose_documents_another_run_reads_back_reports_every_one(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    ledger = str(tmp_path / "l.sqlite3")
    with Provider(echo_invoice_responder, advance_on_poll=3) as server:
        _submitted_then_stopped(tmp_path, server, docs, ledger)  # run A: the wave is at the provider

        class Waiting(WaveRunner):
            """Run B: once it has found its documents in run A's wave, run C (another process in
            real life) drives that wave to the end and reads every answer back first."""

            async def _drive(self) -> None:
                with Ledger(ledger) as led:
                    other = WaveRunner(Extractor(Invoice, [_tier(server)]), led, poll_s=0)
                    try:
                        got = await other.run([docs])
                    finally:
                        await other.extractor.aclose()
                assert got.ok == 3 and got.resumed == 0  # C read them back, not B
                await super()._drive()

        notes: list[str] = []
        out = tmp_path / "b.jsonl"
        with Ledger(ledger) as led:
            runner = Waiting(Extractor(Invoice, [_tier(server)]), led, poll_s=0, out=out)
            runner.on_note = notes.append
            summary = _run(runner, [docs])
        assert server.creates() == 1  # nothing sent twice
    # before: "documents 0", an empty --out, exit 0
    assert (summary.documents, summary.ok, summary.resumed, summary.attempts) == (3, 3, 3, 0), summary
    assert sorted(r["path"] for r in lines(out)) == sorted(str(p) for p in docs.iterdir())
    assert all(r["status"] == "ok" and r["resumed"] for r in lines(out))
    said = " ".join(notes)
    assert "3 documents of this run are already in wave 1 of this chain" in said, said
    assert "3 documents of this run were read back by another run of this chain" in said, said
    assert sql(ledger, "select count(*) from extractions") == [(3,)]


def test_a_run_whose_waiting_documents_are_freed_meanwhile_lists_them(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    ledger = str(tmp_path / "l.sqlite3")
    with Provider(echo_invoice_responder, advance_on_poll=3) as server:
        server.no_batch = True  # run A's part is never submitted: its documents wait in wave 1
        cfg = str(write_config(tmp_path, server.base_url, tier_extra='name = "t1"'))
        assert cli("extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll",
                   "0").returncode == 1  # fmt: skip
        server.no_batch = False

        class Freed(WaveRunner):
            async def _drive(self) -> None:  # `batch cancel --all` while this run waits
                with Ledger(ledger) as led:
                    ex = self.extractor
                    assert led.cancel_unsent(ex.schema_hash, ex.config_hash)[1] == 3
                await super()._drive()

        with Ledger(ledger) as led:
            runner = Freed(Extractor(Invoice, [_tier(server)]), led, poll_s=0)
            summary = _run(runner, [docs])
    assert (summary.documents, summary.errors) == (3, 3), summary
    assert len(summary.failed_paths) == 3 and server.creates() == 0


def test_the_cli_says_the_documents_are_already_in_a_wave_and_writes_their_lines(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    ledger = str(tmp_path / "l.sqlite3")
    with Provider(echo_invoice_responder, advance_on_poll=3) as server:
        cfg = str(write_config(tmp_path, server.base_url, tier_extra='name = "t1"'))
        _submitted_then_stopped(tmp_path, server, docs, ledger)
        out = tmp_path / "r.jsonl"
        got = cli("extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0",
                  "--out", str(out))  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert server.creates() == 1
    said = " ".join(got.stderr.split())
    assert ("note: 3 documents of this run are already in wave 1 of this chain, sent by an earlier run or"
            " by another run driving them now: not sent again") in said, said  # fmt: skip
    assert len(lines(out)) == 3


# -- finding 5: documents never sent, in a live run ---------------------------------------------------


def test_a_live_run_says_documents_left_by_max_cost_were_never_sent_and_how_to_free_them(
    tmp_path: Path,
) -> None:
    docs = make_docs(tmp_path)
    ledger = str(tmp_path / "l.sqlite3")
    with Provider(echo_invoice_responder, advance_on_poll=3) as server:
        cfg = str(write_config(tmp_path, server.base_url))
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger]
        stopped = cli(*args, "--via", "batch", "--poll", "0", "--max-cost", "0.00001")
        assert stopped.returncode == 1 and "would be passed by the next batch" in stopped.stderr
        live = cli(*args)
        assert live.returncode == 1 and server.live() == 0 and not server.batches
        said = " ".join(live.stdout.split() + live.stderr.split())
        assert "paid twice" not in said, said  # before: "not sent live (it would be paid twice)"
        assert said.count("never sent to the provider") == 3, said
        assert "`extractkit batch cancel --all` (with the same -c) frees it for a live run" in said
        assert cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all").returncode == 0
        freed = cli(*args, "--json")
        assert freed.returncode == 0 and json.loads(freed.stdout)["ok"] == 3 and server.live() == 3


def test_a_document_at_the_provider_is_still_refused_as_paid_twice(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    ledger = str(tmp_path / "l.sqlite3")
    with Provider(echo_invoice_responder) as server:
        cfg = str(write_config(tmp_path, server.base_url, tier_extra='name = "t1"'))
        _submitted_then_stopped(tmp_path, server, docs, ledger)
        live = cli("extract", str(docs), "-c", cfg, "--ledger", ledger)
        assert live.returncode == 1 and server.live() == 0
    said = " ".join(live.stdout.split() + live.stderr.split())
    assert said.count("it would be paid twice") == 3 and "never sent" not in said, said


# -- finding 7: a refused key, exit code 1 ------------------------------------------------------------


def test_a_refused_key_is_labelled_as_such_in_the_batch_and_live_summaries(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with Provider(echo_invoice_responder, advance_on_poll=3, api_key="sk-right") as server:
        cfg = str(write_config(tmp_path, server.base_url))
        for name, via in (("b", ["--via", "batch", "--poll", "0"]), ("l", [])):
            args = ["extract", str(docs), "-c", cfg, "--ledger", str(tmp_path / f"{name}.sqlite3"), *via]
            got = cli(*args)
            assert got.returncode == 3, got.stderr
            assert "(provider_unreachable: the provider refused the API key)" in got.stdout, got.stdout
            assert "check OPENAI_API_KEY" in got.stderr
            as_json = json.loads(cli(*args, "--json").stdout)
            assert as_json["key_refused"] is True and as_json["status"] == "provider_unreachable"


def test_extract_help_defines_exit_code_1_for_a_batch_api_stop() -> None:
    got = cli("extract", "--help")
    said = " ".join(got.stdout.replace("│", " ").split())
    assert "with --via batch, the Batch API stopped the run" in said, said
