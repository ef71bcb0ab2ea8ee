"""Issue 19, section 2: vision tiers. A tier may send a document's page images (``input =
"images"`` or ``"text+images"``) as ``image_url`` content parts with base64 PNG data URLs and a
``detail``; image tokens are counted by OpenAI's published rule (in the context check and in
``--dry-run``'s cost); grounding uses the text when there is one and says when there is none.

Providers are faked with respx or the scripted server of tests/fakes.py; the page images are
PNGs made here (zlib + struct: no imaging library needed)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from pathlib import Path

import httpx
import pytest

from extractkit import ConfigError, DocumentError, Extractor, Price, ZeroShot
from extractkit._config import build_tiers, parse_config
from extractkit._steps import NOT_GROUNDED
from extractkit._tokens import data_url_size, image_rule, image_tokens, png_size, request_image_tokens

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, FakeLLMServer, completion

TEXT = "INVOICE 7\nIssuer: Acme Ltd\nTotal: 12.50\n"
ANSWER = {"issuer": "Acme Ltd", "total": 12.5}


def make_png(width: int, height: int, shade: int = 200) -> bytes:
    """A real grey PNG of ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([shade]) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def vision_tier(**kw: object) -> ZeroShot:
    kw.setdefault("model", "gpt-4o")
    kw.setdefault("input", "text+images")
    return ZeroShot(base_url=BASE_URL, max_reasks=0, **kw)  # type: ignore[arg-type]


def sent(route) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(route.calls.last.request.content)


# -- image tokens: OpenAI's published rule and its worked examples -----------------------------------
# "Images and vision" guide, "Calculating costs" (https://platform.openai.com/docs/guides/images-vision
# #calculating-costs), "Cost calculation examples (for gpt-4o)": a 1024 x 1024 image in "high" costs
# 765 tokens (scaled to 768 x 768, 4 tiles: 170 * 4 + 85); a 2048 x 4096 image in "high" 1105 (1024 x
# 2048, then 768 x 1536, 6 tiles: 170 * 6 + 85); a 4096 x 8192 image in "low" 85. Patch models (same
# page, "Patch-based image tokenization"): 1024 x 1024 is 1024 patches; 1800 x 2400 is 1452 (scaled to
# 1056 x 1408 to fit the 1,536-patch budget), times the model's multiplier (gpt-4.1-mini: 1.62).
@pytest.mark.parametrize(
    ("size", "detail", "model", "tokens"),
    [
        ((1024, 1024), "high", "gpt-4o", 765),
        ((2048, 4096), "high", "gpt-4o", 1105),
        ((4096, 8192), "low", "gpt-4o", 85),
        ((1024, 1024), "auto", "gpt-4o-2024-08-06", 765),  # auto is counted as high (an upper bound)
        ((1024, 1024), "high", "gpt-4.1", 765),
        ((1024, 1024), "high", "gpt-5", 70 + 4 * 140),  # the table's gpt-5 row
        ((1024, 1024), "high", "o3", 75 + 4 * 150),
        ((1024, 1024), "high", "gpt-4o-mini", 2833 + 4 * 5667),  # its billed tokens (table's 4o-mini row)
        ((4096, 8192), "low", "gpt-4o-mini", 2833),
        ((128, 64), "high", "gpt-4o", 85 + 170),  # a small image is not enlarged: one tile
        ((1800, 2400), "high", "gpt-4.1-mini", 2353),  # 1452 patches x 1.62, rounded up
    ],
)
def test_image_tokens_match_the_published_examples(size, detail, model, tokens):  # type: ignore[no-untyped-def]
    assert image_tokens(*size, detail, model) == tokens


def test_context_tokens_of_patch_models_and_gpt_4o_mini():
    # the patch counts of the published examples, before the multiplier
    assert image_tokens(1024, 1024, "high", "gpt-4.1-mini", context=True) == 1024
    assert image_tokens(1800, 2400, "high", "gpt-4.1-nano", context=True) == 1452
    # gpt-4o-mini's billed image tokens price an image like gpt-4o's; its context holds gpt-4o's count
    assert image_tokens(1024, 1024, "high", "gpt-4o-mini", context=True) == 765


