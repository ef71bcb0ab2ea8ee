"""Issue 14, section 6: ``Extractor.extract_file`` / ``aextract_file`` read a file as the batch reads
it (PDF text layer, HTML without markup, ...), off the event loop, and record it with its path; a
file that cannot be read raises the DocumentError the batch records. No test reaches a network."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from extractkit import DocumentError, Extractor, Ledger, ZeroShot
from extractkit.batch import load

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, echo_invoice_responder
from .test_batch_edges import encrypted_pdf, text_pdf

HTML = "<html><body><p>From: Gamma SA</p><script>steal()</script><p>Total: 7.5</p></body></html>"


def echo(request: httpx.Request) -> httpx.Response:
    status, body, headers = echo_invoice_responder(json.loads(request.content))
    return httpx.Response(status, json=body, headers=headers)


def sent_document(request: httpx.Request) -> str:
    user = json.loads(request.content)["messages"][-1]["content"]
    return user.rsplit("<document>", 1)[-1].rsplit("</document>", 1)[0].strip()


def extractor(ledger: Ledger | Path | None = None) -> Extractor:
    return Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)], ledger=ledger)


def test_extract_file_reads_html_and_pdf_as_the_batch_does_and_records_the_path(mock_api, tmp_path):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    page, pdf = tmp_path / "page.html", tmp_path / "scan.PDF"  # the type from the suffix, any case
    page.write_text(HTML)
    pdf.write_bytes(text_pdf("From: Pdf Ltd Total: 9.00"))
    db = tmp_path / "l.sqlite3"
    with extractor(db) as ex:
        html_result = ex.extract_file(page)
        pdf_result = ex.extract_file(str(pdf))  # a str is a path here
    assert html_result.ok and html_result.value == Invoice(issuer="Gamma SA", total=7.5)
    assert pdf_result.ok and pdf_result.value.issuer.startswith("Pdf Ltd")
    # the model was sent the loaded text: no markup, no script, the PDF's text layer
    html_sent, pdf_sent = (sent_document(c.request) for c in route.calls)
    assert html_sent == load(page, "html").text and "<p>" not in html_sent and "steal" not in html_sent
    assert pdf_sent == load(pdf, "pdf").text
    # identity from content: the sha256 of the loaded text, as the batch computes it
    assert html_result.document_sha256 == load(page, "html").sha256
    rows = db_rows(db, "SELECT path, status FROM extractions ORDER BY id")
    assert rows == [(str(page), "ok"), (str(pdf), "ok")]
    assert sorted(db_rows(db, "SELECT path, type FROM documents")) == sorted([(str(page), "html"), (str(pdf), "pdf")])
    paths = db_rows(db, "SELECT document_sha256, path, path_bytes, run_id FROM document_paths ORDER BY path")
    run_id = db_rows(db, "SELECT id FROM runs WHERE kind = 'library'")[0][0]
    assert [(p[1], bytes(p[2]), p[3]) for p in paths] == sorted(
        [(str(page), os.fsencode(page), run_id), (str(pdf), os.fsencode(pdf), run_id)]
    )


def test_a_copy_under_another_name_is_the_same_document_seen_at_two_paths(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    a, b = tmp_path / "a.txt", tmp_path / "copy of a.md"
    a.write_text("From: ACME Ltd\nTotal: 5.00\n")
    b.write_text("From: ACME Ltd\nTotal: 5.00\n")
    db = tmp_path / "l.sqlite3"
    with extractor(db) as ex:
        first, second = ex.extract_file(a), ex.extract_file(b)
    assert first.document_sha256 == second.document_sha256
    assert db_rows(db, "SELECT count(*) FROM documents") == [(1,)]
    assert sorted(r[0] for r in db_rows(db, "SELECT path FROM document_paths")) == sorted([str(a), str(b)])


@pytest.mark.parametrize(
    ("name", "make", "kind"),
    [
        ("empty.txt", lambda p: p.write_text(""), "empty"),
        ("binary.txt", lambda p: p.write_bytes(b"\x00\x01PK" * 8), "binary"),
        ("locked.pdf", lambda p: encrypted_pdf(p, "From: Pdf Ltd Total: 9.00", "secret"), "encrypted_pdf"),
        ("scan.pdf", lambda p: p.write_bytes(text_pdf("")), "no_text"),
        ("gone.txt", lambda p: p.symlink_to(p.parent / "nowhere.txt"), "missing"),
    ],
)
def test_an_unreadable_file_raises_the_documenterror_the_batch_records(mock_api, tmp_path, name, make, kind):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    path = tmp_path / name
    make(path)
    with pytest.raises(DocumentError) as batch_error:
        load(path, path.suffix.lstrip("."))
    db = tmp_path / "l.sqlite3"
    with extractor(db) as ex, pytest.raises(DocumentError) as info:
        ex.extract_file(path)
    assert info.value.kind == kind == batch_error.value.kind
    assert str(info.value) == str(batch_error.value) and info.value.path == str(path)
    assert not route.called  # nothing sent
    # recorded as the batch records an unreadable document: an error line with its kind
    assert db_rows(db, "SELECT path, status, outcome, error FROM extractions") == [
        (str(path), "error", kind, str(batch_error.value))
    ]
    assert db_rows(db, "SELECT kind, status, n_documents, n_errors FROM runs") == [("library", "done", 1, 1)]


def test_unsupported_types_and_folders_are_refused_before_anything_is_read(mock_api, tmp_path):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    photo, notes = tmp_path / "photo.gif", tmp_path / "notes.log"
    photo.write_bytes(b"\x89PNG....")
    notes.write_text("From: Log Ltd\nTotal: 3.00\n")
    db = tmp_path / "l.sqlite3"
    with extractor(db) as ex:
        for bad in (photo, tmp_path):
            with pytest.raises(DocumentError) as info:
                ex.extract_file(bad)
            assert info.value.kind == "unsupported" and str(bad) in str(info.value)
        with pytest.raises(DocumentError, match="doc_type"):
            ex.extract_file(notes, doc_type="docx")
        assert not route.called
        # doc_type= reads a file whose name does not say what it is
        assert ex.extract_file(notes, doc_type="txt").value == Invoice(issuer="Log Ltd", total=3.0)
    assert db_rows(db, "SELECT path, status FROM extractions") == [(str(notes), "ok")]


async def test_aextract_file_reads_off_the_event_loop(mock_api, tmp_path, monkeypatch):
    """PDF, HTML and large files are parsed in a worker thread, never on the loop."""
    mock_api.post("/chat/completions").mock(side_effect=echo)
    import extractkit.batch._runner as runner

    threads: list[threading.Thread] = []
    real_load = runner.load

    def spying_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(runner, "load", spying_load)
    pdf, page, big = tmp_path / "a.pdf", tmp_path / "b.html", tmp_path / "c.txt"
    pdf.write_bytes(text_pdf("From: Pdf Ltd Total: 9.00"))
    page.write_text(HTML)
    big.write_text("From: Big Ltd\nTotal: 2.00\n" + "lorem ipsum\n" * 20_000)
    async with extractor() as ex:
        results = [await ex.aextract_file(p) for p in (pdf, page, big)]
    assert [r.ok for r in results] == [True, True, True]
    assert len(threads) == 3 and threading.current_thread() not in threads


async def test_async_and_sync_forms_agree(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    page = tmp_path / "page.html"
    page.write_text(HTML)
    async with extractor() as ex:
        got = await ex.aextract_file(page)
    with extractor() as ex:
        want = ex.extract_file(page)
    assert (got.value, got.document_sha256, got.tier) == (want.value, want.document_sha256, want.tier)
