"""Walk folders and turn files into text, one at a time (nothing is read ahead of need)."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._errors import DocumentError

TEXT_TYPES = {".txt": "txt", ".md": "md", ".json": "json", ".html": "html", ".htm": "html",
              ".pdf": "pdf"}  # fmt: skip
MAX_BYTES = 50 * 1024 * 1024  # a document larger than this is refused, not read


@dataclass(frozen=True)
class Document:
    path: str
    text: str
    sha256: str  # of the text, UTF-8
    size: int
    type: str


def _included(path: Path, include: list[str] | None) -> bool:
    return not include or any(fnmatch.fnmatch(path.name, pat) for pat in include)


def walk(paths: list[str | Path], include: list[str] | None = None) -> Iterator[tuple[Path, str | None]]:
    """Yield (file, type) for every file under ``paths``; type None for unsupported files.

    Directories are walked recursively without following directory symlinks (no loops);
    a symlinked *file* is yielded, and reading it reports a loop or a dangling link.
    """
    for root in paths:
        root = Path(root)
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if _included(p, include):
                        yield p, TEXT_TYPES.get(p.suffix.lower())
        elif _included(root, include):
            yield root, TEXT_TYPES.get(root.suffix.lower())


def _decode(data: bytes, path: str) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentError(f"{path}: binary file (NUL bytes), not text", path=path, kind="binary")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{path}: not valid UTF-8 at byte {exc.start} ({exc.reason})",
            path=path, kind="invalid_utf8",
        ) from exc  # fmt: skip


def _html_text(html: str) -> str:
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(html)
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    root = tree.body or tree.root
    return root.text(separator="\n") if root is not None else ""


def _pdf_text(data: bytes, path: str) -> str:
    import pypdf

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds on broken files
        raise DocumentError(
            f"{path}: corrupt or unreadable PDF ({type(exc).__name__}: {exc})",
            path=path, kind="corrupt_pdf",
        ) from exc  # fmt: skip
    return "\n".join(pages)


def read_bytes(path: Path) -> bytes:
    p = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DocumentError(f"{p}: {size} bytes, over the {MAX_BYTES}-byte limit",
                                path=p, kind="too_large")  # fmt: skip
        return path.read_bytes()
    except PermissionError as exc:
        raise DocumentError(f"{p}: permission denied", path=p, kind="unreadable") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocumentError(f"{p}: symlink loop", path=p, kind="symlink_loop") from exc
        if exc.errno == errno.ENOENT:
            raise DocumentError(f"{p}: missing (dangling link?)", path=p, kind="missing") from exc
        raise DocumentError(f"{p}: cannot read: {exc.strerror}", path=p,
                            kind="unreadable") from exc  # fmt: skip


def load(path: Path, doc_type: str) -> Document:
    """Read one file into text, or raise DocumentError saying exactly what is wrong with it."""
    p = str(path)
    data = read_bytes(path)
    if not data.strip():
        raise DocumentError(f"{p}: empty file", path=p, kind="empty")
    if doc_type == "pdf":
        text = _pdf_text(data, p)
        if not text.strip():
            raise DocumentError(
                f"{p}: PDF has no text layer (scanned image?); OCR it first",
                path=p, kind="no_text",
            )  # fmt: skip
    else:
        text = _decode(data, p)
        if doc_type == "html":
            text = _html_text(text)
    text = text.strip()
    if not text:
        raise DocumentError(f"{p}: no text", path=p, kind="no_text")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Document(path=p, text=text, sha256=sha, size=len(data), type=doc_type)
