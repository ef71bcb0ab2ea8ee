"""Issue 12 at the batch's edges: resume of transient failures, --retry-failed, stopping when the
provider is unreachable, hostile inputs (non-UTF-8 names, FIFOs, unreadable folders, deep HTML,
huge files, UTF-16, encrypted PDFs, late NUL bytes) and identical content sent once."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from extractkit import (
    DocumentError,
    EscalationPolicy,
    Extractor,
    ProviderUnreachable,
    RetryPolicy,
    ZeroShot,
)
from extractkit.batch import BatchRunner, BatchSummary, load
from extractkit.ledger import Ledger

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, echo_invoice_responder

NO_RETRY = EscalationPolicy(retry=RetryPolicy(max_attempts=1))


def extractor(**kw) -> Extractor:
    kw.setdefault("max_reasks", 0)
    return Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, **kw)], policy=NO_RETRY)


def echo(request: httpx.Request) -> httpx.Response:
    status, body, headers = echo_invoice_responder(json.loads(request.content))
    return httpx.Response(status, json=body, headers=headers)


def invoice(i: int | str) -> str:
    return f"From: Company {i} Ltd\nTotal: {len(str(i)) + 1}.00\n"


def run(ledger_path: Path, paths: list[Path], out: Path | None = None, **kw) -> BatchSummary:
    ex = kw.pop("ex", None) or extractor()
    with Ledger(ledger_path) as ledger:
        return asyncio.run(BatchRunner(ex, ledger, out=out, **kw).run(list(paths)))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# -- item 3: resume retries transient failures, --retry-failed, stop when unreachable ---------


def test_rerun_retries_transient_failures_and_never_repays_a_success(tmp_path, mock_api):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(invoice(i))
    down = {"on": True}

    def flaky(request: httpx.Request) -> httpx.Response:
        if down["on"] and b"Company 2" not in request.content:
            return httpx.Response(503, json={"error": {"message": "down", "type": "server_error"}})
        return echo(request)

    route = mock_api.post("/chat/completions").mock(side_effect=flaky)
    first = run(tmp_path / "l.db", [docs])
    assert (first.ok, first.failed, route.call_count) == (1, 2, 3)
    down["on"] = False
    second = run(tmp_path / "l.db", [docs])
    # the two api_error documents are sent again; the success is reused, not paid again
    assert (second.ok, second.resumed, second.retried, route.call_count) == (3, 1, 2, 5)
    third = run(tmp_path / "l.db", [docs])
    assert (third.ok, third.resumed, route.call_count) == (3, 3, 5)


def test_retry_failed_resends_validation_failures_only_when_asked(tmp_path, mock_api):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(invoice("a"))
    (docs / "b.txt").write_text(invoice("b"))
    answers = {"grounded": False}

    def model(request: httpx.Request) -> httpx.Response:
        if answers["grounded"] or b"Company a" in request.content:
            return echo(request)
        return httpx.Response(200, json=json.loads(echo(request).content.replace(b"Company b", b"Nobody")))

    route = mock_api.post("/chat/completions").mock(side_effect=model)
    first = run(tmp_path / "l.db", [docs])
    assert (first.ok, first.failed, route.call_count) == (1, 1, 2)
    answers["grounded"] = True  # e.g. the prompt was fixed
    assert run(tmp_path / "l.db", [docs]).resumed == 2 and route.call_count == 2  # final: not resent
    again = run(tmp_path / "l.db", [docs], retry_failed=True)
    assert (again.ok, again.retried, route.call_count) == (2, 1, 3)  # the success was not resent


def _unreachable_after(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Extractor.aextract_in_run (the batch's call) answers the first ``n`` documents, then raises
    ProviderUnreachable (what the chain's circuit breaker does after N consecutive connection failures)."""
    calls: list[str] = []
    real = Extractor.aextract_in_run

    async def aextract(self, text, **kw):
        calls.append(text)
        if len(calls) > n:
            raise ProviderUnreachable(
                "provider unreachable at http://127.0.0.1:9/v1 after 3 consecutive connection failures",
                url="http://127.0.0.1:9/v1", failures=3,
            )  # fmt: skip
        return await real(self, text, **kw)

    monkeypatch.setattr(Extractor, "aextract_in_run", aextract)
    return calls


