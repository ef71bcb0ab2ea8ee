"""The one redaction boundary: API keys and bearer tokens never leave the process.

A provider can echo the key it was sent (a 401 body, a refusal, a tool argument, even ``model``
or ``system_fingerprint``). Every string extractkit stores, prints or writes passes ``redact``:

- the ledger: every parameter of every statement (``ledger._ledger.RedactingConnection``), so
  every text column of every table is covered, whoever writes it;
- library results: each ``Attempt`` as it is recorded (``_llm.TierCall._record``), so
  ``Result.error`` and ``Result.attempts`` handed to the application are clean;
- output: the report / eval data before any format renders it, the files the CLI writes
  (``--out``, fine-tune export, harvested examples), the CLI's consoles and its log records.

What is redacted: every value registered with ``register`` (a tier's API key when it is resolved,
``$OPENAI_API_KEY``, the variable a tier names in ``api_key_env``, the store credentials in the
environment when a document URI is read), whatever its shape, and anything that looks like a key
or a token (``sk-...``, ``Bearer ...``), registered or not, and the credentials a URL can carry:
a password (``scheme://user:password@host``; one in the query, ``?password=...``, becomes ``***``
as the ledger's printed name has it) and a presigned URL's signature, credential and token
parameters (``X-Amz-Signature=...``, ``sig=...``). ``redact_uri`` is the form a document
URI is stored and shown in.
Values shorter than ``MIN_SECRET_CHARS`` are not registered: redacting them would eat ordinary
words (the local server's placeholder key is ``"local"``). A key cut short by a length limit
before it reaches here (a 200-character Pydantic input repr) is left as the fragment it is.

The hot path is a few substring tests: the regular expression runs only over strings that
contain a registered value, ``sk-`` or ``bearer`` (any case).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

REDACTED = "[REDACTED]"  # not rich markup (tags start lower-case), not a JSON escape
MIN_SECRET_CHARS = 8
# sk-...: after anything but a letter or digit ("fp_sk-..." is a key, "task-manager" is not)
PATTERN_SOURCE = r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*]{6,}|\b(?i:bearer)\s+[A-Za-z0-9_\-.~+/=]{8,}"
_PATTERN = re.compile(PATTERN_SOURCE)
# in a URL: the password of its user info, and the query parameters that sign or authorise it
# (S3 / GCS presigned URLs, Azure SAS tokens)
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@?#]*):(?!\*+@)[^/\s@?#]+@")  # "user:***@" is masked already
_URL_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
    r"|signature|sig|awsaccesskeyid|token|access_token|sas|secret|api_key|apikey|key)=)[A-Za-z0-9%._~+/=-]+"
)
# a password in the query (``postgresql://u@h/db?password=...``) is masked as the ledger's name
# masks one in the user info (``ledger._pg.mask``): ``***``, one style for a URL's password
URL_PASSWORD_MASK = "***"
_URL_PASSWORD_PARAM = re.compile(
    r"(?i)([?&](?:password|passwd|pwd)=)(?!\*\*\*(?:[&#\s]|:\s|$))[^&#\s]+?(?=[&#\s]|:\s|:$|$)"
)  # up to the URL's end: "...?password=pw: reason" keeps its ": " (a URL never holds a bare space)
_NOT_SECRETS = frozenset({"local", "unused", "EMPTY", "none", "dummy"})

_lock = threading.Lock()
_known: tuple[str, ...] = ()  # longest first, so a key that contains another is removed whole


def register(value: str | None) -> None:
    """A value (an API key) that must never be stored, printed or written."""
    global _known
    if not value or len(value) < MIN_SECRET_CHARS or value in _NOT_SECRETS or value in _known:
        return
    with _lock:
        if value not in _known:
            _known = tuple(sorted({*_known, value}, key=len, reverse=True))


def register_env(name: str | None) -> None:
    """The current value of environment variable ``name`` (if set), as ``register``."""
    if name:
        register(os.environ.get(name))


def registered() -> tuple[str, ...]:
    return _known


def _suspect(text: str) -> bool:
    if "sk-" in text or "earer" in text or "EARER" in text or "://" in text:
        return True
    return any(k in text for k in _known)


def redact(text: str) -> str:
    """``text`` with every registered secret and every key-like token replaced by ``[REDACTED]``."""
    if len(text) < MIN_SECRET_CHARS or not _suspect(text):
        return text
    for k in _known:
        if k in text:
            text = text.replace(k, REDACTED)
    if "://" in text:
        text = _url_secrets(text)
    return _PATTERN.sub(REDACTED, text)


def _url_secrets(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    if "=" not in text:
        return text
    text = _URL_PASSWORD_PARAM.sub(rf"\1{URL_PASSWORD_MASK}", text)
    return _URL_SECRET_PARAM.sub(rf"\1{REDACTED}", text)


def redact_uri(uri: str) -> str:
    """A document URI as it is stored and shown: no password (``s3://user:[REDACTED]@...``), no
    presigned signature or token (``...?X-Amz-Signature=[REDACTED]``), no registered secret."""
    return redact(uri)


def redact_opt(text: str | None) -> str | None:
    return None if text is None else redact(text)


def redact_json(obj: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings) with every string redacted,
    keys included. Other values are returned as they are."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_json(k): redact_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_json(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_json(v) for v in obj)
    return obj


_ATTEMPT_TEXT = ("error", "output", "served_model", "fingerprint")


def attempt_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """An Attempt's text fields (and Pydantic's error list), redacted in place; returns them."""
    for name in _ATTEMPT_TEXT:
        value = fields.get(name)
        if type(value) is str:
            fields[name] = redact(value)
    if fields.get("errors"):
        fields["errors"] = redact_json(fields["errors"])
    return fields


def redact_param(value: Any) -> Any:
    """One SQL parameter: strings redacted, anything else as it is."""
    return redact(value) if type(value) is str else value


class RedactingFilter(logging.Filter):
    """Rewrites a log record's message, arguments and exception text through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)  # handlers use it instead of exc_info
        return True


register_env("OPENAI_API_KEY")
logging.getLogger("extractkit").addFilter(RedactingFilter())
