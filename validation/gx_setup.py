"""Great Expectations import, quiet and offline. Import ``gx`` from here, not directly."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# GX logs every metric computation at INFO and warns about things that do not concern us.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

import great_expectations as gx  # noqa: E402

__all__ = ["gx"]
