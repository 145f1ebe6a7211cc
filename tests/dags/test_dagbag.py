"""The DAG folder parses cleanly, and the DAG file stays thin."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

from tests.conftest import PROJECT_ROOT

DAG_ID = "listing_classifier_retraining"


def test_dagbag_has_no_import_errors_and_the_dag_is_configured(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag(DAG_ID)
    assert dag is not None
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.schedule == "@weekly"
    assert dag.start_date.tzinfo is not None
    assert dag.doc_md and "champion" in dag.doc_md
    assert {"epochs", "backbone", "min_improvement", "max_batches"} <= set(dag.params.keys())
    assert [t.task_id for t in dag.topological_sort()] == [
        "ingest", "validate", "version_data", "train_evaluate", "register", "gate", "needs_approval", "approval",
        "promote", "review"]
    for t in dag.tasks:
        assert t.retries >= 1, t.task_id
        assert t.retry_delay >= timedelta(minutes=1)


def test_dag_file_imports_without_heavy_libraries():
    """Parsing the DAG file imports none of the heavy libraries (the parse time is printed, not
    asserted: a timing depends on the machine's load)."""
    code = f"""
import json, sys, time, runpy
import airflow.sdk, pendulum  # the DAG file's own dependencies, paid once per parser
before = set(sys.modules)
t = time.perf_counter()
runpy.run_path({str(PROJECT_ROOT / "dags" / "listing_classifier_retraining.py")!r})
took = time.perf_counter() - t
heavy = sorted(m for m in set(sys.modules) - before
               if m.split(".")[0] in ("torch", "torchvision", "pandas", "mlflow", "great_expectations", "dvc", "sklearn"))
print(json.dumps({{"seconds": took, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], result
    print(f"[dag parse] {result['seconds'] * 1000:.0f} ms")
