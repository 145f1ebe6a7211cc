"""Layout of the one state folder that holds everything a run writes.

Nothing is ever written outside it. Its root comes from the ``LCP_STATE_DIR`` environment
variable, else ``<project>/.state``::

    <state>/
      airflow/                 AIRFLOW_HOME (SQLite metadata DB for the local stack)
      mlflow/mlflow.db         MLflow tracking + registry store; mlflow/artifacts/ its artifacts
      dvc-remote/              default DVC remote
      feed/                    default local feed: <feed>/<batch_id>/ (see README, "Feed layout")
      staging/<batch_id>/      raw copy of each ingested batch, kept unchanged
      manifest.d/              ingested batches, one JSON entry per batch id (a legacy manifest.json is split on first read)
      quarantine/<batch_id>/   rejected rows and the validation report of a batch
      gx/                      Great Expectations project (suites, results, Data Docs)
      workspace/               git + DVC repository where the pipeline runs:
        data/listings/           the listings store (DVC-tracked)
        data/golden/             the frozen golden test set (DVC-tracked)
        data/prepared/ models/ reports/ metrics.json   outputs of `dvc repro`
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.params import PROJECT_ROOT

STATE_ENV = "LCP_STATE_DIR"
FEED_ENV = "LCP_FEED_URL"


class _Under:
    """A path of the state folder (module docstring), read like a property: the ``base``
    attribute's path joined with ``parts``."""

    def __init__(self, base: str, *parts: str) -> None:
        self.base, self.parts = base, parts

    def __get__(self, state: State | None, owner: type | None = None) -> Path | _Under:
        return self if state is None else getattr(state, self.base).joinpath(*self.parts)


@dataclass(frozen=True)
class State:
    """Paths of the state folder. Cheap to build; creates nothing until :meth:`ensure`."""

    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> State:
        """The state at ``root``, else ``$LCP_STATE_DIR``, else ``<project>/.state``."""
        chosen = root or os.environ.get(STATE_ENV) or PROJECT_ROOT / ".state"
        return cls(Path(chosen).resolve())

    airflow_home = _Under("root", "airflow")
    mlflow_dir = _Under("root", "mlflow")
    artifact_root = _Under("mlflow_dir", "artifacts")
    dvc_remote = _Under("root", "dvc-remote")
    staging = _Under("root", "staging")
    manifest = _Under("root", "manifest.json")
    quarantine = _Under("root", "quarantine")
    gx_dir = _Under("root", "gx")
    workspace = _Under("root", "workspace")
    listings_store = _Under("workspace", "data", "listings")
    golden_dir = _Under("workspace", "data", "golden")

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI; ``$MLFLOW_TRACKING_URI`` wins when set (e.g. a tracking server)."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def feed_url(self) -> str:
        """Where batches are published: ``$LCP_FEED_URL`` (folder or ``s3://bucket/prefix``)."""
        return os.environ.get(FEED_ENV) or str(self.root / "feed")

    def ensure(self) -> State:
        """Creates the folders that must exist before any step runs."""
        for path in (self.root, self.staging, self.quarantine, self.mlflow_dir, self.artifact_root,
                     self.dvc_remote):
            path.mkdir(parents=True, exist_ok=True)
        return self
