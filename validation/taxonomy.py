"""The declared taxonomy of a catalog, and the changes a person makes to it.

:func:`load_taxonomy` reads the feed's taxonomy file (``<feed>/taxonomy.json``; ingest copies it
to ``<state>/staging/_taxonomy.json`` each run). On top of it, a person records changes in the
state (``<state>/taxonomy/changes.json``, atomic writes), applied wherever validation loads the
taxonomy (:func:`effective_taxonomy`):

* ``add``: a new category path becomes valid. Listings held back for it (``unknown_category``)
  are released into the store by the next validate step. A path the feed's own file declares
  later has the same effect (the effective taxonomy is the union).
* ``retire``: a category stays valid (its new listings are accepted, with a
  ``retired_category`` warning) and its listings stay in the store, but prepare leaves them out
  of train/val (:data:`RETIRED_FILE` in the DVC workspace). ``add`` of a retired path
  reinstates it.

CLI::

    python -m validation.taxonomy add "Apparel > Topwear > Capes" [--by NAME] [--reason TEXT]
    python -m validation.taxonomy retire "Apparel > Topwear > Capes"
    python -m validation.taxonomy list [--json]

Adding a path that is already valid, or retiring a retired one, changes nothing and says so;
a malformed path (an empty level, the wrong number of levels for the catalog) exits 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.catalog import PATH_SEP, split_path
from common.files import atomic_write, read_regular, write_json
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

    The file is read with :func:`common.files.read_regular`: a symbolic link is refused, never
    followed, and a FIFO is refused at once instead of blocking the read forever.

    Raises:
        FileNotFoundError: when the file does not exist.
        common.files.NotRegularFileError: (an ``OSError``) when it is a symbolic link, a FIFO,
            a socket, a device or a folder.
        ValueError: when the file is not UTF-8 text, not JSON, not a non-empty list, or holds an
            entry that is not a non-blank string or a non-empty list of non-blank strings.
    """
    path = Path(path)
    try:
        text = read_regular(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"taxonomy {path} is not UTF-8 text: byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start}") from None
    try:
        data = json.loads(text)
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


# --- taxonomy changes made by a person, applied on top of the feed's declared taxonomy ------

CHANGES_FILE = Path("taxonomy") / "changes.json"
"""The log of taxonomy changes, relative to the state folder."""

RETIRED_FILE = Path("data") / "retired_categories.json"
"""In the DVC workspace: the retired category paths prepare leaves out of train/val (written by
the validate step, committed with the data revision, so a reproduced version reads its own)."""

ACTIONS = ("add", "retire")


class TaxonomyChangeError(ValueError):
    """A taxonomy change that cannot be made: a malformed path, or retiring an unknown one."""


@dataclass(frozen=True)
class Taxonomy:
    """The effective taxonomy: the feed's declared paths with the recorded changes applied.

    Attributes:
        paths: every valid category path (what validation accepts): the feed's paths plus the
            added ones. Retired paths stay valid: their listings are accepted (flagged).
        retired: the retired paths (a subset of ``paths``): not trained on.
        added: the paths added by a person that the feed's file does not declare.
        declared: the feed's own paths.
    """

    paths: frozenset[str]
    retired: frozenset[str] = frozenset()
    added: frozenset[str] = frozenset()
    declared: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ChangeOutcome:
    """What :func:`add_category` or :func:`retire_category` did.

    Attributes:
        action: ``"add"`` or ``"retire"``.
        path: the normalised category path.
        changed: False for a no-op (already there, already retired).
        message: one sentence for the person who asked.
    """

    action: str
    path: str
    changed: bool
    message: str


