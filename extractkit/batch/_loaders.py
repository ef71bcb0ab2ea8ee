"""Walk folders and turn files into text, one at a time (nothing is read ahead of need).

Every way a file can be unusable ends in a ``DocumentError`` with its own ``kind``, so one bad
file never costs the others:

- ``too_large``: over ``max_bytes`` on disk (checked with ``stat`` before anything is read);
  ``text_too_large``: more than ``max_chars`` characters of extracted text (PDF extraction stops
  at the limit, plain text is refused before it is hashed or stored).
- ``special_file``: a FIFO, socket or device given directly. The walk skips these without opening
  them; ``read_bytes`` refuses anything that ``stat`` does not call a regular file before opening.
- ``binary``: a NUL character anywhere in the text (one rule for the whole file).
- ``invalid_utf8`` / ``invalid_utf16`` / ``invalid_utf32``: undecodable text. UTF-16 and UTF-32
  are decoded when a byte-order mark says so; anything else must be UTF-8.
- ``corrupt_pdf``, ``encrypted_pdf`` (a PDF that an empty password does not open), ``no_text``,
  ``empty``, ``unreadable``, ``symlink_loop``, ``missing``; ``unreadable_dir`` for a folder the
  walk could not list.
- Scanned pages and images (``_ocr``, the ``ocr`` extra): a PDF page without a text layer is read
  by OCR (a PDF with none at all stays ``no_text`` without the extra, its message says what to
  install); an image (.png .jpg .jpeg .tif .tiff .webp; a multi-frame TIFF's frames are pages)
  is ``ocr_unavailable`` without it, ``corrupt_image`` when Pillow cannot read it. Before any
  pixel is decoded: ``image_too_large`` (over ``max_pixels``, a decompression bomb) and
  ``too_many_pages`` (over ``max_pages`` pages to render); ``ocr_failed`` if the engine fails.
  ``Document.pages`` says where each page's text came from (text layer, OCR with its score, or
  none); pages are joined with a blank line. Identity: a document read wholly from text keeps
  ``sha256(text)``; one with an OCR'd page, an image file, or loaded with its page images
  (``images=True``) is ``sha256(text + "\\0" + sha256(file bytes))``: the pixels count.

Documents on object storage (``s3://bucket/prefix``, any fsspec URI): ``URI`` roots are walked
and read by ``_sources`` under the same limits and kinds (plus ``missing_bucket`` and
``access_denied``); everything here takes a local ``Path`` or a ``URI`` alike (a ``Source``), and
a ``str`` root that is a URI (``scheme://...``) is one.

Paths: a file name is bytes on POSIX and need not be UTF-8. ``display_path`` is the readable,
lossless text form used in messages, ``--out`` and the ledger's text columns: the name decoded as
UTF-8 with each undecodable byte written ``\\xff``; the exact bytes are ``os.fsencode(path)``
(stored beside it in the ledger's ``document_paths.path_bytes``).
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import hashlib
import html as html_lib
import io
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .._errors import DocumentError, NoDocuments
from .._pages import Page
from . import _ocr, _sources
from ._sources import URI, ListingError, walk_uri

Source = Path | URI  # a local file or folder, or an object or prefix on object storage

TEXT_TYPES = {".txt": "txt", ".md": "md", ".json": "json", ".html": "html", ".htm": "html",
              ".pdf": "pdf", **_ocr.IMAGE_TYPES}  # fmt: skip  # images are read by OCR (the ocr extra)
PAGED_TYPES = ("pdf", "image")  # read page by page, perhaps by OCR: remembered by their file's bytes
PAGE_SEP = "\n\n"  # between pages in ``Document.text``: a blank line, so paragraphs stay
SPECIAL = "special"  # the type ``walk`` yields for a FIFO, socket or device: skipped, never opened
DIR_ERROR = "unreadable_dir"  # the error kind of a folder that could not be listed

MAX_BYTES = 32 * 1024 * 1024  # a file larger than this is refused before it is read
MAX_CHARS = 2_000_000  # extracted text longer than this is refused (~500k tokens, past any context)
MAX_HTML_DEPTH = 512  # deeper element nesting is flattened (Blink's HTML parser caps depth at 512 too)


@dataclass(frozen=True)
class Document:
    path: str  # display_path() of the file
    text: str
    sha256: str  # of the text, UTF-8
    size: int
    type: str
    pages: tuple[Page, ...] = ()  # per page: where its text is in ``text`` and where it came from
    images: tuple[bytes, ...] = ()  # one PNG per page, only when ``load(..., images=True)``
    file_sha256: str | None = None  # of the file's bytes, for a PDF or an image (``source_files``)


def display_path(path: str | os.PathLike[str] | URI) -> str:
    """The readable form of a path: valid UTF-8 as is, any other byte as ``\\xNN``; a URI
    redacted (no password, no presigned signature).

    Always encodable as UTF-8 (SQLite, JSON, the terminal); ``path_bytes(path)`` keeps the
    exact bytes.
    """
    if isinstance(path, URI):
        return path.shown
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_bytes(path: str | os.PathLike[str] | URI) -> bytes:
    """The exact bytes of a local path (``document_paths.path_bytes``); a URI's redacted text."""
    if isinstance(path, URI):
        return path.shown.encode("utf-8", "backslashreplace")
    return os.fsencode(path)


