"""Shared fixtures: paths to the real listings in ../shared, skipped with a clear message if absent."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"

# Tests get an Airflow of their own (SQLite in a temp folder), set before anything imports
# airflow, so they never touch a developer's Airflow home.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lcp-test-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
})
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite) for this test session; returns AIRFLOW_HOME."""
    airflow = Path(sys.executable).parent / "airflow"
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _AIRFLOW_HOME


def _dataset(folder: str, marker: str, what: str) -> Path:
    """``DATASETS / folder``; the test is skipped when its ``marker`` file is not there."""
    path = DATASETS / folder
    if not (path / marker).exists():
        pytest.skip(f"{what} not found at {path} (see ../shared/datasets/README.md)")
    return path


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The real Fashion Product Images catalog (styles.csv + images/)."""
    return _dataset("fashion-product-images", "styles.csv", "real fashion catalog")


@pytest.fixture(scope="session")
def real_jpeg(fashion_dir: Path) -> Path:
    """One real listing photo (a JPEG) of the fashion catalog, the first by name."""
    return sorted((fashion_dir / "images").glob("*.jpg"))[0]


@pytest.fixture(scope="session")
def flipkart_dir() -> Path:
    """The real Flipkart sample (CSV + images/)."""
    return _dataset("flipkart-1050", "flipkart_com-ecommerce_sample_1050.csv", "real Flipkart sample")
