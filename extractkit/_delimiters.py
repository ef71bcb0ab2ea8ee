"""Delimiters that untrusted text must not reach past.

A prompt wraps untrusted text (the document, an example's input) in tags: ``<document>``,
``<example>``, ``<output>``. Text containing one of those tags, in any form a model may read as
the tag, could close its own section and forge another one (a second document, an example
answer). :class:`Neutraliser` finds every such form and breaks it.

A form matches a delimiter ``name`` when it reads ``<name`` or ``</name`` followed by anything
but a letter, digit or ``_`` (so ``>``, attributes, whitespace or the end of the text), where

- case is ignored and Unicode compatibility forms count as their plain letter (NFKC case fold:
  fullwidth ``＜／ＤＯＣＵＭＥＮＴ＞``, mathematical letters ``𝐝𝐨𝐜...``, circled letters, ...), and
  so do Cyrillic, Greek and Armenian letters drawn like a Latin one (:data:`LATIN_LOOKALIKES`:
  ``<dоcument>`` with a Cyrillic ``о``);
- the bracket is ``<`` or one of its look-alikes (:data:`OPEN_BRACKETS`: ``‹ 〈 ⟨ ﹤ ＜ ...``),
  the slash ``/`` or one of its look-alikes (:data:`SLASHES`);
- whitespace may follow the bracket and surround the slash (``< / document``);
- invisible characters (format characters, category Cf, such as zero-width spaces, and the
  other default-ignorable ones such as variation selectors) may stand anywhere in it.

A matched form is neutralised by writing a backslash after its bracket (``<\\/document>``,
``<\\DOCUMENT id=2>``), the form the prompts have always used; nothing else in the text changes,
so values the model copies still occur in the original document. In JSON (an example's output)
the bracket is written as its ``\\u`` escape instead, so the JSON decodes to the same value.

Matching is one regular expression over the original text, without a normalised copy or a
Python loop over its characters: each character of a name is a class of every character whose
NFKC case fold is that character (and of its look-alikes), with any run of invisible characters
between them. The classes it could backtrack through (whitespace and invisibles, slashes, the
first letters of names) are disjoint and none contains a bracket, so a failed match gives up at
the first character that cannot continue and the time is linear in the length of the text.

Not matched: forms that NFKC expands to several characters (the ligature ``ﬀ``), look-alike
letters beyond the Cyrillic, Greek and Armenian ones in :data:`LATIN_LOOKALIKES` (Unicode's
full confusables table, UTS #39, is larger), and HTML entities (``&lt;document&gt;``).
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable

# look-alikes of "<" and "/" that NFKC leaves alone (those it maps, such as the fullwidth and
# small forms, are found from unicodedata)
# what a document renders as depends on this module as much as on the template's source: bump it
# whenever neutralising changes its output, so every tier's identity (config_hash) changes with it
RENDER_VERSION = 1

OPEN_BRACKETS = (
    "\u02c2"  # ˂ modifier letter left arrowhead
    "\u1438"  # ᐸ canadian syllabics pa
    "\u2039"  # ‹ single left-pointing angle quotation mark
    "\u2329"  # 〈 left-pointing angle bracket
    "\u2770"  # ❰ heavy left-pointing angle bracket ornament
    "\u276c"  # ❬ medium left-pointing angle bracket ornament
    "\u276e"  # ❮ heavy left-pointing angle quotation mark ornament
    "\u27e8"  # ⟨ mathematical left angle bracket
    "\u29fc"  # ⧼ left-pointing curved angle bracket
    "\u3008"  # 〈 left angle bracket
)
# Cyrillic, Greek and Armenian letters drawn like a Latin one (NFKC keeps scripts apart), by the
# Latin letter they pass for; case does not matter
LATIN_LOOKALIKES = {
    "a": "\u0430\u0410\u0391\u0251",  # а А Α ɑ
    "b": "\u0412\u0392",  # В Β
    "c": "\u0441\u0421\u03f2\u03f9",  # с С ϲ Ϲ
    "d": "\u0501",  # ԁ
    "e": "\u0435\u0415\u0395",  # е Е Ε
    "g": "\u0261\u050d",  # ɡ ԍ
    "h": "\u04bb\u041d\u0397",  # һ Н Η
    "i": "\u0456\u0406\u03b9\u0399\u04cf\u0131",  # і І ι Ι ӏ ı
    "j": "\u0458\u0408\u03f3",  # ј Ј ϳ
    "k": "\u041a\u039a\u03ba",  # К Κ κ
    "m": "\u041c\u039c",  # М Μ
    "n": "\u039d\u0578",  # Ν ո
    "o": "\u043e\u041e\u03bf\u039f\u0585",  # о О ο Ο օ
    "p": "\u0440\u0420\u03c1\u03a1",  # р Р ρ Ρ
    "q": "\u051b\u051a",  # ԛ Ԛ
    "s": "\u0455\u0405",  # ѕ Ѕ
    "t": "\u0422\u03a4\u03c4",  # Т Τ τ
    "u": "\u03c5\u057d",  # υ ս
    "v": "\u03bd\u0475\u0474",  # ν ѵ Ѵ
    "w": "\u051d\u051c",  # ԝ Ԝ
    "x": "\u0445\u0425\u03a7\u03c7",  # х Х Χ χ
    "y": "\u0443\u0423\u03a5",  # у У Υ
    "z": "\u0396",  # Ζ
}
SLASHES = (
    "\u2044"  # ⁄ fraction slash
    "\u2215"  # ∕ division slash
    "\u2571"  # ╱ box drawings light diagonal upper right to lower left
    "\u27cb"  # ⟋ mathematical rising diagonal
    "\u29f8"  # ⧸ big solidus
)
# default-ignorable characters outside category Cf (invisible, or rendered as nothing)
_IGNORABLE_EXTRA = (
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))  # variation selectors
    + "".join(map(chr, range(0xE0100, 0xE01F0)))  # variation selectors supplement
)


def fold(text: str) -> str:
    """NFKC case fold: the form in which two spellings of a name compare equal."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