def as_source(path: str | os.PathLike[str] | URI) -> Source:
    """A document root as given: a ``URI`` for ``scheme://...`` (``s3://bucket/prefix``), else a
    ``Path``. A command line's arguments go through this; ``Extractor.extract_many`` takes
    ``URI(...)`` (a plain ``str`` is a text there)."""
    if isinstance(path, URI):
        return path
    if isinstance(path, str) and _sources.is_uri(path):
        return URI(path)
    return Path(path)


def _included(path: Source, include: list[str] | None) -> bool:
    """Glob on the file name, case-insensitively: ``*.pdf`` also matches ``SCAN.PDF``."""
    name = path.name.casefold()
    return not include or any(fnmatch.fnmatchcase(name, pat.casefold()) for pat in include)


def _is_special(path: Path) -> bool:
    """A FIFO, socket or device (following a symlink; a broken link is not special: reading it
    reports it)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _kind(path: Source) -> str | None:
    """A document's type by its name's suffix (None: unsupported); ``SPECIAL`` for a local FIFO,
    socket or device. A URI is typed by its name alone (nothing is asked of the store)."""
    if isinstance(path, URI):
        return TEXT_TYPES.get(path.suffix.lower())
    return SPECIAL if _is_special(path) else TEXT_TYPES.get(path.suffix.lower())


def walk(
    paths: list[str | os.PathLike[str] | URI],
    include: list[str] | None = None,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterator[tuple[Source, str | None]]:
    """Yield (path, type) for every file under ``paths``: a document type, None for unsupported
    files, ``SPECIAL`` for FIFOs, sockets and devices (never opened).

    A URI root (``URI`` or a ``str`` of the form ``scheme://...``) yields ``URI``s: the object it
    names, or every object under it as a prefix (listed lazily, a page at a time, see
    ``_sources``); one that cannot be found or listed (no such bucket, access denied, a missing
    object named directly) is reported like a folder that cannot be listed.

    A folder that cannot be listed is passed to ``on_error`` (``dir_error(exc)`` makes it a
    ``DocumentError``) and the walk goes on; without ``on_error`` its ``DocumentError`` is raised.
    Directories are walked recursively without following directory symlinks (no loops);
    a symlinked *file* is yielded, and reading it reports a loop or a dangling link.
    """

    def report(exc: OSError) -> None:
        if on_error is None:
            raise dir_error(exc) from exc
        on_error(exc)

    for given in paths:
        root = as_source(given)
        if isinstance(root, URI):
            yield from walk_uri(root, include, _kind, report)
        elif root.is_dir():
            yield from _walk_dir(root, include, report)
        elif _included(root, include):
            yield root, _kind(root)


def count_documents(paths: list[str | os.PathLike[str] | URI], include: list[str] | None = None) -> int:
    """How many documents a batch over ``paths`` will extract: files of a supported type, plus
    each folder that cannot be listed (it gets an error line). Cheap: the walk reads directory
    entries only, never a file. Raises ``NoDocuments`` when there is none, with what was found
    instead (files of other types, folders not read), so an empty folder or a glob that matches
    nothing is an error rather than a run of zero documents."""
    documents, unlisted = 0, 0
    other: dict[str, int] = {}  # unsupported or special files, by suffix
    said: list[str] = []  # why URI roots could not be listed (no such bucket, access denied, ...)

    def count_unlisted(exc: OSError) -> None:
        nonlocal unlisted
        unlisted += 1
        if isinstance(exc, ListingError):
            said.append(exc.message)

    for path, doc_type in walk(paths, include, on_error=count_unlisted):
        if doc_type is None or doc_type == SPECIAL:
            suffix = "special file" if doc_type == SPECIAL else (path.suffix.lower() or "no suffix")
            other[suffix] = other.get(suffix, 0) + 1
        else:
            documents += 1
    if documents:
        return documents + unlisted
    where = " ".join(display_path(as_source(p)) for p in paths) if paths else "(no paths given)"
    what = f" --include {' '.join(include)}" if include else ""
    found = []
    if other:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(other.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        supported = " ".join(sorted(set(TEXT_TYPES)))
        found.append(f"{sum(other.values())} file(s) of other types ({kinds}); supported: {supported}")
    if unlisted > len(said):
        found.append(f"{unlisted - len(said)} folder(s) could not be read")
    found.extend(said[:3])
    more = f" ({'; '.join(found)})" if found else ""
    raise NoDocuments(f"no documents matched under {where}{what}{more}",
                      paths=[display_path(as_source(p)) for p in paths])  # fmt: skip


def _walk_dir(
    root: Path, include: list[str] | None, report: Callable[[OSError], None]
) -> Iterator[tuple[Path, str | None]]:
    """``os.walk``'s order (a folder's files sorted, then its subfolders, sorted, depth first),
    typed from the directory entries: no extra ``stat`` per file except for symlinks."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            report(exc)
            continue
        files, folders = [], []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry)
                elif not (entry.is_symlink() and entry.is_dir()):  # linked folders are not followed
                    files.append(entry)
            except OSError:
                files.append(entry)
        for entry in sorted(files, key=lambda e: e.name):
            p = Path(entry.path)
            if _included(p, include):
                yield p, _entry_kind(entry, p)
        stack.extend(Path(e.path) for e in sorted(folders, key=lambda e: e.name, reverse=True))