def test_provider_unreachable_stops_the_batch_and_leaves_the_rest_unattempted(tmp_path, mock_api, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"d{i}.txt").write_text(invoice(i))
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    real = Extractor.aextract_in_run
    calls = _unreachable_after(monkeypatch, 2)
    out = tmp_path / "out.jsonl"
    s = run(tmp_path / "l.db", [docs], out=out, concurrency=1)
    assert (s.status, s.ok, s.unattempted, len(calls), route.call_count) == ("provider_unreachable", 2, 8, 3, 2)
    assert s.provider_url == "http://127.0.0.1:9/v1" and "http://127.0.0.1:9/v1" in (s.error or "")
    assert len(lines(out)) == 2  # nothing was recorded as failed
    assert db_rows(tmp_path / "l.db", "SELECT status, COUNT(*) FROM extractions GROUP BY status") == [("ok", 2)]
    assert db_rows(tmp_path / "l.db", "SELECT status FROM runs") == [("provider_unreachable",)]
    monkeypatch.setattr(Extractor, "aextract_in_run", real)  # the provider is back
    again = run(tmp_path / "l.db", [docs], out=out)
    assert (again.status, again.ok, again.resumed) == ("done", 10, 2)


def _cli_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "extractkit.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{BASE_URL}"\nmax_reasks = 0\n'
    )
    return cfg