def parse_path(text: str, depth: int | None = None, exact_depth: bool = True) -> str:
    """A category path typed by a person, normalised as the taxonomy file's paths are.

    Args:
        text: ``"A > B > C"`` (spacing around ``>`` does not matter).
        depth: the catalog's number of levels (:attr:`common.catalog.Catalog.depth`); None: any.
        exact_depth: the path must have exactly ``depth`` levels (a catalog whose path comes
            from one column per level); False: at most ``depth`` (a parsed category tree).

    Returns:
        The levels, each normalised (:func:`common.text.normalize_text`), joined with ``" > "``.

    Raises:
        TaxonomyChangeError: when the path is not a string, a level is empty, or the number of
            levels does not fit the catalog.
    """
    if not isinstance(text, str) or "\n" in text or "\r" in text:
        raise TaxonomyChangeError(f"a category path is one line of text, got {text!r}")
    levels = [normalize_text(x) or "" for x in split_path(text)]
    if any(not level for level in levels):
        raise TaxonomyChangeError(f"category path {text!r} has an empty level: write it as "
                                  f"'A{PATH_SEP}B{PATH_SEP}C'")
    if depth is not None and (len(levels) != depth if exact_depth else len(levels) > depth):
        want = f"exactly {depth}" if exact_depth else f"at most {depth}"
        raise TaxonomyChangeError(f"category path {text!r} has {len(levels)} level(s); this "
                                  f"catalog's paths have {want}")
    return PATH_SEP.join(levels)


def changes_file(state_root: str | Path) -> Path:
    """``<state>/taxonomy/changes.json``."""
    return Path(state_root) / CHANGES_FILE


def read_changes(state_root: str | Path) -> list[dict]:
    """The recorded changes, oldest first: ``[{"action", "path", "at", "by", "reason"}]``.

    Raises:
        ValueError: when the file is not the JSON this module writes.
    """
    path = changes_file(state_root)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        changes = data["changes"]
        if not all(isinstance(c, dict) and c.get("action") in ACTIONS and isinstance(c.get("path"), str)
                   for c in changes):
            raise ValueError("an entry lacks a valid action or path")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the taxonomy change log {path} is not valid: {exc}") from exc
    return list(changes)


def apply_changes(declared: frozenset[str], changes: list[dict]) -> Taxonomy:
    """The effective taxonomy: ``declared`` with ``changes`` applied in order.

    ``add`` makes a path valid (and reinstates a retired one); ``retire`` marks a valid path
    retired. The last change of a path wins. A path the feed's file declares later is simply
    declared: the same effect as adding it here.
    """
    added, retired = set(), set()
    for change in changes:
        path = change["path"]
        if change["action"] == "add":
            retired.discard(path)
            if path not in declared:
                added.add(path)
        else:
            retired.add(path)
    paths = frozenset(declared | added)
    return Taxonomy(paths=paths, retired=frozenset(retired & paths), added=frozenset(added),
                    declared=frozenset(declared))


def staged_taxonomy_file(state, catalog) -> Path:
    """The copy of the feed's taxonomy file that ingest puts in staging (``_taxonomy.json``)."""
    return state.staging / f"_{catalog.taxonomy.file}"


def effective_taxonomy(state, catalog, declared: frozenset[str] | None = None) -> Taxonomy:
    """The taxonomy validation applies: the feed's file (as ingest staged it) plus the changes.

    Args:
        state: the :class:`common.state.State`.
        catalog: the catalog adapter (its ``taxonomy.file``).
        declared: the feed's paths when already read (e.g. another feed folder's file);
            default: :func:`load_taxonomy` of :func:`staged_taxonomy_file`.

    Raises:
        FileNotFoundError: when ``declared`` is not given and ingest has staged no taxonomy.
        ValueError: as :func:`load_taxonomy` and :func:`read_changes`.
    """
    if declared is None:
        declared = load_taxonomy(staged_taxonomy_file(state, catalog))
    return apply_changes(frozenset(declared), read_changes(state.root))


def _declared_or_empty(state, catalog) -> frozenset[str]:
    path = staged_taxonomy_file(state, catalog)
    return load_taxonomy(path) if path.exists() else frozenset()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's numeric user)
        return "unknown"


def _record(state, action: str, path: str, by: str | None, reason: str | None) -> None:
    changes = read_changes(state.root)
    changes.append({"action": action, "path": path,
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "by": by or _user(), "reason": reason})
    write_json(changes_file(state.root), {"changes": changes})


