"""Text normalisation shared by every reader of listings, taxonomies and file names.

One rule, applied to every cell, column name, listing id and image file name: Unicode NFC
(so ``"é"`` typed as one code point and as ``e`` + combining accent are the same id, and an NFC
id meets an NFD file name), then the whitespace and invisible characters at both ends are
removed. A value left with no visible character (only spaces, zero-width spaces, joiners, BOMs,
fillers) is empty. Invisible characters: Unicode general categories ``Cf`` (format: U+200B zero
width space, U+200D joiner, U+2060 word joiner, U+FEFF, soft hyphen ...), ``Zs``/``Zl``/``Zp``
(separators) and ``Cc`` (controls), plus the Hangul and Braille fillers that render blank
(U+115F, U+1160, U+3164, U+FFA0, U+2800). Characters inside the text are kept: a joiner between
two letters can carry meaning (Persian ZWNJ, emoji sequences).
"""

from __future__ import annotations

import unicodedata

_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp", "Cc"})
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_invisible(char: str) -> bool:
    """Whether one character renders as nothing or as blank space (see the module doc)."""
    return char in _FILLERS or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def normalize_text(value: str) -> str | None:
    """NFC, invisible characters stripped from both ends; ``None`` when nothing visible is left.

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
