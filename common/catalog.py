"""Catalog adapters by configuration: a YAML file maps a catalog's source columns onto the
canonical listing. See ``catalogs/fashion.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from common.params import PROJECT_ROOT

PATH_SEP = " > "
"""Separator of the levels of a category path as stored (``"Apparel > Topwear > Tshirts"``)."""

CANONICAL_COLUMNS = (
    "listing_id", "title", "description", "brand", "price", "currency", "category_path",
    "image_key", "image_sha256", "catalog", "batch_id", "ingested_at",
)
"""Columns of the canonical listing, in the order the listings store keeps them."""


class ColumnMap(BaseModel):
    """Source column of each canonical field; ``None`` means the catalog has no such field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listing_id: str
    title: str
    category_path: list[str] = Field(min_length=1)
    description: str | None = None
    brand: str | None = None
    price: str | None = None


class Catalog(BaseModel):
    """One catalog adapter (``catalogs/<name>.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    listings_file: str
    columns: ColumnMap
    image_key: str = Field(description="Image path inside a batch, a str.format template over the source row.")
    currency: str | None = None
    taxonomy: str = Field("taxonomy.json", description="Taxonomy file at the feed root.")

    @property
    def depth(self) -> int:
        """Number of taxonomy levels in a category path."""
        return len(self.columns.category_path)


def load_catalog(path: str | Path) -> Catalog:
    """Reads a catalog adapter; a relative path is taken from the project root.

    Raises:
        FileNotFoundError: when the file does not exist.
        pydantic.ValidationError: when the mapping is incomplete.
    """
    path = Path(path)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    with open(path, encoding="utf-8") as fh:
        return Catalog.model_validate(yaml.safe_load(fh))


def split_path(category_path: str) -> list[str]:
    """``"A > B > C"`` -> ``["A", "B", "C"]``."""
    return [level.strip() for level in category_path.split(PATH_SEP.strip())]
