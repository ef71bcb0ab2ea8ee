"""Issue 18, second re-audit (audit 18b): documents no longer stuck in a batch the provider lost
(HTTP 404) or whose output cannot be read (`batch cancel --abandon`, and a 404 abandons the part
by itself); a batch answer over ``max_response_bytes`` is ``response_too_large`` as live; a live
run on PostgreSQL explains the documents it skipped as on SQLite; the --max-cost and "no Batch
API" messages say what works."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from extractkit import Extractor, Ledger, ZeroShot
from extractkit.ledger import NewBatchItem, NewBatchJob

from .conftest import Invoice
from .fakes import completion, echo_invoice_responder
from .test_batch import cli, write_config
from .test_i18fin import KEY, Provider, _run, make_docs

HTML = b"<html><body>502 Bad Gateway</body></html>\n"


class HtmlOut(Provider):
    """With ``html_out`` True, every output file the batches write is an HTML page (a proxy's)."""

    html_out = False

    def _store_output(self, b: Any, entries: list[dict[str, Any]], kind: str) -> str | None:
        fid = super()._store_output(b, entries, kind)
        if fid is not None and self.html_out:
            self.files[fid].data = HTML
        return fid


def sql(ledger: str, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(ledger) as c:
        return c.execute(query).fetchall()


def _submitted_then_stopped(tmp_path: Path, server: Provider, docs: Path, ledger: str) -> None:
    """A `--via batch` run that stops right after its batch is submitted (as a killed one)."""
    from extractkit.batch._waves import WaveRunner

    class Stop(Exception):
        pass

    def on_wave(ev: Any) -> None:
        if ev.event == "submitted":
            raise Stop

    tier = ZeroShot(name="t1", model="gpt-4o-mini", base_url=server.base_url, api_key="sk-fake", max_reasks=0)
    with Ledger(ledger) as led:
        runner = WaveRunner(Extractor(Invoice, [tier]), led, poll_s=0, on_wave=on_wave)
        with pytest.raises(Stop):
            _run(runner, [docs])


# -- 1. a batch the provider lost (404), an output file that cannot be read ---------------------------


def test_a_forgotten_batch_is_abandoned_by_batch_cancel_and_its_documents_go_live(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with Provider(echo_invoice_responder) as server:  # advance 0: the batch stays validating
        cfg = str(write_config(tmp_path, server.base_url, tier_extra='name = "t1"'))
        ledger = str(tmp_path / "l.sqlite3")
        _submitted_then_stopped(tmp_path, server, docs, ledger)
        assert server.creates() == 1
        with server.lock:
            server.batches.clear()  # the provider forgot it (another project's key, a lost gateway)
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger]
        assert cli(*args).stderr.count("in_batch") == 3 and server.live() == 0  # still in flight
        done = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all")
        assert done.returncode == 0, done.stderr
        said = " ".join(done.stdout.split())
        assert "validating -> abandoned (given up:" in said and "404" in said, said
        assert "3 documents freed from 1 abandoned part" in said, said
        st = json.loads(cli("batch", "status", "-c", cfg, "--ledger", ledger, "--json").stdout)
        assert st["open_parts"] == 0 and [p["status"] for p in st["parts"]] == ["abandoned"]
        assert [(w["abandoned"], w["sent"], w["pending"]) for w in st["waves"]] == [(3, 0, 0)]
        live = cli(*args, "--json")  # free now: sent live, once each
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout)["ok"] == 3 and server.live() == 3
    assert sql(ledger, "select count(*), count(distinct document_sha256) from extractions"
                       " where status = 'ok'") == [(3, 3)]  # fmt: skip


def test_a_404_on_poll_abandons_the_part_and_the_next_run_sends_its_documents(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with Provider(echo_invoice_responder) as server:
        cfg = str(write_config(tmp_path, server.base_url, tier_extra='name = "t1"'))
        ledger = str(tmp_path / "l.sqlite3")
        _submitted_then_stopped(tmp_path, server, docs, ledger)
        with server.lock:
            server.batches.clear()
        server.advance_on_poll = 3
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0"]
        lost = cli(*args)
        assert lost.returncode == 1
        said = " ".join(lost.stderr.split())
        assert "the part is abandoned and its 3 unanswered documents freed" in said, said
        again = cli(*args, "--json")  # sent again in a new wave
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["ok"] == 3 and server.creates() == 2
    assert sql(ledger, "select status from batch_jobs order by wave") == [("abandoned",), ("ingested",)]
    assert sql(ledger, "select count(*), count(distinct document_sha256) from extractions"
                       " where status = 'ok'") == [(3, 3)]  # fmt: skip


def test_an_unreadable_output_file_is_freed_by_abandon_and_a_later_answer_is_ignored(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with HtmlOut(echo_invoice_responder, advance_on_poll=3) as server:
        server.html_out = True
        cfg = str(write_config(tmp_path, server.base_url))
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger]
        stuck = cli(*args, "--via", "batch", "--poll", "0")
        assert stuck.returncode == 1
        said = " ".join(stuck.stderr.split())
        assert "not JSON Lines" in said and "batch cancel --all --abandon" in said, said
        plain = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all")  # frees nothing: says so
        assert plain.returncode == 0 and "--all --abandon" in " ".join(plain.stdout.split()), plain.stdout
        gone = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all", "--abandon", "--json")
        assert gone.returncode == 0, gone.stderr
        got = json.loads(gone.stdout)
        assert (got["parts_abandoned"], got["documents_abandoned"]) == (1, 3)
        assert [p["status"] for p in got["parts"]] == ["abandoned"]
        live = cli(*args, "--json")
        assert live.returncode == 0 and json.loads(live.stdout)["ok"] == 3 and server.live() == 3
        # the provider's file is readable again: the abandoned part is never read back (not twice)
        with server.lock:
            for f in server.files.values():
                if f.data == HTML:
                    f.data = b""
        calls = len(server.calls)
        again = cli(*args, "--via", "batch", "--poll", "0", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["resumed"] == 3
        assert not [p for _, p, _ in server.calls[calls:] if "/content" in p or "/batches/" in p]
    assert sql(ledger, "select count(*), count(distinct document_sha256) from extractions") == [(3, 3)]


def test_abandon_frees_sent_items_and_ignores_their_answers(ledger_target: str) -> None:
    """Both engines: ``abandon_batch_jobs`` closes the parts and frees the unanswered items; an
    answer arriving later finishes nothing; an answered item keeps its answer."""
    from extractkit.ledger import ItemOutcome

    with Ledger(ledger_target) as led:
        chain = ("s" * 8, "c" * 8)
        items = [NewBatchItem(document_sha256=f"d{i}", schema_hash=chain[0], config_hash=chain[1], wave=1,
                              tier="t1", tier_state_json="{}") for i in range(3)]  # fmt: skip
        assert led.add_batch_items(items) == 3
        ids = [i.id for i in led.pending_batch_items(*chain)]
        job = led.create_batch_job(NewBatchJob(*chain, wave=1, part=0, tier="t1", model="m", endpoint="e"), ids)
        assert job is not None and led.batch_job_uploaded(job.id, "file-1", 10)
        assert led.batch_job_submitted(job.id, "batch-1")
        first = sorted(ids)[0]
        nxt = NewBatchItem(document_sha256="d-next", schema_hash=chain[0], config_hash=chain[1], wave=2,
                           tier="t1", tier_state_json="{}")  # fmt: skip
        assert led.finish_batch_items(None, [ItemOutcome(first, next_item=nxt)]) == 1
        assert led.abandon_batch_jobs(*chain, wave=2) == (0, 0)  # another wave: nothing
        assert led.abandon_batch_jobs(*chain) == (1, 2)
        assert led.abandon_batch_jobs(*chain) == (0, 0)  # once
        assert led.open_batch_jobs(*chain) == []
        assert led.in_flight(*chain) == {"d-next"}
        rest = [ItemOutcome(i, next_item=nxt) for i in sorted(ids)[1:]]
        assert led.finish_batch_items(None, rest) == 0  # a late answer is ignored
        assert not led.batch_job_polled(job.id, "completed") and not led.batch_job_ingested(job.id)
        (row, _) = led.wave_summary(*chain)
        assert (row.abandoned, row.answered, row.sent, row.open_parts) == (2, 1, 0, 0)
        assert led.batch_job(job.id).status == "abandoned"  # type: ignore[union-attr]


def test_no_batch_api_does_not_say_run_the_same_command_again(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with Provider(echo_invoice_responder) as server:
        server.no_batch = True
        cfg = str(write_config(tmp_path, server.base_url))
        ledger = str(tmp_path / "l.sqlite3")
        stuck = cli("extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0")
        assert stuck.returncode == 1
        said = " ".join(stuck.stderr.split())
        assert "has no Batch API" in said and "batch cancel --all" in said
        assert "run the same command again" not in said, said


# -- 2. a batch answer over max_response_bytes, as live ---------------------------------------------


def _huge(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    name = body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
    return 200, completion({"issuer": "Acme " + "x" * 20_000, "total": 10.0}, name=name), {}


def test_a_batch_answer_over_max_response_bytes_is_response_too_large_as_live(
    tmp_path: Path, ledger_target: str
) -> None:
    from extractkit.batch._waves import WaveRunner

    docs = make_docs(tmp_path, 1)
    with Provider(_huge, advance_on_poll=3) as server, Ledger(ledger_target) as led:
        tier = ZeroShot(name="t1", model="gpt-4o-mini", base_url=server.base_url, api_key=KEY, max_reasks=1)
        live = Extractor(Invoice, [tier], max_response_bytes=8000).extract((docs / "d0.txt").read_text())
        assert [a.outcome.value for a in live.attempts] == ["response_too_large"]
        ex = Extractor(Invoice, [tier], max_response_bytes=8000)
        summary = _run(WaveRunner(ex, led, poll_s=0), [docs])
        assert summary.failed == 1 and len(server.requests) == 1  # not re-asked
        rows = led._read("SELECT outcome, error FROM attempts WHERE via = 'batch'")
        assert [r["outcome"] for r in rows] == ["response_too_large"]
        assert "8000-byte cap" in rows[0]["error"]
        assert "x" * 1000 not in json.dumps([dict(r) for r in led._read("SELECT * FROM attempts")], default=str)


# -- 3. PostgreSQL explains a skipped document as SQLite does; the --max-cost message ----------------


def test_a_live_run_on_postgresql_explains_the_documents_in_a_wave(tmp_path: Path, pg_url: str) -> None:
    docs = make_docs(tmp_path, 2)
    with Provider(echo_invoice_responder) as server:
        server.no_batch = True  # wave 1 is left building: its documents in flight
        cfg = str(write_config(tmp_path, server.base_url))
        assert cli("extract", str(docs), "-c", cfg, "--ledger", pg_url, "--via", "batch", "--poll", "0").returncode == 1
        live = cli("extract", str(docs), "-c", cfg, "--ledger", pg_url)
        assert live.returncode == 1 and server.live() == 0
        said = " ".join(live.stdout.split())
        assert "2 documents not extracted" in said, said
        assert "see the ledger" not in said and said.count("never sent to the provider") == 2, said


def test_the_max_cost_stop_names_the_ceiling_and_the_way_to_free_the_documents(tmp_path: Path) -> None:
    docs = make_docs(tmp_path, 2)
    with Provider(echo_invoice_responder) as server:
        cfg = str(write_config(tmp_path, server.base_url))
        ledger = str(tmp_path / "l.sqlite3")
        got = cli("extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0",
                  "--max-cost", "0.00001")  # fmt: skip
        assert got.returncode == 1 and server.creates() == 0
        said = " ".join(got.stderr.split())
        assert "max cost $0.00001 (--max-cost)" in said and "1e-05" not in said, said
        assert "batch cancel --all" in said, said
        freed = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all")
        assert "2 documents freed" in freed.stdout, freed.stdout


# -- 4. the dry run says which tiers are priced at the batch price ------------------------------------


def test_the_dry_run_says_which_tiers_are_priced_at_the_batch_price(tmp_path: Path) -> None:
    docs = make_docs(tmp_path, 1)
    cfg = write_config(tmp_path, "http://127.0.0.1:9/v1", tier_extra='name = "cheap"')
    cfg.write_text(cfg.read_text() + '[[tiers]]\nname = "big"\nkind = "zero_shot"\nmodel = "gpt-4o"\n'
                   'base_url = "http://127.0.0.1:9/v1"\nmax_reasks = 0\nvia = "live"\n')  # fmt: skip
    got = cli("extract", str(docs), "-c", str(cfg), "--ledger", str(tmp_path / "l.sqlite3"), "--via", "batch",
              "--dry-run")  # fmt: skip
    assert got.returncode == 0, got.stderr
    said = " ".join(got.stdout.split())
    assert "priced at the Batch API price (sent by batch): cheap; at the live price: big" in said, said
    plain = cli("extract", str(docs), "-c", str(cfg), "--ledger", str(tmp_path / "l.sqlite3"), "--dry-run")
    assert plain.returncode == 0 and "Batch API price" not in plain.stdout
