"""Scanned pages and images read by OCR (the ``ocr`` extra): image-only PDFs made here by rendering
the shared corpus's PDFs (read in place, never copied), mixed PDFs, PNG / JPEG / TIFF / WebP, the
limits, and what happens without the extra. OCR is slow on 2 cores: the rendered PDFs and what OCR
read from them are made once per session, and only a few pages are read."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import socket
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw, ImageFont

from extractkit._grounding import SourceIndex
from extractkit._pages import Page, page_of
from extractkit.batch import _ocr
from extractkit.batch._loaders import PAGE_SEP, Document, count_documents, load, walk

from .conftest import CORPUS

GOLD_DOCS = ("AzureInterior", "oyo")  # one page each: OCR'd once per session
GOLD_FIELDS = ("issuer", "invoice_number", "date", "amount")  # the example schema's grounded fields
LINE = "Invoice No. 12345 Total: 99.50 EUR"


def scanned(pdf: Path, dpi: int = 200) -> bytes:
    """An image-only PDF of ``pdf``: every page rendered at ``dpi`` and saved as an image."""
    doc = pdfium.PdfDocument(str(pdf))
    try:
        images = [doc[i].render(scale=dpi / 72).to_pil() for i in range(len(doc))]
    finally:
        doc.close()
    buf = io.BytesIO()
    images[0].save(buf, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return buf.getvalue()


def line_image(text: str = LINE, size: tuple[int, int] = (760, 480)) -> Image.Image:
    """A white image with one line of black text. Not a thin strip: the detector scales an image's
    short side up to 736 pixels, and a strip's long side with it (seconds more per read)."""
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((20, 200), text, fill="black", font=ImageFont.load_default(size=32))
    return im


def encoded(im: Image.Image | list[Image.Image], fmt: str) -> bytes:
    frames = im if isinstance(im, list) else [im]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=len(frames) > 1, append_images=frames[1:])
    return buf.getvalue()


