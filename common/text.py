"""Text normalisation shared by every reader of listings, taxonomies and file names.

One rule, applied to every cell, column name, listing id and image file name: Unicode NFC
(so ``"é"`` typed as one code point and as ``e`` + combining accent are the same id, and an NFC
id meets an NFD file name), then the whitespace and invisible characters at both ends are
removed. A value left with no visible character (only spaces, zero-width spaces, joiners, BOMs,
fillers) is empty. Invisible characters: Unicode general categories ``Cf`` (format: U+200B zero
width space, U+200D joiner, U+2060 word joiner, U+FEFF, soft hyphen ...), ``Zs``/``Zl``/``Zp``
(separators) and the whitespace controls (tab, LF, CR), plus the Hangul and Braille fillers that
render blank (U+115F, U+1160, U+3164, U+FFA0, U+2800). Characters inside the text are kept: a
joiner between two letters can carry meaning (Persian ZWNJ, emoji sequences).

Control characters are refused, not stripped (:func:`find_control`): the C0 and C1 controls
other than tab, LF and CR (NUL, ESC of ANSI escape sequences, backspace, NEL...), and the bidi
formatting characters that reorder how text is displayed (U+202A-U+202E embeddings and
overrides, U+2066-U+2069 isolates, U+200E/U+200F/U+061C marks; "Trojan Source",
CVE-2021-42574). :func:`normalize_text` never removes them, not even at the ends, so that a
reader can find them and reject the value saying so: silently dropping a NUL from an id would
change the listing's identity, and a feed that sends escape sequences is broken or hostile.

Null tokens (:func:`is_null_token`): ``NULL``, ``None``, ``nan``, ``N/A``, ``undefined``... are
how databases, pandas and JavaScript write a missing value as text; readers treat them as
missing where a value is required (ids, titles, categories).
"""

from __future__ import annotations

import re
import unicodedata

_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp"})
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_WHITESPACE_CONTROLS = frozenset("\t\n\r")

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""Refused characters: C0/C1 controls but tab, LF, CR; DEL; bidi marks, embeddings, overrides
and isolates (Unicode UAX #9 explicit formatting characters)."""

NULL_TOKENS = frozenset({
    "", "null", "none", "nan", "-nan", "nat", "na", "n/a", "#n/a", "#na", "<na>", "nil",
    "(null)", "undefined", "1.#ind", "1.#qnan", "-1.#ind", "-1.#qnan",
})
"""Text that means "no value", compared case-insensitively: pandas' default ``na_values``
(``read_csv``), plus SQL's and JavaScript's (``NULL``, ``(null)``, ``undefined``, ``nil``)."""


def is_invisible(char: str) -> bool:
    """Whether one character renders as nothing or as blank space (see the module doc)."""
    return (char in _FILLERS or char in _WHITESPACE_CONTROLS
            or (unicodedata.category(char) in _INVISIBLE_CATEGORIES and not _CONTROL.match(char)))


def normalize_text(value: str) -> str | None:
    """NFC, invisible characters stripped from both ends; ``None`` when nothing visible is left.

    Control characters (:func:`find_control`) are kept wherever they are, for the caller to
    refuse.

    Args:
        value: any text (lone surrogates, kept for undecodable bytes, pass through unchanged).

    Returns:
        The normalised text, or ``None``.
    """
    text = unicodedata.normalize("NFC", value)
    start, end = 0, len(text)
    while start < end and is_invisible(text[start]):
        start += 1
    while end > start and is_invisible(text[end - 1]):
        end -= 1
    return text[start:end] or None


def find_control(value: str) -> str | None:
    """The first refused control character of ``value``, described, or ``None``.

    Args:
        value: any text.

    Returns:
        E.g. ``"U+001B (ESCAPE) at character 6"`` (1-based), or ``None`` when there is none.
    """
    found = _CONTROL.search(value)
    if found is None:
        return None
    char = found.group()
    name = unicodedata.name(char, None) or _C0_C1_NAMES.get(char, "control character")
    return f"U+{ord(char):04X} ({name}) at character {found.start() + 1}"


_C0_C1_NAMES = {"\x00": "NUL", "\x07": "BELL", "\x08": "BACKSPACE", "\x0b": "LINE TABULATION",
                "\x0c": "FORM FEED", "\x1b": "ESCAPE", "\x7f": "DELETE", "\x85": "NEXT LINE"}
"""Names of common controls (``unicodedata.name`` has none for Cc characters)."""


def is_null_token(value: str | None) -> bool:
    """Whether ``value`` is missing: ``None``, or a :data:`NULL_TOKENS` text (any case, after
    :func:`normalize_text`)."""
    return value is None or (normalize_text(value) or "").casefold() in NULL_TOKENS


def json_depth(text: str) -> int:
    """The deepest nesting of JSON arrays and objects in ``text``, counted without parsing it.

    ``json.loads`` recurses once per level and raises ``RecursionError`` near Python's
    recursion limit (about 1,000); this linear scan lets a reader refuse a deep document first.
    Brackets inside JSON strings are skipped; the text need not be valid JSON.

    Args:
        text: JSON text.

    Returns:
        0 for a scalar, 1 for ``[1, 2]``, 2 for ``[[1]]`` or ``{"a": [1]}``...
    """
    depth = deepest = 0
    for token in _JSON_TOKEN.finditer(text):
        if token.group(1):
            depth += 1
            deepest = max(deepest, depth)
        elif token.group(2):
            depth -= 1
    return deepest


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|([\[{])|([\]}])', re.DOTALL)
"""A JSON string (skipped as one token, an unclosed one to the end), an opening bracket (group
1) or a closing one (group 2)."""
