"""The declared taxonomy of a catalog: the set of valid category paths."""

from __future__ import annotations

import json
from pathlib import Path

from common.catalog import PATH_SEP, split_path
from common.text import normalize_text


def load_taxonomy(path: str | Path) -> frozenset[str]:
    """Reads a taxonomy file.

    Args:
        path: JSON file holding a list of category paths, either as strings
            (``"Apparel > Topwear > Tshirts"``) or as lists of levels
            (``["Apparel", "Topwear", "Tshirts"]``). Levels are stripped and re-joined with
            :data:`common.catalog.PATH_SEP`, so spacing around the separator does not matter;
            each level is normalised as listings are (:func:`common.text.normalize_text`: NFC,
            invisible characters stripped), so the taxonomy and the listings' paths meet.

    Returns:
        The set of category paths, joined with ``" > "``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not JSON, not a non-empty list, or holds an entry that is
            not a non-blank string or a non-empty list of non-blank strings.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"taxonomy {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise ValueError(f"taxonomy {path} must be a non-empty JSON list of category paths")
    paths = set()
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            levels = [normalize_text(x) or "" for x in split_path(entry)]
        elif isinstance(entry, list) and all(isinstance(x, str) for x in entry):
            levels = [normalize_text(x) or "" for x in entry]
        else:
            raise ValueError(
                f"taxonomy {path}: entry {i} must be a path string or a list of level strings, "
                f"got {entry!r}"
            )
        if not levels or any(not level for level in levels):
            raise ValueError(f"taxonomy {path}: entry {i} has an empty level: {entry!r}")
        paths.add(PATH_SEP.join(levels))
    return frozenset(paths)