@pytest.fixture(scope="session")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The gold documents as image-only PDFs (rendered at 200 dpi), made once per session."""
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    out = tmp_path_factory.mktemp("scans")
    made = {}
    for name in GOLD_DOCS:
        made[name] = out / f"{name}-scanned.pdf"
        made[name].write_bytes(scanned(CORPUS / f"{name}.pdf"))
    return made


@pytest.fixture(scope="session")
def scanned_docs(scans: dict[str, Path]) -> dict[str, Document]:
    """What the loader read from each image-only PDF (OCR'd once per session)."""
    return {name: load(path, "pdf") for name, path in scans.items()}


def gold_values(name: str) -> dict[str, Any]:
    gold = json.loads((CORPUS / f"{name}.json").read_text())[0]
    values = {k: gold[k] for k in GOLD_FIELDS if gold.get(k) is not None}
    if "date" in values:
        values["date"] = dt.date.fromisoformat(values["date"])
    return values


# -- image-only PDFs of the corpus ------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLD_DOCS)
def test_a_scanned_corpus_pdf_is_read_by_ocr_and_holds_every_gold_value(name, scanned_docs, scans):
    doc = scanned_docs[name]
    values = gold_values(name)
    source = SourceIndex(doc.text)  # normalised as grounding normalises
    missing = {k: v for k, v in values.items() if not source.contains(v)}
    assert not missing, f"OCR text of {name} lacks {missing}:\n{doc.text}"
    assert len(values) == len(GOLD_FIELDS)  # every field checked, the date as a date
    [page] = doc.pages
    assert (page.number, page.start, page.end, page.source) == (1, 0, len(doc.text), "ocr")
    assert page.confidence is not None and 0.9 < page.confidence <= 1
    # identity: the text and the file's bytes (what a vision tier would see), not the text alone
    data = scans[name].read_bytes()
    expected = hashlib.sha256(f"{doc.text}\0{hashlib.sha256(data).hexdigest()}".encode()).hexdigest()
    assert doc.sha256 == expected != hashlib.sha256(doc.text.encode()).hexdigest()


def test_the_text_layer_pdf_keeps_its_text_identity_and_says_its_pages_came_from_it(corpus):
    doc = load(corpus / "QualityHosting.pdf", "pdf")  # two pages with a text layer
    assert [p.source for p in doc.pages] == ["text", "text"]
    assert all(p.confidence is None for p in doc.pages)
    assert doc.sha256 == hashlib.sha256(doc.text.encode()).hexdigest()
    one, two = doc.pages
    assert doc.text[one.end : two.start] == PAGE_SEP  # pages joined by a blank line
    assert page_of(doc.pages, two.start) == 2 and page_of(doc.pages, one.end - 1) == 1


def test_ocr_reads_with_the_network_blocked(monkeypatch, tmp_path):
    """The models are in the wheel: building the engine and reading a page open no socket."""
    opened: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    _ocr.reset()  # the engine is built (its models loaded) under the block
    path = tmp_path / "line.png"
    path.write_bytes(encoded(line_image(), "PNG"))
    doc = load(path, "image")
    assert "12345" in doc.text and "99.50" in doc.text
    assert opened == []


# -- mixed PDFs: only the pages without a text layer are OCR'd ----------------------------------------


def mixed_pdf(corpus: Path) -> bytes:
    """Page 1: AzureInterior with its text layer; page 2: an image of one line, no text layer."""
    out = pdfium.PdfDocument.new()
    out.import_pages(pdfium.PdfDocument(str(corpus / "AzureInterior.pdf")), [0])
    out.import_pages(pdfium.PdfDocument(encoded(line_image(), "PDF")), [0])
    buf = io.BytesIO()
    out.save(buf)
    return buf.getvalue()


def test_a_mixed_pdf_ocrs_only_its_page_without_a_text_layer(corpus, tmp_path, monkeypatch):
    path = tmp_path / "mixed.pdf"
    path.write_bytes(mixed_pdf(corpus))
    read = []
    real = _ocr.read
    monkeypatch.setattr(_ocr, "read", lambda image: read.append(image.size) or real(image))
    doc = load(path, "pdf")
    one, two = doc.pages
    assert (one.source, one.confidence) == ("text", None)
    assert two.source == "ocr" and two.confidence is not None and two.confidence > 0.9
    assert len(read) == 1  # page 2 alone was rendered and read
    text_layer = load(corpus / "AzureInterior.pdf", "pdf").text
    assert doc.text[one.start : one.end] == text_layer
    assert "12345" in doc.text[two.start : two.end] and "99.50" in doc.text[two.start : two.end]
    assert page_of(doc.pages, doc.text.rindex("12345")) == 2
    assert doc.sha256 != hashlib.sha256(doc.text.encode()).hexdigest()  # an OCR'd page: the pixels count


# -- images ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_an_image_is_read_by_ocr(fmt, suffix, tmp_path):
    path = tmp_path / f"scan{suffix}"
    data = encoded(line_image(), fmt)
    path.write_bytes(data)
    [(walked, kind)] = list(walk([tmp_path]))
    assert (walked, kind) == (path, "image")  # walked as a document, not skipped
    doc = load(path, kind)
    assert "12345" in doc.text and "99.50" in doc.text
    [page] = doc.pages
    assert (page.number, page.source, page.start, page.end) == (1, "ocr", 0, len(doc.text))
    assert doc.sha256 == hashlib.sha256(f"{doc.text}\0{hashlib.sha256(data).hexdigest()}".encode()).hexdigest()
    assert doc.images == ()  # only on request


def test_a_multi_frame_tiff_is_one_document_of_pages(tmp_path):
    path = tmp_path / "two.tiff"
    path.write_bytes(encoded([line_image(), line_image("Order 777 Due 2024-05-01")], "TIFF"))
    doc = load(path, "image", images=True)
    assert [p.number for p in doc.pages] == [1, 2] and {p.source for p in doc.pages} == {"ocr"}
    assert "12345" in doc.text[doc.pages[0].start : doc.pages[0].end]
    assert "777" in doc.text[doc.pages[1].start : doc.pages[1].end]
    assert len(doc.images) == 2 and all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in doc.images)


def test_images_true_gives_one_png_per_pdf_page(corpus):
    doc = load(corpus / "QualityHosting.pdf", "pdf", images=True)
    assert len(doc.images) == 2
    assert Image.open(io.BytesIO(doc.images[0])).size == (1654, 2339)  # A4 at 200 dpi
    # the pixels are part of what a vision tier is given: the identity includes the file
    assert doc.sha256 != hashlib.sha256(doc.text.encode()).hexdigest()


# -- broken and hostile inputs -------------------------------------------------------------------------


def kind_of(path: Path, doc_type: str, **kw: Any) -> str:
    from extractkit import DocumentError

    with pytest.raises(DocumentError) as info:
        load(path, doc_type, **kw)
    return info.value.kind