def add_category(state, catalog, path: str, by: str | None = None,
                 reason: str | None = None) -> ChangeOutcome:
    """Adds a category path to the taxonomy (or reinstates a retired one).

    The next validate step releases the listings held back for this category
    (:func:`validation.staged.release_held_back`). Adding a path that is already valid is a
    no-op (nothing recorded).

    Args:
        state: the state folder; the change is appended to ``<state>/taxonomy/changes.json``
            (atomic write).
        catalog: the catalog adapter (the path's depth is checked against it).
        path: ``"A > B > C"``.
        by: who made the change (default: the OS user).
        reason: why, free text (recorded).

    Raises:
        TaxonomyChangeError: when the path is malformed (:func:`parse_path`).
    """
    path = parse_path(path, catalog.depth, exact_depth=catalog.category is None)
    current = apply_changes(_declared_or_empty(state, catalog), read_changes(state.root))
    if path in current.retired:
        _record(state, "add", path, by, reason)
        return ChangeOutcome("add", path, True, f"{path!r} was retired: reinstated, trained on again")
    if path in current.paths:
        where = "the feed's taxonomy file" if path in current.declared else "an earlier addition"
        return ChangeOutcome("add", path, False, f"{path!r} is already in the taxonomy ({where}): "
                             "nothing changed")
    _record(state, "add", path, by, reason)
    return ChangeOutcome("add", path, True, f"{path!r} added: the next validate step releases "
                         "the listings held back for it")


def retire_category(state, catalog, path: str, by: str | None = None,
                    reason: str | None = None) -> ChangeOutcome:
    """Retires a category path: its listings stay in the store and are still accepted (with a
    ``retired_category`` warning), but prepare leaves them out of train/val.

    Raises:
        TaxonomyChangeError: when the path is malformed, or is not in the taxonomy.
    """
    path = parse_path(path, catalog.depth, exact_depth=catalog.category is None)
    current = apply_changes(_declared_or_empty(state, catalog), read_changes(state.root))
    if path in current.retired:
        return ChangeOutcome("retire", path, False, f"{path!r} is already retired: nothing changed")
    if path not in current.paths:
        raise TaxonomyChangeError(f"{path!r} is not in the taxonomy: only a known category can "
                                  "be retired")
    _record(state, "retire", path, by, reason)
    return ChangeOutcome("retire", path, True, f"{path!r} retired: still accepted (flagged), "
                         "no longer trained on from the next run")


def write_retired(workspace: str | Path, retired: frozenset[str]) -> bool:
    """Writes the retired paths to :data:`RETIRED_FILE` of the workspace for prepare.

    Nothing is written while nothing was ever retired (no file, empty set), so workspaces that
    never retire anything are unchanged. Atomic; only when the content changes.

    Returns:
        Whether the file was written.
    """
    path = Path(workspace) / RETIRED_FILE
    if not retired and not path.exists():
        return False
    text = json.dumps({"retired": sorted(retired)}, indent=1) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m validation.taxonomy {add,retire,list}``: see the module docstring.

    Returns:
        0 on a change or a no-op, 2 on a malformed path or a refused change (message on stderr).
    """
    from common.catalog import load_catalog
    from common.cli import INPUT_ERROR_STATUS, InputError
    from common.params import load_params
    from common.state import State

    parser = argparse.ArgumentParser(prog="python -m validation.taxonomy",
                                     description="Taxonomy changes applied on top of the feed's taxonomy file.")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("add", "add a category path (or reinstate a retired one)"),
                       ("retire", "retire a category path (kept, accepted, not trained on)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("path", help='category path, e.g. "Apparel > Topwear > Tshirts"')
        cmd.add_argument("--by", default=None, help="who makes the change (default: the OS user)")
        cmd.add_argument("--reason", default=None, help="why (recorded)")
    listing = sub.add_parser("list", help="the effective taxonomy's changes and counts")
    listing.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    state = State.from_env()
    try:
        catalog = load_catalog(load_params(args.params).catalog)
    except InputError as exc:  # one line naming the file and the key, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    if args.command == "list":
        taxonomy = apply_changes(_declared_or_empty(state, catalog), read_changes(state.root))
        summary = {"declared": len(taxonomy.declared), "added": sorted(taxonomy.added),
                   "retired": sorted(taxonomy.retired), "valid": len(taxonomy.paths),
                   "changes": read_changes(state.root)}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"{summary['valid']} valid category path(s): {summary['declared']} declared by the "
                  f"feed, {len(summary['added'])} added, {len(summary['retired'])} retired")
            for path in summary["added"]:
                print(f"added    {path}")
            for path in summary["retired"]:
                print(f"retired  {path}")
        return 0
    change = add_category if args.command == "add" else retire_category
    try:
        outcome = change(state, catalog, args.path, by=args.by, reason=args.reason)
    except TaxonomyChangeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(outcome.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