def test_an_unknown_model_is_counted_as_gpt_4o_and_says_so():
    assert image_rule("my-gateway-vision-model") == ("gpt-4o", False)
    assert image_rule("ft:gpt-4o-mini-2024-07-18:acme::x1") == ("gpt-4o-mini", True)
    assert image_tokens(1024, 1024, "high", "my-gateway-vision-model") == 765
    from extractkit.batch._estimate import _rule_of  # what --dry-run --json says of such a tier

    assert "not in OpenAI's image table: counted as gpt-4o" in (_rule_of(vision_tier(model="my-vlm")) or "")


def test_image_size_is_read_from_the_png_header():
    png = make_png(300, 200)
    assert png_size(png) == (300, 200)
    assert data_url_size(data_url(png)) == (300, 200)
    assert data_url_size("https://example.com/a.png") is None
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + b"\0" * 30)
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"},
                {"type": "image_url", "image_url": {"url": data_url(make_png(1024, 1024)), "detail": "high"}}]}]
    assert request_image_tokens(messages, "gpt-4o") == 765


# -- the request: content parts, detail, data URL --------------------------------------------------
def test_text_and_images_request_body(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    page1, page2 = make_png(40, 30), make_png(50, 20, shade=90)
    with Extractor(Invoice, [vision_tier(detail="high")]) as ex:
        result = ex.extract(TEXT, images=[page1, page2])
    assert result.ok, result.error
    system, user = sent(route)["messages"]
    assert isinstance(system["content"], str)
    text, *images = user["content"]
    assert text["type"] == "text" and "Total: 12.50" in text["text"]  # the text as well
    assert images == [
        {"type": "image_url", "image_url": {"url": data_url(page1), "detail": "high"}},
        {"type": "image_url", "image_url": {"url": data_url(page2), "detail": "high"}},
    ]


def test_images_only_sends_no_document_text(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    page = make_png(40, 30)
    tier = vision_tier(input="images", detail="low", instructions="Totals are in EUR.")
    with Extractor(Invoice, [tier]) as ex:
        result = ex.extract(TEXT, images=[page])
    assert result.ok, result.error  # grounded against the text all the same
    body = json.dumps(sent(route))
    assert "Acme" not in body and "12.50" not in body  # not the document's text...
    system, user = sent(route)["messages"]
    assert "Totals are in EUR." in system["content"]  # ...but the instructions
    assert "1 page image(s) attached" in user["content"][0]["text"]
    assert user["content"][1] == {"type": "image_url", "image_url": {"url": data_url(page), "detail": "low"}}


def test_a_text_tier_sends_no_images_and_its_identity_is_unchanged(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    with Extractor(Invoice, [ZeroShot(model="gpt-4o", base_url=BASE_URL)]) as ex:
        assert not ex.needs_images
        result = ex.extract(TEXT, images=[make_png(10, 10)])
        assert result.ok
        assert result.document_sha256 == ex.extract(TEXT).document_sha256  # unused pixels: same document
        described = ex.describe()["tiers"][0]
    assert isinstance(sent(route)["messages"][1]["content"], str)
    assert "input" not in described and "detail" not in described


def test_input_and_detail_are_part_of_the_identity():
    def config_hash(**kw: object) -> str:
        return Extractor(Invoice, [vision_tier(**kw)]).config_hash

    hashes = {config_hash(input="images"), config_hash(input="text+images"),
              config_hash(input="text+images", detail="low"), config_hash(input="text+images", detail="high")}
    assert len(hashes) == 4
    assert Extractor(Invoice, [vision_tier()]).needs_images


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="input must be one of"):
        vision_tier(input="pixels")
    with pytest.raises(ConfigError, match="detail must be one of"):
        vision_tier(detail="ultra")
    with pytest.raises(ConfigError, match="applies to page images"):  # a setting that would do nothing
        ZeroShot(model="gpt-4o", detail="high")


def test_config_file_input_and_detail(tmp_path: Path):
    raw = {"schema": "tests.conftest:Invoice",
           "tiers": [{"kind": "zero_shot", "model": "gpt-4o", "input": "images", "detail": "high"},
                     {"kind": "zero_shot", "model": "gpt-4o", "name": "plain"}]}
    vision, plain = build_tiers(parse_config(raw, root=tmp_path))
    assert (vision.input, vision.detail) == ("images", "high")
    assert (plain.input, plain.detail) == ("text", "auto")
    bad = {**raw, "tiers": [{"kind": "zero_shot", "model": "gpt-4o", "input": "video"}]}
    with pytest.raises(ConfigError, match="input"):
        parse_config(bad, root=tmp_path)


# -- a document without images ----------------------------------------------------------------------
def test_images_only_without_images_is_a_document_error_before_sending(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    ex = Extractor(Invoice, [vision_tier(input="images")])
    with ex, pytest.raises(DocumentError, match='input = "images"') as info:
        ex.extract(TEXT)
    assert info.value.kind == "no_images"
    assert not route.called


def test_text_and_images_without_images_falls_back_to_the_text(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    with Extractor(Invoice, [vision_tier()]) as ex:
        assert ex.extract(TEXT).ok
    assert isinstance(sent(route)["messages"][1]["content"], str)


def test_an_image_that_is_not_a_png_is_refused(mock_api):
    ex = Extractor(Invoice, [vision_tier()])
    with ex, pytest.raises(DocumentError, match="not a PNG"):
        ex.extract(TEXT, images=[b"\xff\xd8\xff\xe0 a jpeg"])


# -- the context check counts the images ------------------------------------------------------------
def test_context_overflow_counts_page_images(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    # the text fits 2,000 tokens by far; 3 pages of 1024 x 1024 in "high" are 3 x 765 tokens
    tier = vision_tier(detail="high", context_window=2000, max_output_tokens=100)
    with Extractor(Invoice, [tier]) as ex:
        assert ex.extract(TEXT, images=[make_png(1024, 1024)] * 1).ok  # one page fits
        result = ex.extract(TEXT, images=[make_png(1024, 1024)] * 3)
    assert route.call_count == 1  # the second was refused unsent
    assert result.outcome.value == "context_overflow"
    assert "2295 of them for 3 page images" in (result.error or "")
    # "low" detail: 3 x 85 tokens fit
    with Extractor(Invoice, [vision_tier(detail="low", context_window=2000, max_output_tokens=100)]) as ex:
        assert ex.extract(TEXT, images=[make_png(1024, 1024)] * 3).ok


# -- grounding ---------------------------------------------------------------------------------------
def test_grounding_checks_values_against_the_text_when_there_is_one(mock_api):
    wrong = {"issuer": "Globex Corp", "total": 12.5}  # not in the text (the model read the picture wrong)
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(wrong)))
    with Extractor(Invoice, [vision_tier(input="images")]) as ex:
        result = ex.extract(TEXT, images=[make_png(20, 20)])
    assert not result.ok and result.outcome.value == "ungrounded"


def test_no_text_at_all_says_grounding_was_not_possible(mock_api):
    wrong = {"issuer": "Globex Corp", "total": 99.0}
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(wrong)))
    with Extractor(Invoice, [vision_tier(input="images")]) as ex:
        result = ex.extract("", images=[make_png(20, 20)])
    assert result.ok  # not rejected: there is nothing to check it against...
    assert result.attempts[-1].error == NOT_GROUNDED  # ...and the attempt says so


# -- end to end against the scripted server, with a ledger -------------------------------------------
def test_vision_tier_end_to_end_with_a_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = "sk-vision-secret-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    page = make_png(600, 800)

    def responder(body: dict) -> tuple[int, dict, dict]:
        parts = body["messages"][-1]["content"]
        urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"] if isinstance(parts, list) else []
        ok = urls in ([data_url(page)], [])  # the page as sent, or the text alone
        return 200, completion(ANSWER if ok else {"issuer": "no image", "total": 0}), {}

    ledger = tmp_path / "ledger.sqlite3"
    with FakeLLMServer(responder) as server:
        tier = ZeroShot(model="gpt-4o", base_url=server.base_url, input="text+images", price=Price(2.5, 10))
        with Extractor(Invoice, [tier], ledger=ledger) as ex:
            result = ex.extract(TEXT, images=[page])
            same_text = ex.extract(TEXT)
    assert result.ok and result.value == Invoice(**ANSWER)
    assert same_text.ok
    with_page, text_only = server.requests
    assert [p["image_url"]["url"] for p in with_page["messages"][1]["content"][1:]] == [data_url(page)]
    assert isinstance(text_only["messages"][1]["content"], str)
    # the pixels are part of the document's identity: two extractions, two documents
    assert result.document_sha256 != same_text.document_sha256
    shas = {r[0] for r in db_rows(ledger, "SELECT document_sha256 FROM extractions")}
    assert shas == {result.document_sha256, same_text.document_sha256}
    for f in tmp_path.iterdir():  # the key is never stored (nor the -wal / -shm files)
        assert key.encode() not in f.read_bytes()


# -- the batch runner and --dry-run load page images only for a vision chain ------------------------------
@pytest.fixture
def pages_loader(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """``load`` as the issue-19 loader gives it (``images=True``: one PNG per page): a .pdf here has
    two 1024 x 1024 pages and the text of the .pdftext file beside it, a .txt none. Returns whether
    each load asked for images."""
    from extractkit.batch import _loaders, _runner

    real = _loaders.load
    asked: list[bool] = []

    def load(path, doc_type, *, images: bool = False, **kw):  # type: ignore[no-untyped-def]
        asked.append(images)
        if doc_type == "pdf":
            from dataclasses import replace

            doc = real(path.with_suffix(".pdftext"), "txt", **kw)
            return replace(doc, path=str(path), type="pdf",
                           images=(make_png(1024, 1024), make_png(1024, 1024)) if images else ())
        return real(path, doc_type, **kw)

    monkeypatch.setattr(_runner, "load", load)
    return asked


def test_dry_run_counts_image_tokens_in_the_cost(tmp_path: Path, pages_loader: list[bool], mock_api):
    from extractkit.batch._estimate import estimate

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.txt").write_text(TEXT)
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4 fake")
    (docs / "scan.pdftext").write_text(TEXT)
    text_tier = ZeroShot(model="gpt-4o", base_url=BASE_URL, name="text", price=Price(1.0, 0))
    vision = ZeroShot(model="gpt-4o", base_url=BASE_URL, name="vision", input="text+images", detail="high",
                      price=Price(1.0, 0))
    ex = Extractor(Invoice, [text_tier, vision])
    est = asyncio.run(estimate(ex, [docs / "scan.pdf"]))
    (d,) = est.documents
    assert d.status == "send"
    assert d.image_tokens == {"vision": 2 * 765}
    # the vision tier's request is the text tier's plus its two pages (and a little for the text part)
    assert 2 * 765 <= d.tokens["vision"] - d.tokens["text"] <= 2 * 765 + 10
    assert est.tiers[1].image_tokens == 2 * 765
    assert (est.tiers[0].image_rule, est.tiers[1].image_rule) == (None, "gpt-4o")
    assert est.to_dict()["tiers"][1]["image_rule"] == "gpt-4o"
    assert est.tiers[1].first_input_usd == pytest.approx(d.tokens["vision"] / 1e6)
    assert pages_loader == [True]
    # a text chain does not ask for images
    pages_loader.clear()
    asyncio.run(estimate(Extractor(Invoice, [text_tier]), [docs / "scan.pdf"]))
    assert pages_loader == [False]


def test_batch_runner_passes_page_images_and_refuses_a_text_file_to_an_images_tier(
    tmp_path: Path, pages_loader: list[bool], mock_api
):
    from extractkit.batch import BatchRunner

    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.txt").write_text(TEXT)
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4 fake")
    (docs / "scan.pdftext").write_text(TEXT)
    ex = Extractor(Invoice, [vision_tier(input="images")])
    results = []
    runner = BatchRunner(ex, None, concurrency=1, on_result=lambda r, _: results.append(r))
    asyncio.run(runner.run([docs]))
    assert set(pages_loader) == {True}
    by_path = {Path(r.path).name: r for r in results}
    assert by_path["scan.pdf"].status == "ok"
    assert by_path["scan.txt"].status == "error" and by_path["scan.txt"].outcome == "no_images"
    (call,) = route.calls
    parts = json.loads(call.request.content)["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]


def test_batch_waves_refuse_a_vision_tier():
    from extractkit.batch._waves import WaveRunner

    with pytest.raises(ConfigError, match="sends page images"):
        WaveRunner(Extractor(Invoice, [vision_tier()]), None)


def test_extract_file_sends_the_page_images(tmp_path: Path, pages_loader: list[bool], mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4 fake")
    (tmp_path / "scan.pdftext").write_text(TEXT)
    with Extractor(Invoice, [vision_tier(detail="low")]) as ex:
        assert ex.extract_file(tmp_path / "scan.pdf").ok
    assert pages_loader == [True]
    parts = sent(route)["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]


def test_rate_limiter_charges_page_images_by_their_tokens():
    from extractkit._llm import rate_limit_tokens

    page = {"type": "image_url", "image_url": {"url": data_url(make_png(1024, 1024)), "detail": "high"}}
    with_page = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}, page]}]}
    text_only = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 40}]}
    # not the characters of its data URL: its 765 tokens (and a separator character: +1 at most)
    assert 765 <= rate_limit_tokens(with_page, 100, 0) - rate_limit_tokens(text_only, 100, 0) <= 766


