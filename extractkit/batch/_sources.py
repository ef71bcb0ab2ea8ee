"""Documents on object storage: ``s3://bucket/prefix`` and whatever else fsspec reaches.

A ``URI`` names one object or a prefix (read like a folder: every object under ``prefix/``, in key
order). It is read through fsspec (s3fs for ``s3://``, the ``s3`` extra; gcsfs for ``gs://``, adlfs
for ``az://``; ``http(s)://`` and ``file://`` come with fsspec) under the same rules as a local file
(``_loaders``): an object over ``max_bytes`` is refused from its listed size without a byte of it
read, and the read itself is bounded (``max_bytes + 1`` bytes at most: one ranged GET on S3), so an
object that grew since it was listed is refused too. Every way an object can be unusable is a
``DocumentError`` of its own kind, and one bad object never costs the others:

- ``missing``: no such object; ``missing_bucket``: the bucket does not exist;
- ``access_denied``: the credentials may not read it (or list the prefix);
- ``unreadable``: anything else the store answered (a network error after its retries).

A root that cannot be listed is reported like a folder that cannot be read (``on_error``); a
prefix holding nothing is no documents (``NoDocuments`` when nothing else was given).

Listing is lazy and bounded: S3 prefixes are listed a page (1,000 keys) at a time, the next page
fetched while this one is consumed; other stores a folder at a time (``fs.walk``).

Credentials never travel in a URI: they come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an
S3-compatible store), the store's own config files, or fsspec's config (``fsspec.config.conf``,
``FSSPEC_S3_*`` variables). A URI is stored and shown redacted (``_redact.redact_uri``: a password
or a presigned signature is never written), and its text is its document's path, never its
identity (the identity is its text's sha256, as for a local file).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .._errors import DocumentError, MissingDependencyError
from .._redact import redact_uri, register_env

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:// is a drive
PAGE = 1000  # keys taken from a listing at a time (S3 returns 1,000 per request)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN",
               "AZURE_STORAGE_CONNECTION_STRING")  # fmt: skip


def is_uri(text: str) -> bool:
    """Whether ``text`` is a URI (``scheme://...``) rather than a local path."""
    return _SCHEME.match(text) is not None


def scheme_of(uri: str) -> str:
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


@dataclass(frozen=True)
class URI:
    """A document, or a prefix of documents, on object storage: ``URI("s3://bucket/invoices/")``.

    Give it wherever documents are accepted: ``Extractor.extract_many([URI(...)])`` (a plain
    ``str`` is always a text there), ``extract_file``, ``BatchRunner.run``, ``count_documents``.
    ``str()`` and ``repr()`` show it redacted. ``size``: its size in bytes when a listing gave it
    (then the size limit is checked without asking the store again)."""

    uri: str
    size: int | None = field(default=None, compare=False)
    # the URI this object was listed under: its filesystem (and options) are that one's
    root: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not is_uri(self.uri):
            raise ValueError(f"not a URI (scheme://...): {self.uri!r}")

    @property
    def shown(self) -> str:
        """The readable, storable form: without a password or a presigned signature."""
        return redact_uri(self.uri)

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"URI({self.shown!r})"

    @property
    def name(self) -> str:
        rest = self.uri[len(scheme_of(self.uri)) + 3 :]
        if scheme_of(self.uri) in ("http", "https"):
            rest = re.split(r"[?#]", rest, maxsplit=1)[0]
        return rest.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        dot = name.rfind(".")
        return name[dot:] if dot > 0 else ""


_OPTIONS: dict[str, dict[str, Any]] = {}  # fsspec options per protocol (set_storage_options)


def set_storage_options(options: Mapping[str, Mapping[str, Any]]) -> None:
    """fsspec options per protocol for every URI read from now on in this process, e.g.
    ``{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}`` (the CLI passes the config's
    ``[documents] storage_options``). Replaces what was set before; ``{}`` clears it."""
    _OPTIONS.clear()
    _OPTIONS.update({p.lower(): dict(o) for p, o in options.items()})


def filesystem(uri: URI) -> tuple[Any, str]:
    """The fsspec filesystem that reads ``uri`` (cached by fsspec) and the path inside it.
    ``MissingDependencyError`` (exit 2) names what to install when the store's package is not."""
    base = uri.root or uri.uri
    scheme = scheme_of(base)
    if scheme not in ("http", "https") and re.match(r"^[^/@]+:[^/@]*@", base[len(scheme) + 3 :]):
        raise DocumentError(
            f"{uri.shown}: credentials in a {scheme}:// URI are not used (nor stored): set them in the"
            " environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for s3://) or the store's config",
            path=uri.shown, kind="credentials_in_uri",
        )  # fmt: skip
    for name in _SECRET_ENV:  # never echoed: an error message quoting one is redacted
        register_env(name)
    try:
        from fsspec.core import url_to_fs

        options = _OPTIONS.get(scheme, {})
        if uri.root is None:
            return url_to_fs(uri.uri, **options)  # type: ignore[no-any-return]
        fs = url_to_fs(uri.root, **options)[0]
        return fs, fs._strip_protocol(uri.uri)
    except ImportError as exc:
        raise MissingDependencyError(_install_hint(scheme, exc)) from None
    except ValueError as exc:
        if "protocol not known" in str(exc).lower():
            raise MissingDependencyError(f"{uri.shown}: no filesystem for {scheme}:// is installed ({exc}); "
                                         "fsspec lists the packages that add one") from None  # fmt: skip
        raise


def _install_hint(scheme: str, exc: ImportError) -> str:
    if scheme in ("s3", "s3a"):
        return f"reading s3:// documents needs s3fs: pip install 'extractkit[s3]' ({exc.msg or exc})"
    package = {"gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
               "http": "aiohttp", "https": "aiohttp"}.get(scheme, "")  # fmt: skip
    return (f"reading {scheme}:// documents needs fsspec {package}: pip install fsspec {package}"
            f" ({exc.msg or exc})")  # fmt: skip


class ListingError(OSError):
    """A root that could not be listed or found, with the ``DocumentError`` kind and message its
    line gets (``_loaders.dir_error`` turns it into one)."""

    def __init__(self, message: str, *, path: str, kind: str):
        super().__init__(message)
        self.message, self.path, self.kind = message, path, kind
        self.filename = path


def _code(exc: BaseException) -> str:
    """The store's error code (S3: ``NoSuchBucket``, ``AccessDenied``, ...) behind an fsspec error."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def _bucket(fs: Any, path: str) -> str:
    return path.split("/", 1)[0] if "s3" in _protocols(fs) else ""


def _protocols(fs: Any) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _bucket_missing(fs: Any, path: str, exc: BaseException) -> bool:
    if _code(exc) == "NoSuchBucket" or "bucket does not exist" in str(exc):
        return True
    bucket = _bucket(fs, path)
    if not bucket:
        return False
    try:
        fs.info(bucket)
    except FileNotFoundError:
        return True
    except Exception:
        return False
    return False


def object_error(
    fs: Any, path: str, shown: str, exc: BaseException, *, what: str = "object"
) -> DocumentError:
    """The ``DocumentError`` for an fsspec error reading (or finding) ``path``."""
    if isinstance(exc, DocumentError):
        return exc
    if isinstance(exc, FileNotFoundError):
        if _bucket_missing(fs, path, exc):
            return DocumentError(f"{shown}: bucket {_bucket(fs, path)!r} does not exist", path=shown,
                                 kind="missing_bucket")  # fmt: skip
        return DocumentError(f"{shown}: no such {what}", path=shown, kind="missing")
    if isinstance(exc, PermissionError) or _code(exc) in ("AccessDenied", "403", "Forbidden"):
        return DocumentError(
            f"{shown}: access denied ({exc}); check the credentials in the environment (AWS_* for s3://)"
            " or the store's config", path=shown, kind="access_denied",
        )  # fmt: skip
    if isinstance(exc, IsADirectoryError):
        return DocumentError(f"{shown}: a folder, not a document", path=shown, kind="unsupported")
    return DocumentError(f"{shown}: cannot read: {type(exc).__name__}: {exc}", path=shown, kind="unreadable")


def read_bytes(uri: URI, max_bytes: int) -> bytes:
    """The object's bytes, refusing one over ``max_bytes`` from its (listed) size before reading,
    and reading at most ``max_bytes + 1`` bytes (an object that grew since is refused too)."""
    shown = uri.shown
    fs, path = filesystem(uri)
    try:
        size = uri.size
        if size is None:
            info = fs.info(path)
            if info.get("type") not in ("file", None):
                if info.get("type") == "directory":
                    raise IsADirectoryError(path)
                raise DocumentError(f"{shown}: not a regular file (FIFO, socket or device)", path=shown,
                                    kind="special_file")  # fmt: skip
            size = info.get("size")
        if size is not None and size > max_bytes:
            raise DocumentError(f"{shown}: {size} bytes, over the {max_bytes}-byte limit ([batch] max_bytes)",
                                path=shown, kind="too_large")  # fmt: skip
        if size == 0:
            data = b""  # a ranged read of an empty object is refused (416): nothing to ask for
        elif "s3" in _protocols(fs):
            data = fs.cat_file(path, start=0, end=max_bytes + 1)  # one ranged GET, bounded
        else:
            data = _read_at_most(fs, path, max_bytes + 1)
    except Exception as exc:
        raise object_error(fs, path, shown, exc) from exc
    if len(data) > max_bytes:
        raise DocumentError(f"{shown}: over the {max_bytes}-byte limit ([batch] max_bytes)", path=shown,
                            kind="too_large")  # fmt: skip
    return bytes(data)


def _read_at_most(fs: Any, path: str, n: int) -> bytes:
    """Up to ``n`` bytes from the start of ``path``, streamed: a stream may return less than asked
    for at each read (HTTP without a length), so it is read until its end or ``n`` bytes."""
    parts, got = [], 0
    with fs.open(path, "rb") as f:
        while got < n:
            part = f.read(n - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
    return b"".join(parts)


def _included(name: str, include: list[str] | None) -> bool:
    import fnmatch

    name = name.casefold()
    return not include or any(fnmatch.fnmatchcase(name, pat.casefold()) for pat in include)


def walk_uri(
    root: URI,
    include: list[str] | None,
    kind_of: Callable[[URI], str | None],
    report: Callable[[OSError], None],
) -> Iterator[tuple[URI, str | None]]:
    """Every object under ``root`` (or ``root`` itself when it names an object) with its type
    (``kind_of``; ``SPECIAL`` for what a listing calls neither a file nor a folder). A root that
    cannot be found or listed goes to ``report`` as a ``ListingError``; a prefix with nothing under
    it yields nothing."""
    shown = root.shown
    try:
        fs, path = filesystem(root)
    except DocumentError as exc:  # credentials in the URI: this root is refused, the others go on
        report(ListingError(str(exc), path=shown, kind=exc.kind))
        return
    info: dict[str, Any] = {"type": "directory"}  # a URI ending in "/" is a prefix: listed, no HEAD
    if not root.uri.endswith("/"):
        try:
            info = fs.info(path)
        except FileNotFoundError as exc:
            if _bucket_missing(fs, path, exc) or kind_of(root) is not None:  # a document's name: missing
                err = object_error(fs, path, shown, exc)
                report(ListingError(str(err), path=shown, kind=err.kind))
            return  # an empty prefix: nothing to extract
        except Exception as exc:
            # S3 answers 403 to a HEAD of a key the credentials may not read, even when there is no
            # such object and the name is a prefix they may list: a name without a document's
            # suffix is tried as a prefix
            if not (isinstance(exc, PermissionError) and kind_of(root) is None):
                err = object_error(fs, path, shown, exc, what="object or prefix")
                report(ListingError(str(err), path=shown, kind=err.kind))
                return
    if info.get("type") != "directory":
        if _included(root.name, include):
            found = URI(root.uri, size=info.get("size"), root=root.root)
            yield found, (kind_of(found) if info.get("type") in ("file", None) else _special())
        return
    try:
        if "s3" in _protocols(fs):
            yield from _walk_s3(fs, path, root, include, kind_of)
        else:
            yield from _walk_fs(fs, path, root, include, kind_of, report)
    except Exception as exc:  # a page failed (access denied, the store went away): report the root
        err = object_error(fs, path, shown, exc, what="prefix")
        stopped = "" if err.kind == "missing_bucket" else " (listing stopped)"
        report(ListingError(f"{err}{stopped}", path=shown, kind=err.kind))


def _special() -> str:
    from ._loaders import SPECIAL

    return SPECIAL


def _child(root: URI, fs: Any, name: str, size: int | None) -> URI:
    return URI(fs.unstrip_protocol(name), size=size, root=root.root or root.uri)


def _walk_s3(
    fs: Any, path: str, root: URI, include: list[str] | None, kind_of: Callable[[URI], str | None]
) -> Iterator[tuple[URI, str | None]]:
    """Every object under ``path/``, in key order, a page at a time: the next page is being fetched
    (on fsspec's own event loop) while this one is consumed, and no more than two are held."""
    bucket, _, key = path.partition("/")
    prefix = f"{key.rstrip('/')}/" if key else ""
    listing = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def take() -> list[dict[str, Any]]:
        page: list[dict[str, Any]] = []
        async for entry in listing:
            page.append(entry)
            if len(page) >= PAGE:
                break
        return page

    def ahead() -> Future[list[dict[str, Any]]]:
        return asyncio.run_coroutine_threadsafe(take(), fs.loop)

    pending: Future[list[dict[str, Any]]] | None = ahead()
    try:
        while pending is not None:
            page = pending.result()
            pending = ahead() if len(page) >= PAGE else None
            for entry in page:
                name = entry["name"]
                if name.endswith("/"):  # a "folder" marker object, not a document
                    continue
                child = _child(root, fs, name, entry.get("size"))
                if _included(child.name, include):
                    yield child, kind_of(child)
    finally:  # the consumer stopped early (or a page failed): close the listing once it is idle

        def close(_done: object = None) -> None:
            asyncio.run_coroutine_threadsafe(listing.aclose(), fs.loop)

        if pending is None or pending.done():
            close()
        else:
            pending.add_done_callback(close)  # a page being fetched: close it after (one request)


def _walk_fs(
    fs: Any, path: str, root: URI, include: list[str] | None, kind_of: Callable[[URI], str | None],
    report: Callable[[OSError], None],
) -> Iterator[tuple[URI, str | None]]:
    """Any other fsspec store: a folder at a time (files sorted, then its folders, sorted, depth
    first, as the local walk goes); a folder that cannot be listed is reported, the rest go on."""
    stack = [path]
    while stack:
        folder = stack.pop()
        try:
            entries = fs.ls(folder, detail=True)
        except Exception as exc:
            shown = redact_uri(fs.unstrip_protocol(folder))
            err = object_error(fs, folder, shown, exc, what="folder")
            report(ListingError(str(err), path=shown, kind=err.kind))
            continue
        folders = []
        for entry in sorted(entries, key=lambda e: e["name"]):
            name = entry["name"].rstrip("/")
            if entry.get("type") == "directory":
                if name != folder.rstrip("/"):
                    folders.append(name)
                continue
            child = _child(root, fs, name, entry.get("size"))
            if _included(child.name, include):
                yield child, (kind_of(child) if entry.get("type") == "file" else _special())
        stack.extend(reversed(folders))
