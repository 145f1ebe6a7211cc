"""What the platform's DAGs share: owner, start date, retries, no catch-up, one run at a time.

The DAG files (``dags/``) read this at their top level, so it imports only the standard library
and pendulum (which every DAG file imports anyway): a DAG file still parses in well under a
second (``tests/dags/test_dagbag.py``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum

TASK_ENVIRONMENT = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
"""Environment of every task process, unless the deployment sets it otherwise. MLflow draws a tqdm
progress bar on stderr for each artifact download, and Airflow logs a task's stderr at ERROR:
the gate's log showed red "ERROR - Downloading artifacts: 0%|" lines for a download that worked.
Applied when this module is imported: the task runner parses the DAG file (which imports it) in
the task's own process before the task runs, and ``dvc repro``'s stages inherit it. The Makefile
and docker-compose.yml set the same for the other processes (the CLIs, the demo)."""
for _name, _value in TASK_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)

EMBED_CONCURRENCY_ENV = "LCP_EMBED_CONCURRENCY"
"""Environment variable (read where the DAG is parsed): how many mapped ``embed_images`` tasks
of one run may run at once (default 1). Each loads the encoder and uses every core it is given:
on one machine one at a time is fastest (docs/measurements.md, session 21's ``make demo``); on a
cluster set it to the number of workers that take them (e.g. the GPU workers)."""


def embed_concurrency() -> int:
    """:data:`EMBED_CONCURRENCY_ENV` as an int >= 1 (1 when unset or not a positive integer)."""
    try:
        return max(1, int(os.environ.get(EMBED_CONCURRENCY_ENV, "1")))
    except ValueError:
        return 1


RETRIES_ENV = "LCP_TASK_RETRIES"
"""Environment variable: retries per task (default 2). The test suite sets 0 so that a failure
shows at once instead of after the delays."""
START_DATE = pendulum.datetime(2026, 1, 5, tz="UTC")


def dag_settings(dag_id: str, *, tags: list[str], doc_md: str | None, retry_delay: timedelta) -> dict:
    """The keyword arguments of ``airflow.sdk.dag`` for one of the platform's DAGs, but its
    ``schedule`` (each DAG file says its own: ruff's AIR002) and its ``params``.

    Args:
        dag_id, tags, doc_md: the DAG's own, passed through.
        retry_delay: the tasks' delay between tries.

    Returns:
        Those, plus ``start_date`` (:data:`START_DATE`, timezone-aware), ``catchup=False``,
        ``max_active_runs=1`` and ``default_args`` (owner ``ml-platform``, ``retries`` from
        ``$LCP_TASK_RETRIES`` read now, when the DAG file is parsed, and ``retry_delay``).
    """
    return {"dag_id": dag_id, "start_date": START_DATE, "catchup": False,
            "max_active_runs": 1, "tags": tags, "doc_md": doc_md,
            "default_args": {"owner": "ml-platform", "retries": int(os.environ.get(RETRIES_ENV, "2")),
                             "retry_delay": retry_delay}}