def test_a_vision_batch_resumes_what_it_recorded(tmp_path: Path, pages_loader: list[bool], mock_api):
    from extractkit import Ledger
    from extractkit.batch import BatchRunner
    from extractkit.batch._estimate import estimate

    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4 fake")
    (docs / "scan.pdftext").write_text(TEXT)  # the .pdf's text, as the fake loader reads it
    (docs / "scan.txt").write_text(TEXT.replace("INVOICE 7", "INVOICE 8"))
    ex = Extractor(Invoice, [vision_tier()])
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        for _ in range(2):
            results: list = []
            runner = BatchRunner(ex, ledger, concurrency=1, on_result=lambda r, _, got=results: got.append(r))
            asyncio.run(runner.run([docs]))
            assert {r.status for r in results} == {"ok"}
        assert route.call_count == 2  # each document once: the second run resumed both
        assert all(r.resumed for r in results)
        est = asyncio.run(estimate(ex, [docs], ledger=ledger))
        assert {d.status for d in est.documents} == {"resumed"}
    finally:
        ledger.close()


def test_extract_via_batch_refuses_a_vision_chain_before_sending(tmp_path: Path):
    from .fakes import echo_invoice_responder
    from .fakes_batch import FakeBatchServer
    from .test_batch import cli, write_config

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(TEXT)
    with FakeBatchServer(echo_invoice_responder) as server:
        cfg = write_config(tmp_path, server.base_url, tier_extra='input = "text+images"\ndetail = "low"')
        done = cli("extract", str(docs), "-c", str(cfg), "--ledger", str(tmp_path / "l.sqlite3"),
                   "--via", "batch", "--poll", "0")  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "sends page images" in done.stderr and "without --via batch" in done.stderr
        assert not server.calls  # nothing uploaded, no batch created


