"""Wording shared by every output: a count with its noun in the right number."""

from __future__ import annotations


def plural(n: int | float, noun: str, nouns: str | None = None) -> str:
    """``1 document``, ``2 documents``, ``1,234 documents``: a count with its noun in the right number
    (``nouns`` for an irregular plural)."""
    shown = f"{n:,.0f}" if isinstance(n, float) else f"{n:,}" if abs(n) >= 10_000 else str(n)
    return f"{shown} {noun if shown == '1' else nouns or noun + 's'}"  # as shown: 1.4 reads "1 document"