def _entry_kind(entry: os.DirEntry[str], path: Path) -> str | None:
    try:
        if entry.is_symlink():
            return _kind(path)  # what it points to decides
        if not entry.is_file(follow_symlinks=False):
            return SPECIAL  # neither a file, a folder nor a link: a FIFO, socket or device
    except OSError:
        pass  # reading it will say what is wrong
    return TEXT_TYPES.get(path.suffix.lower())


def dir_error(exc: OSError) -> DocumentError:
    """The error for a folder ``walk`` could not list (or a URI root it could not find)."""
    if isinstance(exc, ListingError):
        return DocumentError(exc.message, path=exc.path, kind=exc.kind)
    p = display_path(exc.filename) if exc.filename is not None else "?"
    reason = exc.strerror or type(exc).__name__
    return DocumentError(f"{p}: folder not read ({reason}); its files were not extracted",
                         path=p, kind=DIR_ERROR)  # fmt: skip


_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32", "invalid_utf32"),
    (codecs.BOM_UTF32_BE, "utf-32", "invalid_utf32"),
    (codecs.BOM_UTF16_LE, "utf-16", "invalid_utf16"),
    (codecs.BOM_UTF16_BE, "utf-16", "invalid_utf16"),
)


def _decode(data: bytes, path: str) -> str:
    """Text from bytes: UTF-16/32 when a byte-order mark says so, else UTF-8 (a UTF-8 mark is
    dropped). One NUL rule for the whole text: any NUL character makes the file binary."""
    encoding, kind = "utf-8-sig", "invalid_utf8"
    for bom, enc, k in _BOMS:
        if data.startswith(bom):
            encoding, kind = enc, k
            break
    else:
        at = data.find(b"\x00")  # before decoding: a binary file fails fast, whatever its size
        if at >= 0:
            raise DocumentError(f"{path}: binary file (NUL byte at offset {at}), not text",
                                path=path, kind="binary")  # fmt: skip
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        name = encoding.removesuffix("-sig").upper()
        raise DocumentError(
            f"{path}: not valid {name} at byte {exc.start} ({exc.reason})", path=path, kind=kind
        ) from exc
    at = text.find("\x00")
    if at >= 0:
        raise DocumentError(f"{path}: binary file (NUL character at position {at}), not text",
                            path=path, kind="binary")  # fmt: skip
    return text


