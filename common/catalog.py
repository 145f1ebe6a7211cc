"""Catalog adapters by configuration: a YAML file maps a catalog's source columns onto the
canonical listing. See ``catalogs/fashion.yaml`` (category from three level columns) and
``catalogs/flipkart.yaml`` (category parsed from one tree column, truncated to a depth).

A new catalog needs a new YAML file, not code: the listings file name, the source column of each
canonical field, how the category path is built, the image path template, the currency and where
the catalog's taxonomy is declared (its own data, or Google's product taxonomy file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from common.cli import InputError
from common.params import PROJECT_ROOT
from common.text import is_null_token, json_depth, normalize_text

PATH_SEP = " > "
"""Separator of the levels of a category path as stored (``"Apparel > Topwear > Tshirts"``)."""

CANONICAL_COLUMNS = (
    "listing_id", "title", "description", "brand", "price", "currency", "attributes",
    "category_path", "image_key", "image_sha256", "catalog", "batch_id", "ingested_at",
)
"""Columns of the canonical listing, in the order the listings store keeps them.

``attributes`` holds the catalog-declared fields (:attr:`Catalog.attributes`) of a listing as a
JSON object string (``'{"gender": "Men", "usage": "Sports"}'``), or ``None``.
"""


MAX_TREE_DEPTH = 8
"""Deepest JSON nesting read from a ``json_list`` category cell (it needs 1: a list of
strings); a deeper cell is unparseable, never handed to ``json.loads`` (which raises
``RecursionError`` on a cell nesting ~1,000 levels)."""


class CatalogError(InputError):
    """A catalog adapter file that cannot be used: its one-line message names the file, the key
    and what to write (:func:`load_catalog`). A ``ValueError``; CLIs print it without a
    traceback (:func:`common.cli.run_command`)."""


class ColumnMap(BaseModel):
    """Source column of each canonical field; ``None`` means the catalog has no such field.

    ``category_path`` lists one source column per taxonomy level (fashion:
    ``[masterCategory, subCategory, articleType]``); a catalog whose path sits in one column
    leaves it out and declares :class:`CategoryTree` under ``category`` instead.

    ``title`` must be given: a column, or ``null`` for a catalog without usable titles (classified
    from the image and the structured fields: validation then has no title expectations, and the
    model is trained with ``train.branches: image``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    listing_id: str
    title: str | None = Field(..., description="Title column; null: the catalog has no titles.")
    category_path: list[str] | None = Field(None, min_length=1)
    description: str | None = None
    brand: str | None = None
    price: str | None = None
    currency: str | None = Field(None, description="Per-row currency column; else Catalog.currency.")


class CategoryTree(BaseModel):
    """A category path held in one source column, e.g. Flipkart's ``product_category_tree``
    ``'["Clothing >> Women's Clothing >> Lingerie >> ..."]'``.

    The cell is parsed (``format``), split on ``separator``, levels stripped, and only the first
    ``max_depth`` levels kept (deeper levels of real trees are often the product name itself).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str
    format: Literal["text", "json_list"] = Field(
        "text", description="text: the cell is the path; json_list: a JSON list whose first "
                            "element is the path.")
    separator: str = Field(">", min_length=1)
    max_depth: int = Field(3, ge=1)


class TaxonomySpec(BaseModel):
    """Where a catalog's taxonomy (the set of valid category paths) is declared.

    ``file`` is the taxonomy file at the feed root (a JSON list of ``"A > B > C"`` paths) that
    validation reads. ``source`` says how ``python -m ingestion.feed publish`` declares it:
    ``data`` (the category paths present in the whole source catalog) or ``google`` (Google's
    product taxonomy, ``google_file``, with every category path up to the catalog's depth).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str = "taxonomy.json"
    source: Literal["data", "google"] = "data"
    google_file: str | None = Field(
        None, description="Google taxonomy-with-ids text file; relative paths from the project root.")

    @model_validator(mode="after")
    def _google_needs_file(self) -> TaxonomySpec:
        if self.source == "google" and not self.google_file:
            raise ValueError("taxonomy.source 'google' needs taxonomy.google_file")
        return self


class Catalog(BaseModel):
    """One catalog adapter (``catalogs/<name>.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    listings_file: str = Field(description="Listings file name inside a batch folder; a file "
                                           "with the same stem and another supported extension "
                                           "(.csv, .jsonl, .parquet) is found too.")
    columns: ColumnMap
    category: CategoryTree | None = None
    image_key: str = Field(description="Image path inside a batch, a str.format template over the source row.")
    currency: str | None = None
    attributes: list[str] = Field(
        default_factory=list,
        description="Source columns kept as the listing's catalog-declared fields (the canonical "
                    "``attributes`` JSON object, keyed by column name); the classifier's "
                    "structured branch reads those named in ``train.fields``.")
    taxonomy: TaxonomySpec = TaxonomySpec()
    order_by: str | None = Field(
        default=None,
        description="Source column that orders the catalog in time (e.g. a year or a date), "
                    "for publishing it as a season of weeks in its own order "
                    "(``ingestion.feed.publish(order='time')``); ties are broken by listing id.")

    @field_validator("taxonomy", mode="before")
    @classmethod
    def _taxonomy_file_shorthand(cls, value: object) -> object:
        return {"file": value} if isinstance(value, str) else value  # `taxonomy: taxonomy.json`

    @model_validator(mode="after")
    def _one_category_source(self) -> Catalog:
        if (self.columns.category_path is None) == (self.category is None):
            raise ValueError("declare the category path either as columns.category_path (one "
                             "column per level) or as category (one tree column), exactly one")
        return self

    @property
    def depth(self) -> int:
        """Number of taxonomy levels in a category path (at most, for a parsed tree)."""
        if self.category is not None:
            return self.category.max_depth
        return len(self.columns.category_path)

    @property
    def category_columns(self) -> list[str]:
        """Source columns the category path is built from."""
        if self.category is not None:
            return [self.category.column]
        return list(self.columns.category_path)

    def category_levels(self, values: list[str | None]) -> list[str] | None:
        """The levels of one row's category path from its :attr:`category_columns` values.

        Args:
            values: the row's text values of :attr:`category_columns` (``None`` when blank).

        Returns:
            The levels (at most :attr:`depth`), each normalised
            (:func:`common.text.normalize_text`), or ``None`` when a level is blank or a null
            token (:func:`common.text.is_null_token`: ``NULL``, ``nan``, ``N/A``...), or a tree
            cell cannot be parsed (not JSON, or nesting deeper than :data:`MAX_TREE_DEPTH`).
        """
        if self.category is None:
            levels = [None if is_null_token(v) else normalize_text(v) for v in values]
            return None if any(v is None for v in levels) else levels
        (cell,) = values
        if is_null_token(cell):
            return None
        tree = self.category
        if tree.format == "json_list":
            if json_depth(cell) > MAX_TREE_DEPTH:
                return None
            try:
                items = json.loads(cell)
            except (json.JSONDecodeError, RecursionError):
                return None
            if not isinstance(items, list) or not items or not isinstance(items[0], str):
                return None
            cell = items[0]
        levels = [None if is_null_token(level) else normalize_text(level)
                  for level in cell.split(tree.separator)][: tree.max_depth]
        return None if not levels or any(not level for level in levels) else levels


def load_catalog(path: str | Path) -> Catalog:
    """Reads a catalog adapter; a relative path is taken from the project root.

    Raises:
        FileNotFoundError: when the file does not exist.
        CatalogError: when it is not YAML, not a mapping, or the mapping is incomplete or wrong;
            one line, e.g. ``catalogs/x.yaml: required key 'columns.title' is missing: write
            `title: <source column>` under `columns:` (`title: null`: the catalog has no
            titles)``.
    """
    path = Path(path)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise CatalogError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: a catalog adapter is a YAML mapping (name:, listings_file:, "
                           f"columns:, ...), not a {type(data).__name__}")
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{path}: " + "; ".join(_problem(err) for err in exc.errors())) from None


def _field(loc: list[str]) -> FieldInfo | None:
    """The declaration of a key path (``["columns", "title"]``), for its description."""
    model: type[BaseModel] | None = Catalog
    field = None
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = next((t for t in (field.annotation, *get_args(field.annotation))
                      if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return field


def _problem(err: dict) -> str:
    """One pydantic error as what to fix in the YAML file."""
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "missing":
        field = _field(loc)
        under = f" under `{loc[-2]}:`" if len(loc) > 1 else ""
        value = "<source column>" if loc[:1] == ["columns"] else "<value>"
        hint = f" ({field.description})" if field is not None and field.description else ""
        return f"required key '{key}' is missing: write `{loc[-1]}: {value}`{under}{hint}"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' (a typo? remove it or use one of the documented keys)"
    return f"key '{key}': {err['msg']} (got {err.get('input')!r:.80})"


def split_path(category_path: str) -> list[str]:
    """``"A > B > C"`` -> ``["A", "B", "C"]``."""
    return [level.strip() for level in category_path.split(PATH_SEP.strip())]


def google_taxonomy_paths(path: str | Path, max_depth: int | None = None) -> list[str]:
    """Category paths of Google's product taxonomy file.

    Args:
        path: ``taxonomy-with-ids.en-US.txt`` (lines ``"<id> - A > B > C"``; ``#`` comments);
            the plain ``taxonomy.en-US.txt`` (lines ``"A > B > C"``) works too. Relative paths
            are taken from the project root.
        max_depth: keep only paths of at most this many levels (``None``: all).

    Returns:
        The sorted, ``" > "``-joined paths. Source: https://support.google.com/merchants/answer/6324436

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it holds no category.
    """
    path = Path(path)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    paths = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, sep, rest = line.partition(" - ")
        text = rest if sep and head.strip().isdigit() else line
        levels = split_path(text)
        if all(levels) and (max_depth is None or len(levels) <= max_depth):
            paths.add(PATH_SEP.join(levels))
    if not paths:
        raise ValueError(f"Google taxonomy {path} holds no category")
    return sorted(paths)
