"""Documents on object storage (issue 17, item 3), against a real S3-compatible server (moto's server
mode, tests/s3.py): the same extractions as from local disk, resume across the two, one error per
bad object, NoDocuments for an empty prefix, credentials never stored."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import extractkit
from extractkit import DocumentError, Extractor, MissingDependencyError, NoDocuments, ZeroShot
from extractkit.batch import URI, BatchRunner, count_documents, load, walk

from .conftest import Invoice, db_rows
from .fakes import FakeLLMServer, echo_invoice_responder
from .s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY
from .test_batch import ROOT, cli, lines
from .test_batch_edges import text_pdf

CORPUS_FILES = ["AmazonWebServices.pdf", "AzureInterior.pdf", "Orlen.txt", "oyo.pdf", "saeco.pdf"]


def config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{base_url}"\nmax_reasks = 0\n{extra}'
    )
    return cfg


def upload_corpus(s3, corpus: Path, bucket: str, local: Path) -> None:
    """The same files under s3://bucket/invoices/ and under ``local`` (a key with spaces and
    non-ASCII letters in a sub-prefix, as a file in a subfolder)."""
    (local / "sub dir").mkdir(parents=True)
    for name in CORPUS_FILES:
        s3.put(bucket, f"invoices/{name}", (corpus / name).read_bytes())
        shutil.copy(corpus / name, local / name)
    text = "From: Ünïcødé Spaced Ltd\nTotal: 12.50\n"
    s3.put(bucket, "invoices/sub dir/fäcture n°1.txt", text)
    (local / "sub dir" / "fäcture n°1.txt").write_text(text)


def by_sha(out: Path) -> dict[str, tuple[str, object]]:
    return {r["sha256"]: (r["status"], r["value"]) for r in lines(out)}


def secrets_absent(*texts: str | bytes) -> None:
    for text in texts:
        raw = text.encode() if isinstance(text, str) else text
        assert SECRET_ACCESS_KEY.encode() not in raw
        assert ACCESS_KEY_ID.encode() not in raw


def test_an_s3_prefix_gives_the_same_extractions_as_local_disk_and_resumes_across_them(s3, corpus, tmp_path):
    bucket = s3.new_bucket()
    local = tmp_path / "local"
    upload_corpus(s3, corpus, bucket, local)
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = config(tmp_path, server.base_url)
        ledger, ledger_s3 = tmp_path / "local.sqlite3", tmp_path / "s3.sqlite3"
        out_local, out_s3 = tmp_path / "local.jsonl", tmp_path / "s3.jsonl"
        done = cli("extract", str(local), "-c", str(cfg), "--ledger", str(ledger), "--out", str(out_local), "--json")
        assert done.returncode in (0, 1), done.stderr
        uri = f"s3://{bucket}/invoices/"
        done_s3 = cli("extract", uri, "-c", str(cfg), "--ledger", str(ledger_s3), "--out", str(out_s3), "--json")
        assert done_s3.returncode == done.returncode, done_s3.stderr
        assert len(by_sha(out_local)) == len(CORPUS_FILES) + 1
        assert by_sha(out_s3) == by_sha(out_local)  # same documents (sha256 of the text), same values
        paths = sorted(r["path"] for r in lines(out_s3))
        assert paths == sorted([f"{uri}{n}" for n in CORPUS_FILES] + [f"{uri}sub dir/fäcture n°1.txt"])
        summary = json.loads(done_s3.stdout)
        assert summary["documents"] == len(CORPUS_FILES) + 1 and summary["errors"] == 0

        # the same content from S3 on the ledger the local run filled: nothing is paid again
        paid = len(server.requests)
        again = cli("extract", uri, "-c", str(cfg), "--ledger", str(ledger), "--out", str(out_s3), "--json")
        assert again.returncode == done.returncode, again.stderr
        assert json.loads(again.stdout)["resumed"] == len(CORPUS_FILES) + 1
        assert len(server.requests) == paid
    seen = db_rows(ledger, "SELECT document_sha256, path, path_bytes FROM document_paths")
    for sha in by_sha(out_local):
        where = {p for s, p, _ in seen if s == sha}
        assert any(p.startswith(uri) for p in where) and any(p.startswith(str(local)) for p in where)
    assert all(bytes(b) == p.encode() for _, p, b in seen if p.startswith("s3://"))
    for db in (ledger, ledger_s3):
        secrets_absent(db.read_bytes())
    secrets_absent(out_s3.read_bytes(), done_s3.stdout, done_s3.stderr, again.stderr)


def hostile(s3, bucket: str) -> None:
    s3.put(bucket, "in/good.txt", "From: Good Ltd\nTotal: 3.00\n")
    s3.put(bucket, "in/good.pdf", text_pdf("From: Pdf Ltd Total: 4.00"))
    s3.put(bucket, "in/empty.txt", b"")
    s3.put(bucket, "in/huge.txt", b"From: Huge Ltd\nTotal: 1\n" + b"x" * 5000)
    s3.put(bucket, "in/garbage.pdf", bytes(range(256)) * 8)
    s3.put(bucket, "in/binary.txt", b"\x00\x01\x02PK\x03\x04" * 10)
    s3.put(bucket, "in/photo.gif", b"\x89PNG....")
    s3.put(bucket, "in/folder/", b"")  # a "folder" marker object: not a document
    s3.put(bucket, "in/späced näme ü.md", "From: Spaced Ltd\nTotal: 5.00\n")


def test_every_bad_object_is_its_own_error_and_the_batch_goes_on(s3, tmp_path):
    bucket = s3.new_bucket()
    hostile(s3, bucket)
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = config(tmp_path, server.base_url, "\n[batch]\nmax_bytes = 4000\n")
        out, ledger = tmp_path / "out.jsonl", tmp_path / "l.sqlite3"
        done = cli("extract", f"s3://{bucket}/in", "s3://no-such-bucket-extractkit/in/", "-c", str(cfg),
                   "--ledger", str(ledger), "--out", str(out), "--json")
        assert done.returncode == 1, done.stderr  # some documents failed: listed, the others extracted
        assert len(server.requests) == 3
    got = {r["path"].rsplit("/", 1)[-1] or r["path"]: (r["status"], r["outcome"], r["error"]) for r in lines(out)}
    assert got["good.txt"][0] == got["good.pdf"][0] == got["späced näme ü.md"][0] == "ok"
    assert got["empty.txt"][:2] == ("error", "empty")
    assert got["huge.txt"][:2] == ("error", "too_large") and "5024 bytes, over the 4000-byte limit" in got["huge.txt"][2]
    assert got["garbage.pdf"][:2] == ("error", "corrupt_pdf")
    assert got["binary.txt"][:2] == ("error", "binary")
    assert got["s3://no-such-bucket-extractkit/in/"][:2] == ("error", "missing_bucket")
    assert "bucket 'no-such-bucket-extractkit' does not exist" in got["s3://no-such-bucket-extractkit/in/"][2]
    assert "photo.gif" not in got and "folder" not in got
    summary = json.loads(done.stdout)
    assert summary["skipped"] == 1 and summary["errors"] == 5 and summary["ok"] == 3
    kinds = {k for (k,) in db_rows(ledger, "SELECT outcome FROM extractions WHERE status = 'error'")}
    assert {"empty", "too_large", "corrupt_pdf", "binary", "missing_bucket"} <= kinds


def test_a_too_large_object_is_refused_from_its_listed_size_without_reading_it(s3, monkeypatch):
    import s3fs

    bucket = s3.new_bucket()
    s3.put(bucket, "big/huge.txt", b"x" * 5000)
    s3.put(bucket, "big/small.txt", b"From: Small\nTotal: 1")
    reads: list[tuple] = []
    real = s3fs.S3FileSystem.cat_file

    def cat_file(self, path, start=None, end=None, **kw):  # type: ignore[no-untyped-def]
        reads.append((path, start, end))
        return real(self, path, start=start, end=end, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "cat_file", cat_file)
    found = dict(walk([f"s3://{bucket}/big/"]))
    assert [(u.name, u.size, t) for u, t in found.items()] == [("huge.txt", 5000, "txt"), ("small.txt", 20, "txt")]
    huge, small = list(found)
    with pytest.raises(DocumentError) as err:
        load(huge, "txt", max_bytes=4000)
    assert err.value.kind == "too_large" and not reads  # its size said so: not a byte was asked for
    assert load(small, "txt", max_bytes=4000).text == "From: Small\nTotal: 1"
    assert reads == [(f"{bucket}/big/small.txt", 0, 4001)]  # one ranged read, bounded by the limit
    # an object that grew since it was listed (or is named without a listing) is still bounded
    stale = URI(huge.uri, size=10)
    with pytest.raises(DocumentError) as err:
        load(stale, "txt", max_bytes=4000)
    assert err.value.kind == "too_large" and reads[-1][1:] == (0, 4001)


def test_missing_objects_buckets_and_empty_prefixes_say_so(s3, tmp_path):
    bucket = s3.new_bucket()
    s3.put(bucket, "docs/a.txt", "From: A\nTotal: 1")
    with pytest.raises(NoDocuments, match=rf"no documents matched under s3://{bucket}/nothing-here/$"):
        count_documents([f"s3://{bucket}/nothing-here/"])
    with pytest.raises(NoDocuments, match="bucket 'no-such-bucket-extractkit' does not exist"):
        count_documents(["s3://no-such-bucket-extractkit/docs/"])
    with pytest.raises(NoDocuments, match=rf"s3://{bucket}/docs/missing.pdf: no such object"):
        count_documents([f"s3://{bucket}/docs/missing.pdf"])
    assert count_documents([f"s3://{bucket}/docs", f"s3://{bucket}/docs/a.txt"]) == 2
    ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")])
    with pytest.raises(DocumentError) as err:
        ex.extract_file(f"s3://{bucket}/docs/missing.pdf")
    assert err.value.kind == "missing" and str(err.value) == f"s3://{bucket}/docs/missing.pdf: no such object"
    with pytest.raises(DocumentError) as err:
        ex.extract_file(URI("s3://no-such-bucket-extractkit/a.txt"))
    assert err.value.kind == "missing_bucket"
    ex.close()
    # the CLI: exit 2 before a run is recorded, naming the prefix
    cfg = config(tmp_path, "http://127.0.0.1:9/v1")
    done = cli("extract", f"s3://{bucket}/nothing-here/", "-c", str(cfg), "--ledger", str(tmp_path / "l.sqlite3"))
    assert done.returncode == 2 and f"no documents matched under s3://{bucket}/nothing-here/" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "l.sqlite3").exists()


def test_an_object_the_credentials_may_not_read_is_access_denied_and_the_others_go_on(s3, tmp_path):
    bucket = s3.new_bucket()
    s3.put(bucket, "p/ok.txt", "From: Open Ltd\nTotal: 2.00\n")
    s3.put(bucket, "p/secret.txt", "From: Secret Ltd\nTotal: 3.00\n")
    with FakeLLMServer(echo_invoice_responder) as server, s3.access_denied(bucket, ["p/ok.txt"]) as env:
        cfg = config(tmp_path, server.base_url)
        out = tmp_path / "out.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "extractkit", "extract", f"s3://{bucket}/p/", "-c", str(cfg), "--out", str(out),
             "--ledger", str(tmp_path / "l.sqlite3")],
            cwd=ROOT, env={**__import__("os").environ, **env, "OPENAI_API_KEY": "sk-fake", "EXTRACTKIT_LEDGER": ""},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    got = {r["path"]: r for r in lines(out)}
    assert got[f"s3://{bucket}/p/ok.txt"]["status"] == "ok"
    denied = got[f"s3://{bucket}/p/secret.txt"]
    assert denied["outcome"] == "access_denied" and "access denied" in denied["error"]
    secrets_absent(out.read_bytes(), (tmp_path / "l.sqlite3").read_bytes(), done.stderr)
    assert env["AWS_SECRET_ACCESS_KEY"] not in out.read_text() + done.stderr


def test_a_prefix_the_credentials_may_not_list_is_access_denied(s3, monkeypatch):
    import s3fs

    bucket = s3.new_bucket()
    s3.put(bucket, "p/a.txt", "From: A\nTotal: 1")
    with s3.access_denied(bucket, ["p/a.txt"], may_list=False) as env:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(NoDocuments, match=rf"s3://{bucket}/p/: access denied .*check the credentials"):
            count_documents([f"s3://{bucket}/p/"])
        assert load(URI(f"s3://{bucket}/p/a.txt"), "txt").text == "From: A\nTotal: 1"  # reading it is allowed
    s3fs.S3FileSystem.clear_instance_cache()


def test_extract_many_and_extract_file_take_uris(s3):
    bucket = s3.new_bucket()
    s3.put(bucket, "m/a.txt", "From: Alpha Ltd\nTotal: 1.50\n")
    s3.put(bucket, "m/b.html", "<p>From: Beta Ltd</p><p>Total: 2.50</p>")
    s3.put(bucket, "m/c.gif", b"\x89PNG")
    s3.put(bucket, "one.csv", "a,b")
    with FakeLLMServer(echo_invoice_responder) as server:
        ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=server.base_url, max_reasks=0)])
        items = sorted(ex.extract_many([extractkit.URI(f"s3://{bucket}/m/"), f"s3://{bucket}/m/a.txt",
                                        URI(f"s3://{bucket}/one.csv"), URI(f"s3://{bucket}/empty/")]),
                       key=lambda i: (i.index, i.path or ""))  # fmt: skip
        got = [(i.index, i.path, i.status, i.outcome) for i in items]
        assert got == [
            (0, f"s3://{bucket}/m/a.txt", "ok", "ok"),
            (0, f"s3://{bucket}/m/b.html", "ok", "ok"),
            (1, None, "failed", "ungrounded"),  # a plain str is a text (not grounded), never a URI
            (2, f"s3://{bucket}/one.csv", "error", "unsupported"),
            (3, f"s3://{bucket}/empty/", "error", "no_documents"),
        ]
        assert items[0].value.issuer == "Alpha Ltd" and items[1].value.issuer == "Beta Ltd"
        result = ex.extract_file(f"s3://{bucket}/m/a.txt")
        assert result.ok and result.value.total == 1.5
        ex.close()


def test_a_prefix_is_listed_a_page_at_a_time(s3, monkeypatch):
    import s3fs

    from extractkit.batch import _sources

    bucket = s3.new_bucket()
    for i in range(10):
        s3.put(bucket, f"many/{i:02}.txt", f"From: N{i}\nTotal: {i}")
    monkeypatch.setattr(_sources, "PAGE", 3)
    pages: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def call_s3(self, method, *args, **kw):  # type: ignore[no-untyped-def]
        if method == "list_objects_v2" and kw.get("Delimiter") == "":  # the listing, not info()
            kw["MaxKeys"] = 3  # moto answers 1,000 keys a page: 3 here, to see the pages
            pages.append(kw.get("ContinuationToken", "first"))
        return await real(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)
    it = walk([f"s3://{bucket}/many/"])
    first = next(it)
    assert first[0].name == "00.txt"
    assert 1 <= len(pages) <= 2  # the first page and at most the one fetched ahead, not all four
    rest = list(it)
    assert [u.name for u, _ in [first, *rest]] == [f"{i:02}.txt" for i in range(10)]
    assert len(pages) == 4


def test_dry_run_reads_an_s3_prefix_and_sends_nothing(s3, tmp_path):
    bucket = s3.new_bucket()
    s3.put(bucket, "d/a.txt", "From: Alpha Ltd\nTotal: 1.50\n")
    s3.put(bucket, "d/empty.txt", "")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = config(tmp_path, server.base_url)
        done = cli("extract", f"s3://{bucket}/d/", "-c", str(cfg), "--dry-run", "--json",
                   "--ledger", str(tmp_path / "l.sqlite3"))
        assert done.returncode == 0, done.stderr
        assert not server.requests
    est = json.loads(done.stdout)
    assert est["to_send"] == 1 and est["errors"] == 1
    assert {d["path"]: d["status"] for d in est["document_list"]} == {
        f"s3://{bucket}/d/a.txt": "send", f"s3://{bucket}/d/empty.txt": "error"}


def test_reading_an_object_runs_off_the_event_loop(s3):
    import asyncio
    import threading

    from extractkit.batch import _sources, aload

    bucket = s3.new_bucket()
    s3.put(bucket, "t/a.txt", "From: A\nTotal: 1")
    threads: list[str] = []
    real = _sources.read_bytes

    def spy(uri, max_bytes):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real(uri, max_bytes)

    _sources.read_bytes = spy
    try:
        doc = asyncio.run(aload(URI(f"s3://{bucket}/t/a.txt"), "txt"))
    finally:
        _sources.read_bytes = real
    assert doc.text == "From: A\nTotal: 1" and threads and threads[0] != threading.main_thread().name


def test_without_s3fs_the_error_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "from extractkit.cli import main\n"
        "sys.argv = ['extractkit', 'extract', 's3://bucket/prefix/', '-c', sys.argv[1]]\n"
        "main()\n"
    )
    cfg = config(tmp_path, "http://127.0.0.1:9/v1")
    done = subprocess.run([sys.executable, "-c", code, str(cfg)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**__import__("os").environ, "OPENAI_API_KEY": "sk-fake"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'extractkit[s3]'" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(MissingDependencyError):
        from extractkit.batch._sources import filesystem

        filesystem(URI("nosuchprotocol-xyz://a/b.txt"))


def test_credentials_in_a_uri_are_refused_and_never_stored(s3, tmp_path):
    bucket = s3.new_bucket()
    s3.put(bucket, "c/a.txt", "From: A Ltd\nTotal: 1.00\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = config(tmp_path, server.base_url)
        out, ledger = tmp_path / "out.jsonl", tmp_path / "l.sqlite3"
        local = tmp_path / "docs"
        local.mkdir()
        (local / "b.txt").write_text("From: B Ltd\nTotal: 2.00\n")
        done = cli("extract", str(local), f"s3://AKIAEMBEDDED:embedded-secret-value-123@{bucket}/c/", "-c",
                   str(cfg), "--out", str(out), "--ledger", str(ledger))
    assert done.returncode == 1, done.stderr
    got = {r["path"]: r for r in lines(out)}
    bad = got[f"s3://AKIAEMBEDDED:[REDACTED]@{bucket}/c/"]
    assert bad["outcome"] == "credentials_in_uri" and "environment" in bad["error"]
    for blob in (out.read_bytes(), ledger.read_bytes(), done.stderr.encode(), done.stdout.encode()):
        assert b"embedded-secret-value-123" not in blob


def test_file_uris_read_through_fsspec_like_local_paths(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("From: A Ltd\nTotal: 1.00\n")
    (docs / "sub" / "b.pdf").write_bytes(text_pdf("From: Pdf Ltd Total: 4.00"))
    (docs / "sub" / "huge.txt").write_bytes(b"x" * 5000)
    (docs / "photo.gif").write_bytes(b"\x89PNG")
    import os

    os.mkfifo(docs / "pipe.txt")  # never opened: reading it would wait for a writer
    root = f"file://{docs}"
    found = [(str(u), t) for u, t in walk([root])]
    assert found == [(f"{root}/a.txt", "txt"), (f"{root}/photo.gif", None), (f"{root}/pipe.txt", "special"),
                     (f"{root}/sub/b.pdf", "pdf"), (f"{root}/sub/huge.txt", "txt")]  # fmt: skip
    local = {d.sha256 for d in (load(docs / "a.txt", "txt"), load(docs / "sub" / "b.pdf", "pdf"))}
    remote = {load(URI(f"{root}/a.txt"), "txt").sha256, load(URI(f"{root}/sub/b.pdf"), "pdf").sha256}
    assert remote == local  # identity from the text, not the path
    with pytest.raises(DocumentError) as err:
        load(URI(f"{root}/sub/huge.txt"), "txt", max_bytes=4000)
    assert err.value.kind == "too_large"
    with pytest.raises(DocumentError) as err:
        load(URI(f"{root}/gone.txt"), "txt")
    assert err.value.kind == "missing"
    assert count_documents([root]) == 3


async def test_the_runner_records_uris_as_paths(s3, ledger_target):
    from extractkit import Ledger

    bucket = s3.new_bucket()
    s3.put(bucket, "r/a.txt", "From: A Ltd\nTotal: 1.00\n")
    s3.put(bucket, "r/copy.txt", "From: A Ltd\nTotal: 1.00\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=server.base_url, max_reasks=0)])
        ledger = Ledger(ledger_target)  # SQLite, then PostgreSQL
        async with ex:
            summary = await BatchRunner(ex, ledger).run([URI(f"s3://{bucket}/r/")])
            result = await ex.aextract_file(URI(f"s3://{bucket}/r/copy.txt"))  # no ledger: sent again
            items = [i async for i in ex.aextract_many([URI(f"s3://{bucket}/r/a.txt")])]
        rows = [tuple(r) for r in ledger.query("SELECT path, path_bytes FROM document_paths ORDER BY path")]
        ledger.close()
        assert result.ok and result.value.issuer == "A Ltd"
        assert [(i.path, i.status) for i in items] == [(f"s3://{bucket}/r/a.txt", "ok")]
        assert len(server.requests) == 3  # identical content, sent once by the run
    assert summary.ok == 2 and summary.duplicates == 1
    uris = [f"s3://{bucket}/r/a.txt", f"s3://{bucket}/r/copy.txt"]
    assert [(p, bytes(b)) for p, b in rows] == [(u, u.encode()) for u in uris]


def test_an_http_object_of_unknown_size_is_read_no_further_than_the_limit():
    """An https:// (here http://) URL through fsspec: a server that sends no length and never
    stops is cut off after max_bytes + 1 bytes (too_large), a plain file is read whole."""
    import http.server
    import threading

    sent: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/a.txt":
                body = b"From: Web Ltd\nTotal: 2.00\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            n, chunk = 0, b"x" * 65536
            try:
                while n < 500_000_000:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    n += len(chunk)
            except OSError:
                pass
            sent.append(n)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert load(URI(f"{base}/a.txt"), "txt").text == "From: Web Ltd\nTotal: 2.00"
        with pytest.raises(DocumentError) as err:
            load(URI(f"{base}/endless.txt"), "txt", max_bytes=100_000)
        assert err.value.kind == "too_large"
    finally:
        server.shutdown()
        server.server_close()
    import time

    deadline = time.monotonic() + 30
    while not sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent and sent[0] < 100_000_000  # the reader hung up: not all 500 MB were sent


def test_the_config_gives_the_store_its_endpoint_but_never_credentials(s3, tmp_path):
    import os

    bucket = s3.new_bucket()
    s3.put(bucket, "o/a.txt", "From: Alpha Ltd\nTotal: 1.50\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.update(OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER="")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = config(tmp_path, server.base_url, f'\n[documents.storage_options.s3]\nendpoint_url = "{s3.endpoint}"\n')
        run = [sys.executable, "-m", "extractkit", "extract", f"s3://{bucket}/o/", "-c", str(cfg), "--json",
               "--ledger", str(tmp_path / "l.sqlite3")]  # fmt: skip
        done = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] == 1
        secret = config(tmp_path, server.base_url, '\n[documents.storage_options.s3]\nsecret = "abc-123-xyz"\n')
        done = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "credentials are not read from the config file" in done.stderr
    assert "abc-123-xyz" not in done.stderr and secret.exists()