def test_a_real_pdf_goes_as_its_rendered_pages(corpus: Path, mock_api):
    """The issue-19 loader (the ocr extra: pypdfium2) renders a PDF's pages at 200 dpi; a vision tier
    sends them, and the request's image tokens are those of the rule: an A4 page (1654 x 2339 px)
    fits 2048 as 1448 x 2048, its shortest side goes to 768 (768 x 1086): 2 x 3 tiles, 6 x 170 + 85."""
    import pypdfium2  # noqa: F401  (the ocr extra: installed by .ci/run, never skipped)

    from extractkit.batch._estimate import estimate

    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    pdf = corpus / "QualityHosting.pdf"  # two pages with a text layer
    with Extractor(Invoice, [vision_tier(detail="high")]) as ex:
        ex.extract_file(pdf)  # its values do not ground (the answer is Acme's): the request is the point
    messages = sent(route)["messages"]
    text, *pages = messages[1]["content"]
    from extractkit.batch import load

    first_line = load(pdf, "pdf").text.splitlines()[0]
    assert first_line.strip() and first_line in text["text"]  # the text layer as well
    assert [data_url_size(p["image_url"]["url"]) for p in pages] == [(1654, 2339)] * 2
    assert request_image_tokens(messages, "gpt-4o") == 2 * 1105
    priced = Extractor(Invoice, [vision_tier(detail="high", price=Price(1.0, 0))])
    (d,) = asyncio.run(estimate(priced, [pdf])).documents
    assert d.image_tokens == {"zero_shot": 2 * 1105}
