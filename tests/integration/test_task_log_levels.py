"""What a task writes that is not an error is not logged as one: Airflow logs a task's stderr at
ERROR, so MLflow's tqdm progress bars for artifact downloads became red "ERROR - Downloading
artifacts: 0%|" lines in the gate's log."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

DOWNLOAD = """
import mlflow, pathlib, sys
import common.dag_defaults  # what every task process imports when it parses the DAG file
mlflow.set_tracking_uri(sys.argv[1])
src = pathlib.Path(sys.argv[2]); src.mkdir()
for i in range(3):
    (src / f"part{i}.txt").write_text("x" * 100)
artifacts = (src.parent / "artifacts").as_uri()  # not ./mlruns in the checkout
with mlflow.start_run(experiment_id=mlflow.create_experiment("logs", artifact_location=artifacts)) as run:
    mlflow.log_artifacts(str(src), "parts")
mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="parts", dst_path=sys.argv[3])
print("downloaded")
"""


def test_a_task_process_downloads_artifacts_without_progress_bars_on_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    proc = subprocess.run([sys.executable, "-c", DOWNLOAD, f"sqlite:///{tmp_path}/mlflow.db",
                           str(tmp_path / "src"), str(tmp_path / "dst")],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0 and "downloaded" in proc.stdout, proc.stderr[-3000:]
    assert (tmp_path / "dst" / "parts" / "part2.txt").is_file()
    assert "Downloading artifacts" not in proc.stderr, proc.stderr[-2000:]