_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^>]*?(/?)>")
# elements that never nest or that HTML closes implicitly: they do not count toward depth
_FLAT = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody",
    "tfoot", "colgroup", "rb", "rt", "rp",
})  # fmt: skip
_DROP_OPEN = re.compile(r"<(script|style|noscript|template)\b", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]*>")


def html_depth_over(html: str, limit: int = MAX_HTML_DEPTH) -> bool:
    """Whether element nesting goes deeper than ``limit`` (a linear scan that stops there)."""
    depth = 0
    for m in _TAG.finditer(html):
        if m.group(2).lower() in _FLAT or m.group(3):
            continue
        if m.group(1):
            depth = max(depth - 1, 0)
        else:
            depth += 1
            if depth > limit:
                return True
    return False


def _drop_code(html: str) -> str:
    """``html`` without script, style, noscript and template elements (linear: each search starts
    where the last one ended; an unclosed one runs to the end)."""
    lower = html.lower()
    parts, pos = [], 0
    while (m := _DROP_OPEN.search(html, pos)) is not None:
        parts.append(html[pos : m.start()])
        end = lower.find(f"</{m.group(1).lower()}", m.end())
        if end < 0:
            return "".join(parts)
        close = lower.find(">", end)
        pos = len(html) if close < 0 else close + 1
    parts.append(html[pos:])
    return "".join(parts)


def _html_text(html: str) -> str:
    if html_depth_over(html):
        # the HTML parser is quadratic in nesting depth (2.2 MB of nested <div>: 92 s); past the
        # depth no real page reaches, take the text between the tags instead (linear)
        text = _ANY_TAG.sub("\n", _drop_code(html))
        return "\n".join(line for line in html_lib.unescape(text).splitlines() if line.strip())

    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(html)
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    root = tree.body or tree.root
    return root.text(separator="\n") if root is not None else ""


def _pdf_text(data: bytes, path: str, max_chars: int) -> list[str]:
    """The text layer of each page (an empty string for a page without one)."""
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many PDFs are encrypted with an empty user password
            except DependencyError as exc:
                raise DocumentError(
                    f"{path}: encrypted PDF; decrypting it needs the cryptography package ({exc})",
                    path=path, kind="encrypted_pdf",
                ) from exc  # fmt: skip
            if not opened:
                raise DocumentError(f"{path}: encrypted PDF (password protected); decrypt it first",
                                    path=path, kind="encrypted_pdf")  # fmt: skip
        pages: list[str] = []
        n = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            n += len(pages[-1]) + 1
            if n > max_chars:  # stop extracting: the document is refused anyway
                _too_many_chars(path, n, max_chars, at_least=True)
    except DocumentError:
        raise
    except FileNotDecryptedError as exc:
        raise DocumentError(f"{path}: encrypted PDF ({exc})", path=path, kind="encrypted_pdf") from exc
    except Exception as exc:  # pypdf raises many kinds on broken files
        raise DocumentError(
            f"{path}: corrupt or unreadable PDF ({type(exc).__name__}: {exc})",
            path=path, kind="corrupt_pdf",
        ) from exc  # fmt: skip
    return pages


def _too_many_chars(path: str, n: int, max_chars: int, *, at_least: bool = False) -> None:
    more = "at least " if at_least else ""
    raise DocumentError(
        f"{path}: {more}{n} characters of text, over the {max_chars}-character limit"
        " ([batch] max_chars)", path=path, kind="text_too_large",
    )  # fmt: skip


