"""Document URIs are stored and shown redacted (issue 17, item 3): the one boundary, _redact.py."""

from __future__ import annotations

import pytest

from extractkit._redact import redact, redact_uri
from extractkit.batch import URI, display_path, path_bytes

CASES = [
    ("s3://bucket/invoices/a.pdf", "s3://bucket/invoices/a.pdf"),
    ("s3://AKIAX:very-secret-key@bucket/a.pdf", "s3://AKIAX:[REDACTED]@bucket/a.pdf"),
    ("https://user:pa55word@files.example.com/a.pdf", "https://user:[REDACTED]@files.example.com/a.pdf"),
    (
        "https://b.s3.amazonaws.com/a.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAX%2F20261130"
        "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123abcd",
        "https://b.s3.amazonaws.com/a.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=[REDACTED]"
        "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=[REDACTED]",
    ),
    ("https://acct.blob.core.windows.net/c/a.pdf?sv=2024-01-01&sp=r&sig=AbC%2Bd",
     "https://acct.blob.core.windows.net/c/a.pdf?sv=2024-01-01&sp=r&sig=[REDACTED]"),
    ("gs://bucket/a.pdf?X-Goog-Signature=ff00", "gs://bucket/a.pdf?X-Goog-Signature=[REDACTED]"),
    ("postgresql://postgres@127.0.0.1:5432/db", "postgresql://postgres@127.0.0.1:5432/db"),  # no password
    ("postgresql://app:hunter22@db.internal/ledger", "postgresql://app:[REDACTED]@db.internal/ledger"),
    ("postgresql://app:***@db.internal/ledger", "postgresql://app:***@db.internal/ledger"),  # masked already
]  # fmt: skip


@pytest.mark.parametrize(("uri", "shown"), CASES)
def test_a_uri_is_shown_without_its_credentials(uri, shown):
    assert redact_uri(uri) == shown
    assert redact(f"s3 error reading {uri}: Access Denied") == f"s3 error reading {shown}: Access Denied"


def test_a_uri_object_is_stored_and_printed_redacted():
    u = URI("https://user:pa55word@files.example.com/a.pdf?sig=zzz")
    for text in (str(u), repr(u), display_path(u), path_bytes(u).decode()):
        assert "pa55word" not in text and "zzz" not in text
    assert u.name == "a.pdf" and u.suffix == ".pdf"
    assert URI("s3://bucket/dir/scan 1.PDF").suffix == ".PDF"


def test_text_without_a_url_is_left_alone():
    for text in ("key=value sig=abc", "user:pass@host", "Total: 12.50 EUR", "mailto:a@b.c"):
        assert redact(text) == text