def test_a_broken_image_is_corrupt_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    assert kind_of(bad, "image") == "corrupt_image"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(encoded(line_image(), "JPEG")[:300])
    assert kind_of(cut, "image") == "corrupt_image"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    small = encoded(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[33:]


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    assert kind_of(bomb, "image") == "image_too_large"
    big = tmp_path / "big.png"
    big.write_bytes(_png_claiming(9_000, 9_000))  # 81 M pixels: under Pillow's limit, over ours
    assert kind_of(big, "image") == "image_too_large"
    assert kind_of(big, "image", max_pixels=100_000_000) == "corrupt_image"  # then decoding finds the lie


def test_a_huge_pdf_page_and_too_many_pages_are_refused(tmp_path):
    huge = pdfium.PdfDocument.new()
    huge.new_page(14_400, 14_400)  # the largest page PDF allows: 40,000 x 40,000 pixels at 200 dpi
    buf = io.BytesIO()
    huge.save(buf)
    (tmp_path / "huge.pdf").write_bytes(buf.getvalue())
    assert kind_of(tmp_path / "huge.pdf", "pdf") == "image_too_large"
    many = tmp_path / "three.tiff"
    many.write_bytes(encoded([line_image()] * 3, "TIFF"))
    assert kind_of(many, "image", max_pages=2) == "too_many_pages"
    blank = pdfium.PdfDocument.new()
    for _ in range(3):
        blank.new_page(200, 200)
    buf = io.BytesIO()
    blank.save(buf)
    (tmp_path / "blank.pdf").write_bytes(buf.getvalue())
    assert kind_of(tmp_path / "blank.pdf", "pdf", max_pages=2) == "too_many_pages"
    assert kind_of(tmp_path / "blank.pdf", "pdf") == "no_text"  # rendered and read: nothing on them


# -- without the ocr extra -----------------------------------------------------------------------------


@pytest.fixture
def no_ocr_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # import rapidocr -> ImportError
    _ocr.reset()
    yield
    _ocr.reset()


def test_without_the_extra_a_scanned_pdf_says_what_to_install(no_ocr_extra, scans):
    from extractkit import DocumentError

    with pytest.raises(DocumentError) as info:
        load(scans["oyo"], "pdf")
    assert info.value.kind == "no_text"
    assert "extractkit[ocr]" in str(info.value)


def test_without_the_extra_an_image_is_an_error_of_its_own(no_ocr_extra, tmp_path):
    from extractkit import DocumentError

    path = tmp_path / "scan.png"
    path.write_bytes(encoded(line_image(), "PNG"))
    assert count_documents([tmp_path]) == 1  # counted, not skipped
    with pytest.raises(DocumentError) as info:
        load(path, "image")
    assert info.value.kind == "ocr_unavailable" and "extractkit[ocr]" in str(info.value)


def test_without_the_extra_a_mixed_pdf_keeps_its_text_pages_and_says_so(no_ocr_extra, corpus, tmp_path,
                                                                       caplog):  # fmt: skip
    path = tmp_path / "mixed.pdf"
    path.write_bytes(mixed_pdf(corpus))
    with caplog.at_level(logging.WARNING, logger="extractkit"):
        doc = load(path, "pdf")
    assert [p.source for p in doc.pages] == ["text", "none"]
    assert doc.pages[1] == Page(2, len(doc.text), len(doc.text), "none")
    assert "99.50 EUR" not in doc.text
    assert "extractkit[ocr]" in caplog.text and "[2]" in caplog.text
    assert doc.sha256 == hashlib.sha256(doc.text.encode()).hexdigest()  # text alone: nothing was OCR'd


# -- the engine ------------------------------------------------------------------------------------------


def test_the_engine_is_built_once_per_process_even_when_threads_race_for_it(monkeypatch):
    import threading

    import rapidocr

    built: list[int] = []
    gate = threading.Barrier(4)

    class Engine:
        def __init__(self, params: dict[str, Any]):
            built.append(1)

    monkeypatch.setattr(rapidocr, "RapidOCR", Engine)
    _ocr.reset()
    got: list[Any] = []

    def take() -> None:
        gate.wait()
        got.append(_ocr.engine())

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len({id(e) for e in got}) == 1 and _ocr.engine() is got[0]
    _ocr.reset()  # the next test builds the real one


def test_an_engine_failure_is_ocr_failed(monkeypatch, tmp_path):
    def broken(image: Any) -> _ocr.Read:
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(_ocr, "read", broken)
    path = tmp_path / "scan.png"
    path.write_bytes(encoded(line_image(), "PNG"))
    assert kind_of(path, "image") == "ocr_failed"
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(encoded(line_image(), "PDF"))
    assert kind_of(pdf, "pdf") == "ocr_failed"