def test_cli_exits_non_zero_naming_the_url_when_the_provider_is_unreachable(tmp_path, mock_api, monkeypatch):
    from extractkit.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"d{i}.txt").write_text(invoice(i))
    mock_api.post("/chat/completions").mock(side_effect=echo)
    _unreachable_after(monkeypatch, 0)
    args = ["extract", str(docs), "--config", str(_cli_config(tmp_path)), "--ledger", str(tmp_path / "l.db")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 3, result.output
    assert "error: provider unreachable at http://127.0.0.1:9/v1" in result.output
    assert "Traceback" not in result.output
    assert db_rows(tmp_path / "l.db", "SELECT COUNT(*) FROM extractions") == [(0,)]


def test_cli_retry_failed_flag(tmp_path, mock_api):
    from extractkit.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(invoice("a"))
    route = mock_api.post("/chat/completions").mock(
        side_effect=lambda r: httpx.Response(200, json=json.loads(echo(r).content.replace(b"Company a", b"X")))
    )
    args = ["extract", str(docs), "--config", str(_cli_config(tmp_path)), "--ledger", str(tmp_path / "l.db")]
    assert CliRunner().invoke(app, args).exit_code == 1 and route.call_count == 1
    assert CliRunner().invoke(app, args).exit_code == 1 and route.call_count == 1
    assert CliRunner().invoke(app, [*args, "--retry-failed"]).exit_code == 1 and route.call_count == 2


# -- item 6: inputs that crashed or hung the batch ----------------------------------------------


def test_a_file_name_that_is_not_utf8_is_stored_readably_and_losslessly(tmp_path, mock_api):
    docs = tmp_path / "docs"
    docs.mkdir()
    raw = os.fsencode(docs) + b"/bad\xff.txt"
    with open(raw, "wb") as f:
        f.write(invoice("bad").encode())
    for i in range(3):
        (docs / f"good{i}.txt").write_text(invoice(i))
    mock_api.post("/chat/completions").mock(side_effect=echo)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    s = run(db, [docs], out=out)
    assert (s.status, s.ok, s.documents) == ("done", 4, 4)
    shown = str(docs) + "/bad\\xff.txt"  # readable: the undecodable byte written \xff
    assert sorted(r["path"] for r in lines(out)) == sorted([shown, *(str(docs / f"good{i}.txt") for i in range(3))])
    assert db_rows(db, "SELECT COUNT(*) FROM extractions WHERE path = ?", (shown,)) == [(1,)]
    # the exact bytes are recoverable from the ledger
    assert db_rows(db, "SELECT path_bytes FROM document_paths WHERE path = ?", (shown,)) == [(raw,)]


def _in_thread(fn, timeout: float = 60):
    """Run ``fn`` in a daemon thread: a hang fails the test instead of hanging the suite."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_fifo_is_skipped_counted_and_never_opened(tmp_path, mock_api):
    docs = tmp_path / "docs"
    docs.mkdir()
    os.mkfifo(docs / "pipe.txt")
    (docs / "a.txt").write_text(invoice("a"))
    mock_api.post("/chat/completions").mock(side_effect=echo)
    s = _in_thread(lambda: run(tmp_path / "l.db", [docs], concurrency=1))
    assert (s.ok, s.special, s.special_paths) == (1, 1, [str(docs / "pipe.txt")])
    with pytest.raises(DocumentError) as info:  # named directly, it is refused without waiting
        _in_thread(lambda: load(docs / "pipe.txt", "txt"))
    assert info.value.kind == "special_file"


def test_an_unreadable_folder_is_reported(tmp_path, mock_api, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "locked" / "hidden.txt").write_text(invoice("hidden"))
    (docs / "a.txt").write_text(invoice("a"))
    real_scandir = os.scandir

    def scandir(path="."):  # tests run as root: chmod 000 would not stop us
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    mock_api.post("/chat/completions").mock(side_effect=echo)
    out = tmp_path / "out.jsonl"
    s = run(tmp_path / "l.db", [docs], out=out)
    assert (s.ok, s.errors, s.failed_paths) == (1, 1, [str(docs / "locked")])
    [row] = [r for r in lines(out) if r["status"] == "error"]
    assert row["outcome"] == "unreadable_dir" and "Permission denied" in row["error"]
    assert db_rows(tmp_path / "l.db", "SELECT path, outcome FROM extractions WHERE status = 'error'") == [
        (str(docs / "locked"), "unreadable_dir")
    ]


def test_deeply_nested_html_is_parsed_in_linear_time(tmp_path):
    n = 100_000  # 1.2 MB: the HTML parser took ~30 s on this (quadratic in depth); 2.2 MB took 92 s
    path = tmp_path / "deep.html"
    path.write_text("<html><body><p>From: Deep Ltd</p>" + "<div>x" * n + "</div>" * n + "</body></html>")
    started = time.perf_counter()
    doc = load(path, "html")
    assert time.perf_counter() - started < 5  # ~0.1 s now: a wide margin for a noisy machine
    assert doc.text.startswith("From: Deep Ltd") and doc.text.count("x") == n


def test_html_within_the_depth_limit_keeps_the_parser(tmp_path):
    path = tmp_path / "ok.html"
    path.write_text("<html><body>" + "<div>" * 100 + "A &amp; B<script>no()</script>" + "</div>" * 100)
    assert load(path, "html").text == "A & B"


def test_size_limits_refuse_before_reading_and_parsing(tmp_path, monkeypatch, mock_api):
    big = tmp_path / "big.txt"
    big.write_text(invoice("big") + "lorem " * 1000)
    long_html = tmp_path / "long.html"
    long_html.write_text("<p>" + "word " * 1000 + "</p>")

    def never(self):
        raise AssertionError("read")

    with monkeypatch.context() as m:
        m.setattr(Path, "read_bytes", never)
        with pytest.raises(DocumentError) as info:
            load(big, "txt", max_bytes=1000)
    assert info.value.kind == "too_large" and "1000-byte limit" in str(info.value)
    with pytest.raises(DocumentError) as info:
        load(long_html, "html", max_chars=1000)
    assert info.value.kind == "text_too_large"
    # through the runner: configurable, its own error, and the text is not stored
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    s = run(db, [big, long_html], out=out, max_bytes=5500, max_chars=1000)
    assert sorted(r["outcome"] for r in lines(out)) == ["text_too_large", "too_large"]
    assert s.errors == 2 and route.call_count == 0
    assert db_rows(db, "SELECT COUNT(*) FROM documents") == [(0,)]


def test_batch_config_has_the_size_limits(tmp_path):
    from extractkit._config import Config

    cfg = Config.model_validate({"schema": "x:Y", "tiers": [{"kind": "zero_shot", "model": "m"}],
                                 "batch": {"max_bytes": 10, "max_chars": 20}})  # fmt: skip
    assert (cfg.batch.max_bytes, cfg.batch.max_chars) == (10, 20)


# -- item 7: UTF-16/32 with a BOM, encrypted PDFs, one NUL rule ---------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_text_with_a_utf16_or_utf32_bom_is_decoded(tmp_path, encoding):
    path = tmp_path / "u.txt"
    data = invoice("Ünïcode").encode(encoding)
    if not encoding.endswith(("16", "32")):  # the explicit-endian codecs write no BOM
        bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00"}
        data = bom[encoding] + data
    path.write_bytes(data)
    assert load(path, "txt").text == invoice("Ünïcode").strip()


def test_one_nul_rule_for_the_whole_text(tmp_path):
    early, late = tmp_path / "early.txt", tmp_path / "late.txt"
    early.write_bytes(b"From: A Ltd\x00\n" + b"a" * 20_000)
    late.write_bytes(b"From: A Ltd\n" + b"a" * 20_000 + b"\x00")
    for path in (early, late):
        with pytest.raises(DocumentError) as info:
            load(path, "txt")
        assert info.value.kind == "binary"
    utf16 = tmp_path / "nul16.txt"
    utf16.write_bytes(("From: A Ltd\n" + "a" * 9000 + "\x00").encode("utf-16"))
    with pytest.raises(DocumentError) as info:
        load(utf16, "txt")
    assert info.value.kind == "binary"


def text_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer is ``text`` (built by hand: no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypted_pdf(dest: Path, text: str, password: str) -> Path:
    import io

    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(text_pdf(text))))
    writer.encrypt(password, "owner-secret", algorithm="RC4-128")  # RC4: no crypto package needed
    with dest.open("wb") as f:
        writer.write(f)
    return dest


def test_encrypted_pdf_has_its_own_kind_and_opens_with_an_empty_password(tmp_path):
    plain = tmp_path / "plain.pdf"
    plain.write_bytes(text_pdf("From: Pdf Ltd Total: 9.00"))
    assert load(plain, "pdf").text == "From: Pdf Ltd Total: 9.00"
    locked = encrypted_pdf(tmp_path / "locked.pdf", "From: Pdf Ltd Total: 9.00", "secret")
    with pytest.raises(DocumentError) as info:
        load(locked, "pdf")
    assert info.value.kind == "encrypted_pdf" and "password" in str(info.value)
    opened = encrypted_pdf(tmp_path / "open.pdf", "From: Pdf Ltd Total: 9.00", "")
    assert load(opened, "pdf").text == "From: Pdf Ltd Total: 9.00"


# -- item 8: identical content is sent once ------------------------------------------------------


def test_identical_content_is_sent_once_and_every_path_recorded(tmp_path, mock_api):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    same = ["a.txt", "b.txt", "sub/c.txt"]
    for name in same:
        (docs / name).write_text(invoice("same"))
    (docs / "other.txt").write_text(invoice("other"))

    async def slow_echo(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)  # all four are in flight together: the duplicates must wait
        return echo(request)

    route = mock_api.post("/chat/completions").mock(side_effect=slow_echo)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    s = run(db, [docs], out=out, concurrency=4)
    assert route.call_count == 2
    assert (s.ok, s.duplicates, s.attempts) == (4, 2, 2)
    rows = {r["path"]: r for r in lines(out)}
    assert len(rows) == 4
    values = [rows[str(docs / n)]["value"] for n in same]
    assert values[0] == values[1] == values[2] == {"issuer": "Company same Ltd", "total": 5.0, "date": None}
    sha = rows[str(docs / "a.txt")]["sha256"]
    assert db_rows(db, "SELECT COUNT(*) FROM extractions WHERE document_sha256 = ?", (sha,)) == [(1,)]
    assert db_rows(db, "SELECT path FROM document_paths WHERE document_sha256 = ? ORDER BY path", (sha,)) == [
        (str(docs / n),) for n in sorted(same)
    ]
    # a rerun: nothing is sent, every path still gets its line
    again = run(db, [docs], out=out)
    assert route.call_count == 2 and again.ok == 4 and len(lines(out)) == 4


# -- all of it at once: every good document exactly once, every bad one with its own kind --------


def test_a_folder_of_hostile_inputs_loses_nothing_good(tmp_path, mock_api, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "locked" / "inside.txt").write_text(invoice("inside"))
    good = {f"good{i}.txt": invoice(i) for i in range(6)}
    for name, text in good.items():
        (docs / name).write_text(text)
    (docs / "copy.txt").write_text(good["good0.txt"])  # identical content: sent once
    (docs / "utf16.txt").write_bytes(invoice("utf16").encode("utf-16"))
    (docs / "plain.pdf").write_bytes(text_pdf("From: Pdf Ltd Total: 9.00"))
    encrypted_pdf(docs / "open.pdf", "From: Open Ltd Total: 3.00", "")
    with open(os.fsencode(docs) + b"/caf\xe9.txt", "wb") as f:  # a Latin-1 file name
        f.write(invoice("latin1 name").encode())
    good_names = [*good, "copy.txt", "utf16.txt", "plain.pdf", "open.pdf", "caf\\xe9.txt"]
    bad = {
        "locked": "unreadable_dir",
        "locked.pdf": "encrypted_pdf",
        "corrupt.pdf": "corrupt_pdf",
        "late_nul.txt": "binary",
        "huge.txt": "too_large",
        "long.html": "text_too_large",
        "empty.txt": "empty",
        "latin1.txt": "invalid_utf8",
    }
    encrypted_pdf(docs / "locked.pdf", "From: Locked Ltd Total: 1.00", "secret")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj <<< garbage")
    (docs / "late_nul.txt").write_bytes(invoice("nul").encode() + b"x" * 9000 + b"\x00")
    (docs / "huge.txt").write_bytes(invoice("huge").encode() + b"y" * 500_000)
    (docs / "long.html").write_text("<p>" + "word " * 30_000 + "</p>")
    (docs / "empty.txt").write_text("")
    (docs / "latin1.txt").write_bytes("From: Café Ltd\nTotal: 5".encode("latin-1"))
    (docs / "deep.html").write_text("<p>From: Deep Ltd Total: 4.00</p>" + "<div>z" * 20_000 + "</div>" * 20_000)
    good_names.append("deep.html")
    os.mkfifo(docs / "pipe.txt")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    s = _in_thread(lambda: run(db, [docs], out=out, concurrency=4, max_bytes=400_000, max_chars=100_000))
    assert s.status == "done" and s.special == 1
    rows = lines(out)
    by_name = {r["path"].removeprefix(str(docs) + "/"): r for r in rows}
    assert len(rows) == len(by_name) == len(good_names) + len(bad)  # each exactly once
    for name in good_names:
        assert by_name[name]["status"] == "ok", by_name[name]
    for name, kind in bad.items():
        assert (by_name[name]["status"], by_name[name]["outcome"]) == ("error", kind), by_name[name]
    assert route.call_count == len(good_names) - 1  # the copy was not sent
    assert db_rows(db, "SELECT COUNT(*), COUNT(DISTINCT path) FROM extractions WHERE status = 'ok'") == [
        (len(good_names) - 1, len(good_names) - 1)
    ]
    assert db_rows(db, "SELECT COUNT(*) FROM document_paths") == [(len(good_names),)]
    errors = db_rows(db, "SELECT path, outcome FROM extractions WHERE status = 'error'")
    assert sorted((p.removeprefix(str(docs) + "/"), k) for p, k in errors) == sorted(bad.items())


def test_cli_rerun_after_an_outage_retries_what_failed_transiently(tmp_path):
    """The issue's report: a down provider, then the same command once it is back, resumed every
    document as final ("resumed": 2, "attempts": 0, exit 1)."""
    from .fakes import FakeLLMServer, error_body
    from .test_batch import cli, write_config

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(2):
        (docs / f"d{i}.txt").write_text(invoice(i))
    state = {"down": True}

    def responder(body):
        if state["down"]:
            return 503, error_body("upstream down", type_="server_error"), {}
        return echo_invoice_responder(body)

    with FakeLLMServer(responder) as server:
        cfg = write_config(tmp_path, server.base_url)
        args = ["extract", str(docs), "--config", str(cfg), "--ledger", str(tmp_path / "l.db"), "--json"]
        first = cli(*args)
        assert first.returncode == 1 and json.loads(first.stdout)["failed"] == 2, first.stderr
        state["down"] = False
        second = cli(*args)
        summary = json.loads(second.stdout)
        assert second.returncode == 0, second.stderr
        assert (summary["ok"], summary["retried"], summary["resumed"], summary["attempts"]) == (2, 2, 0, 2)
        sent = len(server.requests)
        third = cli(*args)  # nothing left to do: no request
        assert third.returncode == 0 and len(server.requests) == sent


def test_real_breaker_in_a_batch_every_recorded_document_has_its_out_line(tmp_path, sleeps):
    """The chain's own breaker against a closed port on 127.0.0.1 (no fakes of aextract): the
    document whose attempts tripped it is recorded (connection_error, retried by a rerun) and has
    its --out line; the documents never sent have neither; the run says provider_unreachable."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(8):
        (docs / f"d{i}.txt").write_text(invoice(i))
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2, unreachable_after=3))
    ex = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=url, max_reasks=0)], policy=policy)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    s = run(db, [docs], out=out, ex=ex, concurrency=1)
    assert s.status == "provider_unreachable" and s.provider_url == url
    recorded = db_rows(db, "SELECT path, outcome FROM extractions")
    got = lines(out)
    assert recorded and sorted(p for p, _ in recorded) == sorted(r["path"] for r in got)
    assert {o for _, o in recorded} == {"connection_error"}
    assert s.unattempted == 8 - len(got) and s.unattempted > 0
    attempts = db_rows(db, "SELECT COUNT(*) FROM attempts WHERE outcome = 'connection_error'")[0][0]
    assert attempts <= 4  # stopped at the third consecutive failure (+ the not-sent record)


