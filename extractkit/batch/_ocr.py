"""Pages as pixels: render PDF pages (pypdfium2), open images (Pillow), read them by OCR (rapidocr).

Everything here needs the ``ocr`` extra (``pip install 'extractkit[ocr]'``): rapidocr, whose wheel
ships its PP-OCR detection, classifier and recognition ONNX models (nothing is downloaded at run
time), onnxruntime to run them, pypdfium2 and Pillow. Without it ``OcrUnavailable`` says what to
install; the loaders turn it into a ``DocumentError``.

The OCR engine is built once per process, lazily, at the first page read, and used under a lock:
one page at a time (onnxruntime already spreads one page over the cores). Callers run in worker
threads (the batch runner loads documents with ``asyncio.to_thread``), never on the event loop.

Limits, checked before any pixel is decoded: a page or image larger than ``max_pixels`` (a
decompression bomb: a few KB of PNG can claim 100,000 x 100,000 pixels) and a document with more
than ``max_pages`` pages to render are refused.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

DPI = 200  # PDF pages are rendered at this resolution for OCR and for vision tiers
MAX_PAGES = 300  # a document with more pages to render than this is refused (kind too_many_pages)
MAX_PIXELS = 64_000_000  # a page or image with more pixels than this is refused (kind image_too_large)
IMAGE_TYPES = {".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image", ".tiff": "image",
               ".webp": "image"}  # fmt: skip
INSTALL = "pip install 'extractkit[ocr]'"


class OcrUnavailable(Exception):
    """The ``ocr`` extra is not installed (which import failed is in the message)."""


class TooLarge(Exception):
    """A page or image over the pixel limit, or a document over the page limit: ``kind`` says which."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Read:
    """What OCR read on one page: its text (lines top to bottom, words on a line left to right)
    and the mean and minimum recognition score of its lines (None: nothing was read)."""

    text: str
    confidence: float | None
    min_confidence: float | None


_lock = threading.Lock()
_engine: Any = None


def available() -> str | None:
    """None when the ``ocr`` extra is importable, else why not (the missing module)."""
    try:
        import onnxruntime  # noqa: F401
        import PIL  # noqa: F401
        import pypdfium2  # noqa: F401
        import rapidocr  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or exc} is not installed"
    return None


def _require() -> None:
    why = available()
    if why is not None:
        raise OcrUnavailable(f"OCR needs the ocr extra ({why}): {INSTALL}")


def engine() -> Any:
    """The process's OCR engine, built at first use. Only the models shipped in the rapidocr wheel
    are used (its default PP-OCR models: nothing is fetched)."""
    global _engine
    if _engine is None:
        _require()
        with _lock:
            if _engine is None:
                from rapidocr import RapidOCR

                _engine = RapidOCR(params={"Global.log_level": "error"})
    return _engine


def reset() -> None:
    """Forget the engine (tests: the next read builds it again)."""
    global _engine
    with _lock:
        _engine = None


def read(image: Any) -> Read:
    """OCR one page (a PIL image)."""
    eng = engine()
    import numpy as np

    rgb = np.asarray(image.convert("RGB"))
    with _lock:
        out = eng(rgb)
    txts, scores, boxes = out.txts, out.scores, out.boxes
    if not txts or boxes is None:
        return Read("", None, None)
    lines = _lines([(b.tolist(), t, float(s)) for b, t, s in zip(boxes, txts, scores, strict=True)])
    kept = [float(s) for s in scores]
    return Read("\n".join(lines), round(sum(kept) / len(kept), 4), round(min(kept), 4))


def _lines(items: Sequence[tuple[list[list[float]], str, float]]) -> list[str]:
    """Boxes grouped into lines: a box whose vertical centre lies within half a line's height of the
    line's centre joins it; words of a line left to right, lines top to bottom."""
    rows: list[tuple[float, float, list[tuple[float, str]]]] = []  # centre, height, [(x, text)]
    for box, text, _score in sorted(items, key=lambda it: min(p[1] for p in it[0])):
        ys = [p[1] for p in box]
        top, bottom = min(ys), max(ys)
        centre, height = (top + bottom) / 2, max(bottom - top, 1.0)
        x = min(p[0] for p in box)
        for i, (c, h, words) in enumerate(rows):
            if abs(centre - c) <= h / 2:
                words.append((x, text))
                rows[i] = (c, h, words)
                break
        else:
            rows.append((centre, height, [(x, text)]))
    rows.sort(key=lambda r: r[0])
    return [" ".join(t for _, t in sorted(words)) for _, _, words in rows]


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise TooLarge(f"{what} is {width} x {height} pixels, over the {max_pixels:,}-pixel limit"
                       " (a decompression bomb?)", kind="image_too_large")  # fmt: skip


def _check_pages(n: int, max_pages: int, what: str) -> None:
    if n > max_pages:
        raise TooLarge(f"{n} {what}, over the {max_pages}-page limit for rendering",
                       kind="too_many_pages")  # fmt: skip


def pdf_pages(data: bytes, numbers: Sequence[int], *, dpi: int = DPI, max_pages: int = MAX_PAGES,
              max_pixels: int = MAX_PIXELS) -> Iterator[tuple[int, Any]]:  # fmt: skip
    """Render the PDF pages ``numbers`` (1-based) as PIL images at ``dpi``, one at a time: every
    page's size is checked against ``max_pixels`` before it is rendered."""
    _require()
    import pypdfium2 as pdfium

    _check_pages(len(numbers), max_pages, "pages to render")
    scale = dpi / 72
    pdf = pdfium.PdfDocument(data)
    try:
        for n in numbers:
            page = pdf[n - 1]
            try:
                w, h = page.get_size()
                _check_pixels(round(w * scale), round(h * scale), max_pixels, f"page {n} at {dpi} dpi")
                yield n, page.render(scale=scale).to_pil()
            finally:
                page.close()
    finally:
        pdf.close()


def image_frames(data: bytes, *, max_pages: int = MAX_PAGES, max_pixels: int = MAX_PIXELS) -> list[Any]:
    """The frames of an image file (a multi-frame TIFF's pages; one for PNG, JPEG, WebP) as RGB PIL
    images. Raises ``TooLarge`` before decoding a frame over the limits; Pillow's errors for a file
    it cannot read (``UnidentifiedImageError``, ``OSError``, ...) pass through."""
    _require()
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # a warning made an error
        raise TooLarge(f"the image is over Pillow's pixel limit ({exc})", kind="image_too_large") from exc
    n = getattr(im, "n_frames", 1)
    _check_pages(n, max_pages, "frames")
    frames = []
    for i in range(n):
        im.seek(i)
        _check_pixels(im.width, im.height, max_pixels, f"frame {i + 1}" if n > 1 else "the image")
        frames.append(im.convert("RGB"))
    return frames


def png(image: Any) -> bytes:
    """One page as PNG bytes (for vision tiers)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
