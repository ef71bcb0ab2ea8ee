"""Issue 14, sections 2 and 5: the batch counts its documents first (walking the paths, reading no
file) so the progress bar has a total instead of "0/?"; paths that hold no document are an error
(``NoDocuments``), never a `done` run of zero documents, in the library as in the CLI."""

from __future__ import annotations

import asyncio
import builtins
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import extractkit
from extractkit import DocumentError, Extractor, Ledger, ZeroShot
from extractkit.batch import BatchRunner
from extractkit.cli._app import app

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, FakeLLMServer, echo_invoice_responder
from .test_batch_edges import text_pdf


def echo(request: httpx.Request) -> httpx.Response:
    status, body, headers = echo_invoice_responder(json.loads(request.content))
    return httpx.Response(status, json=body, headers=headers)


def extractor() -> Extractor:
    return Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)])


def make_docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.md", "sub/c.html"):
        (docs / name).write_text(f"From: {name} Ltd\nTotal: 1.00\n")
    (docs / "sub" / "D.PDF").write_bytes(text_pdf("From: Pdf Ltd Total: 1.00"))
    (docs / "photo.gif").write_bytes(b"\x89PNG")
    (docs / "notes").write_text("no suffix")
    return docs


def test_count_documents_walks_without_reading_a_file(tmp_path, monkeypatch):
    docs = make_docs(tmp_path)

    def no_reading(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a file was opened while counting")

    from extractkit.batch import count_documents

    monkeypatch.setattr(builtins, "open", no_reading)
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    assert count_documents([docs]) == 4  # .gif and the file without a suffix are not documents
    assert count_documents([docs], ["*.pdf"]) == 1  # case-insensitive, as the batch matches
    assert count_documents([docs / "a.txt", docs / "sub"]) == 3


@pytest.mark.parametrize(
    ("paths", "include", "says"),
    [
        ([], None, "(no paths given)"),
        (["empty"], None, "empty"),
        (["docs"], ["*.docx"], "--include *.docx"),
        (["only_photos"], None, "1 file(s) of other types (.gif 1)"),
    ],
    ids=["no paths", "empty folder", "include matches nothing", "only unsupported files"],
)
def test_the_runner_raises_nodocuments_and_records_no_run(mock_api, tmp_path, paths, include, says):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    make_docs(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_photos").mkdir()
    (tmp_path / "only_photos" / "p.gif").write_bytes(b"\x89PNG")
    db = tmp_path / "l.sqlite3"
    with Ledger(db) as ledger, pytest.raises(DocumentError) as info:
        runner = BatchRunner(extractor(), ledger, include=include)
        asyncio.run(runner.run([tmp_path / p for p in paths]))
    assert isinstance(info.value, extractkit.NoDocuments) and info.value.kind == "no_documents"
    assert "no documents matched" in str(info.value) and says in str(info.value)
    assert db_rows(db, "SELECT count(*) FROM runs") == [(0,)]
    assert not route.called


def test_on_total_is_told_the_count_before_the_first_result(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    docs = make_docs(tmp_path)
    events: list[tuple[str, int]] = []
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        runner = BatchRunner(extractor(), ledger, concurrency=2,
                             on_total=lambda n: events.append(("total", n)),
                             on_result=lambda r, s: events.append(("result", s.documents)))  # fmt: skip
        summary = asyncio.run(runner.run([docs]))
    assert events[0] == ("total", 4) and [e for e, _ in events[1:]] == ["result"] * 4
    assert summary.documents == 4 and summary.skipped == 2


def cli_env(tmp_path: Path, server_url: str) -> Path:
    (tmp_path / "cfg.toml").write_text(
        'schema = "tests.conftest:Invoice"\n\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{server_url}"\n'
    )
    return make_docs(tmp_path)


def test_the_progress_bar_has_the_document_count_as_its_total(tmp_path, monkeypatch):
    from rich.progress import Progress

    totals: list[float | None] = []
    real_add_task = Progress.add_task

    def add_task(self, description, *args, total=100.0, **kwargs):  # type: ignore[no-untyped-def]
        totals.append(total)
        return real_add_task(self, description, *args, total=total, **kwargs)

    monkeypatch.setattr(Progress, "add_task", add_task)
    monkeypatch.chdir(tmp_path)
    with FakeLLMServer(echo_invoice_responder) as server:
        cli_env(tmp_path, server.base_url)
        result = CliRunner().invoke(app, ["extract", "docs", "-c", "cfg.toml", "--ledger", "l.sqlite3"])
    assert result.exit_code == 0, result.output
    assert totals == [4]  # not None ("0/?")


def test_the_cli_says_no_documents_matched_for_a_folder_of_unsupported_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with FakeLLMServer(echo_invoice_responder) as server:
        cli_env(tmp_path, server.base_url)
        (tmp_path / "photos").mkdir()
        (tmp_path / "photos" / "a.gif").write_bytes(b"\x89PNG")
        result = CliRunner().invoke(app, ["extract", "photos", "-c", "cfg.toml", "--ledger", "l.sqlite3"])
        assert not server.requests
    assert result.exit_code == 2, result.output
    assert "no documents matched under photos" in result.output and ".gif" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "l.sqlite3").exists()  # checked before the ledger is opened