def read_bytes(path: Source, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes, refusing special files (never waiting on one) and files over
    ``max_bytes`` (checked before reading). A ``URI`` is read by ``_sources.read_bytes``: the same
    limit, checked on its size before a byte is read, and a bounded read."""
    if isinstance(path, URI):
        return _sources.read_bytes(path, max_bytes)
    p = display_path(path)
    try:
        before = path.stat()
        if not stat.S_ISREG(before.st_mode):
            raise DocumentError(f"{p}: not a regular file (FIFO, socket or device)", path=p,
                                kind="special_file")  # fmt: skip
        if before.st_size > max_bytes:
            raise DocumentError(
                f"{p}: {before.st_size} bytes, over the {max_bytes}-byte limit ([batch] max_bytes)",
                path=p, kind="too_large",
            )  # fmt: skip
        data = path.read_bytes()  # a regular file: reading it cannot wait on a writer
        if len(data) > max_bytes:  # it grew since the stat
            raise DocumentError(f"{p}: over the {max_bytes}-byte limit ([batch] max_bytes)",
                                path=p, kind="too_large")  # fmt: skip
        return data
    except PermissionError as exc:
        raise DocumentError(f"{p}: permission denied", path=p, kind="unreadable") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocumentError(f"{p}: symlink loop", path=p, kind="symlink_loop") from exc
        if exc.errno == errno.ENOENT:
            raise DocumentError(f"{p}: missing (dangling link?)", path=p, kind="missing") from exc
        raise DocumentError(f"{p}: cannot read: {exc.strerror}", path=p,
                            kind="unreadable") from exc  # fmt: skip


def _joined(parts: list[tuple[str, str, float | None]]) -> tuple[str, tuple[Page, ...]]:
    """Pages' texts (text, source, confidence) joined with ``PAGE_SEP``, and where each one is.
    A page without text is an empty span where it would be (``source`` "none")."""
    out: list[str] = []
    pages: list[Page] = []
    at = 0
    for number, (text, source, confidence) in enumerate(parts, start=1):
        text = text.strip()
        if not text:
            pages.append(Page(number, at, at, "none"))
            continue
        if out:
            out.append(PAGE_SEP)
            at += len(PAGE_SEP)
        out.append(text)
        pages.append(Page(number, at, at + len(text), source, confidence))
        at += len(text)
    return "".join(out), tuple(pages)


def _pdf_document(data: bytes, p: str, max_chars: int, images: bool, limits: dict[str, int]
                  ) -> tuple[str, tuple[Page, ...], tuple[bytes, ...]]:  # fmt: skip
    """A PDF's text, pages and (``images``) page PNGs: the text layer where a page has one, OCR
    where it has none (when the ocr extra is installed)."""
    texts = _pdf_text(data, p, max_chars)
    blank = [n for n, t in enumerate(texts, start=1) if not t.strip()]
    parts: list[tuple[str, str, float | None]] = [(t, "text", None) for t in texts]
    pngs: list[bytes] = []
    if not blank and not images:
        return (*_joined(parts), ())
    why = _ocr.available()
    if why is not None:
        if images:
            raise DocumentError(f"{p}: page images need the ocr extra ({why}): {_ocr.INSTALL}",
                                path=p, kind="ocr_unavailable")  # fmt: skip
        if len(blank) == len(texts):
            raise DocumentError(f"{p}: PDF has no text layer (scanned image?); reading it by OCR needs "
                                f"the ocr extra: {_ocr.INSTALL}", path=p, kind="no_text")  # fmt: skip
        logging.getLogger("extractkit").warning(
            "%s: pages %s have no text layer and were not read (%s: %s)", p, blank, why, _ocr.INSTALL)
        return (*_joined(parts), ())
    wanted = list(range(1, len(texts) + 1)) if images else blank
    try:
        for n, image in _ocr.pdf_pages(data, wanted, **limits):
            if images:
                pngs.append(_ocr.png(image))
            if n in blank:
                got = _ocr.read(image)
                parts[n - 1] = (got.text, "ocr", got.confidence)
    except _ocr.TooLarge as exc:
        raise DocumentError(f"{p}: {exc}", path=p, kind=exc.kind) from exc
    except DocumentError:
        raise
    except Exception as exc:  # pypdfium2 or the OCR engine on a page pypdf could read
        raise DocumentError(f"{p}: pages could not be rendered or read by OCR ({type(exc).__name__}: "
                            f"{exc})", path=p, kind="ocr_failed") from exc  # fmt: skip
    return (*_joined(parts), tuple(pngs))


def _image_document(data: bytes, p: str, images: bool, limits: dict[str, int]
                    ) -> tuple[str, tuple[Page, ...], tuple[bytes, ...]]:  # fmt: skip
    """An image file's frames read by OCR: each frame a page."""
    why = _ocr.available()
    if why is not None:
        raise DocumentError(f"{p}: an image; reading it needs OCR, the ocr extra ({why}): {_ocr.INSTALL}",
                            path=p, kind="ocr_unavailable")  # fmt: skip
    limits = {k: v for k, v in limits.items() if k != "dpi"}
    try:
        frames = _ocr.image_frames(data, **limits)
    except _ocr.TooLarge as exc:
        raise DocumentError(f"{p}: {exc}", path=p, kind=exc.kind) from exc
    except Exception as exc:  # Pillow raises many kinds on broken files
        raise DocumentError(f"{p}: {_not_an_image(data, exc)}", path=p, kind="corrupt_image") from exc
    parts: list[tuple[str, str, float | None]] = []
    try:
        for frame in frames:
            got = _ocr.read(frame)
            parts.append((got.text, "ocr", got.confidence))
    except Exception as exc:
        raise DocumentError(f"{p}: OCR failed ({type(exc).__name__}: {exc})", path=p,
                            kind="ocr_failed") from exc  # fmt: skip
    pngs = tuple(_ocr.png(f) for f in frames) if images else ()
    return (*_joined(parts), pngs)


def _not_an_image(data: bytes, exc: Exception) -> str:
    """Why Pillow could not read an image, without the object reprs (memory addresses) Pillow puts
    in its messages: "not an image (it looks like text)" for a text file with an image's name."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        head = data[:4096]
        try:
            head.decode("utf-8")
            looks_text = b"\x00" not in head
        except UnicodeDecodeError as err:
            looks_text = b"\x00" not in head and err.start >= len(head) - 3  # a character cut at 4096
        return "not an image (it looks like text)" if looks_text else "not an image (an unknown format)"
    detail = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))
    return f"corrupt or unreadable image ({type(exc).__name__}: {detail})"


def load(
    path: Source,
    doc_type: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_chars: int = MAX_CHARS,
    images: bool = False,
    max_pages: int = _ocr.MAX_PAGES,
    max_pixels: int = _ocr.MAX_PIXELS,
    dpi: int = _ocr.DPI,
) -> Document:
    """Read one file into text, or raise DocumentError saying exactly what is wrong with it.

    Bounded: nothing over ``max_bytes`` is read, no text over ``max_chars`` is kept, no page over
    ``max_pixels`` (at ``dpi`` for a PDF page) and no more than ``max_pages`` pages are rendered.
    PDF pages without a text layer and images are read by OCR (the ``ocr`` extra; CPU-heavy: call
    this in a worker thread, as the batch runner does). ``images``: also return each page as a
    PNG in ``Document.images`` (for vision tiers)."""
    p = display_path(path)
    data = read_bytes(path, max_bytes)
    if not data.strip():
        raise DocumentError(f"{p}: empty file", path=p, kind="empty")
    pages: tuple[Page, ...] = ()
    pngs: tuple[bytes, ...] = ()
    limits = {"max_pages": max_pages, "max_pixels": max_pixels, "dpi": dpi}
    if doc_type == "pdf":
        text, pages, pngs = _pdf_document(data, p, max_chars, images, limits)
        if not text and not pngs:
            how = "and OCR read nothing on its pages" if any(pg.source == "none" for pg in pages) else ""
            raise DocumentError(f"{p}: PDF has no text layer (scanned image?) {how}".rstrip(),
                                path=p, kind="no_text")  # fmt: skip
    elif doc_type == "image":
        text, pages, pngs = _image_document(data, p, images, limits)
        if not text and not pngs:
            raise DocumentError(f"{p}: OCR read no text in the image", path=p, kind="no_text")
    else:
        text = _decode(data, p)
        if doc_type == "html":
            text = _html_text(text)
    text = text.strip()
    if not text and not pngs:  # with page images asked for and made, a vision tier reads the pixels
        raise DocumentError(f"{p}: no text", path=p, kind="no_text")
    if len(text) > max_chars:
        _too_many_chars(p, len(text), max_chars)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if doc_type == "image" or pngs or any(pg.source == "ocr" for pg in pages):
        # what the model is given depends on the pixels too, not only on the text read from them
        sha = hashlib.sha256(f"{text}\0{hashlib.sha256(data).hexdigest()}".encode()).hexdigest()
    file_sha = hashlib.sha256(data).hexdigest() if doc_type in PAGED_TYPES else None
    return Document(path=p, text=text, sha256=sha, size=len(data), type=doc_type, pages=pages, images=pngs,
                    file_sha256=file_sha)  # fmt: skip


def file_sha256(path: Source, max_bytes: int = MAX_BYTES) -> str | None:
    """The sha256 of a file's bytes (None when it cannot be read: ``load`` will say why). Cheap
    beside OCR: a rerun looks a scan's result up by it before reading its pages again."""
    try:
        return hashlib.sha256(read_bytes(path, max_bytes)).hexdigest()
    except DocumentError:
        return None