# the planes with assigned characters other than private use (planes 4-13 are unassigned and
# 15-16 private use: NFKC leaves those alone and none is a format character)
_PLANES = (range(0, 0x40000), range(0xE0000, 0xF0000))


@functools.lru_cache(maxsize=1)
def _unicode_tables() -> tuple[dict[str, str], str]:
    """(every character whose NFKC case fold is one other character -> that character, and the
    invisible characters). Found once per process from unicodedata (about 0.1 s), skipping the
    blocks of 256 code points that NFKC case folding leaves unchanged."""
    variants: dict[str, str] = {}
    invisible: list[str] = []
    category = unicodedata.category
    for plane in _PLANES:
        invisible += [chr(p) for p in plane if category(chr(p)) == "Cf"]
        for base in plane[::256]:
            if 0xD800 <= base < 0xE000:  # surrogates
                continue
            block = "\n".join(map(chr, range(base, base + 256)))  # "\n": NFKC never joins across it
            if fold(block) == block:
                continue
            for point in range(base, base + 256):
                char = chr(point)
                folded = fold(char)
                if folded != char and len(folded) == 1:
                    variants[char] = folded
    return variants, "".join(invisible) + _IGNORABLE_EXTRA


def _one_of(chars: Iterable[str]) -> str:
    """A regular expression for one of ``chars``. Characters beyond the BMP are tested only when
    the character is: re checks them one by one after its bitmap of the BMP ones."""
    chars = set(chars)
    bmp = {c for c in chars if c <= "\uffff"}
    if len(bmp) == len(chars):
        return _char_class(bmp)
    return f"(?:{_char_class(bmp)}|(?=[\\U00010000-\\U0010ffff]){_char_class(chars - bmp)})"


def _char_class(chars: Iterable[str], extra: str = "") -> str:
    """A regular-expression character class of ``chars`` (as ranges of escaped code points) and
    of the class syntax ``extra``."""
    points = sorted({ord(c) for c in chars})
    parts: list[str] = []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        lo, hi = f"\\U{points[i]:08x}", f"\\U{points[j]:08x}"
        parts.append(lo if i == j else f"{lo}-{hi}")
        i = j + 1
    return "[" + extra + "".join(parts) + "]"


@functools.lru_cache(maxsize=64)
def _pattern(names: frozenset[str]) -> re.Pattern[str]:
    variants, invisible = _unicode_tables()
    spellings: dict[str, set[str]] = {}
    for char, folded in variants.items():
        spellings.setdefault(folded, set()).add(char)

    def one(char: str) -> set[str]:
        return {char} | spellings.get(char, set()) | set(LATIN_LOOKALIKES.get(char, ""))

    groups = itertools.count()

    def run(char_class: str) -> str:
        # a run of the class that is never given back (possessive; the syntax is 3.11+)
        group = next(groups)
        return f"(?=(?P<run{group}>{char_class}*))(?P=run{group})"

    gap = _char_class(invisible)
    space = _char_class(invisible, extra="\\s")
    bracket = _one_of(one("<") | set(OPEN_BRACKETS))
    slash = _one_of(one("/") | set(SLASHES))
    alternatives = ["".join(_one_of(one(c)) + run(gap) for c in name) for name in sorted(names, reverse=True)]
    # what may follow a bracket, tested first: most brackets in a text fail here at once
    follow = set(invisible) | one("/") | set(SLASHES) | set().union(*(one(n[0]) for n in names))
    lead = _char_class({c for c in follow if c <= "\uffff"}, extra="\\s\\U00010000-\\U0010ffff")
    return re.compile(
        f"(?P<bracket>{bracket})(?={lead}){run(space)}(?:{slash}{run(space)})?(?:{'|'.join(alternatives)})(?!\\w)"
    )


class Neutraliser:
    """Breaks every form of the tags ``names`` (case-folded) in a text; see the module doc."""

    def __init__(self, names: Iterable[str]):
        self.names = frozenset(fold(n) for n in names)
        if not self.names or not all(self.names):
            raise ValueError("a Neutraliser needs non-empty tag names")
        self._pattern = _pattern(self.names)

    def text(self, text: str) -> str:
        """``text`` with a backslash after the bracket of every tag form; otherwise unchanged."""
        return self._pattern.sub(_after_bracket, text)

    def json(self, text: str) -> str:
        """JSON text with the bracket of every tag form as its ``\\u`` escape: the same value."""
        return self._pattern.sub(_escaped_bracket, text)


def _after_bracket(match: re.Match[str]) -> str:
    end = match.end("bracket")
    return match.string[match.start() : end] + "\\" + match.string[end : match.end()]


def _escaped_bracket(match: re.Match[str]) -> str:
    bracket = match["bracket"]
    units = bracket.encode("utf-16-be")
    escaped = "".join(f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2))
    return escaped + match.string[match.end("bracket") : match.end()]