def test_identical_content_found_after_the_first_finished_is_shared_from_the_ledger(tmp_path, mock_api):
    """One worker: the duplicate comes after its first path was recorded. It is sent once, its
    line says duplicate_of, and the runner keeps nothing per finished document (memory)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ["a.txt", "b.txt", "c.txt"]:
        (docs / name).write_text(invoice("same"))
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    out, db = tmp_path / "out.jsonl", tmp_path / "l.db"
    ex = extractor()
    with Ledger(db) as ledger:
        runner = BatchRunner(ex, ledger, out=out, concurrency=1)
        s = asyncio.run(runner.run([docs]))
        kept = list(runner._seen.values())
    assert route.call_count == 1 and (s.ok, s.duplicates, s.attempts) == (3, 2, 1)
    rows = {Path(r["path"]).name: r for r in lines(out)}
    assert rows["a.txt"]["duplicate_of"] is None
    assert rows["b.txt"]["duplicate_of"] == rows["c.txt"]["duplicate_of"] == str(docs / "a.txt")
    assert rows["b.txt"]["value"] == rows["a.txt"]["value"] and rows["b.txt"]["attempts"] == 0
    assert kept == []  # nothing per finished document: a copy finds the first in the ledger


def test_the_response_body_cap_is_a_config_setting(tmp_path):
    from extractkit._llm import MAX_RESPONSE_BYTES
    from extractkit.cli._build import build

    cfg = _cli_config(tmp_path)
    ex, config = build(cfg)
    assert config.batch.max_response_bytes == MAX_RESPONSE_BYTES == ex.max_response_bytes
    cfg.write_text(cfg.read_text() + "[batch]\nmax_response_bytes = 1000\n")
    ex, _ = build(cfg)
    assert ex.max_response_bytes == 1000
