"""
### Listing classifier: rollback

Manually triggered: moves the MLflow alias `champion` of `listing-classifier` back to an earlier
version (`previous-champion`, or a version number), after a serving check of that version in a
fresh process. The demoted version becomes `previous-champion`; both versions are tagged with
who rolled back, when (the Airflow run id) and why. Same as
`python -m promotion.rollback --to previous-champion --reason "..."`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from common.dag_defaults import dag_settings

DAG_ID = "listing_classifier_rollback"


@dag(
    schedule=None,  # manual: triggered from the UI or the CLI
    **dag_settings(DAG_ID, tags=["ml", "rollback", "listing-classifier"], doc_md=__doc__,
                   retry_delay=timedelta(minutes=1)),
    params={
        "to": Param("previous-champion", type="string", pattern=r"^(previous-champion|[0-9]+)$",
                    title="Version to restore",
                    description="Version to make champion: a number, or previous-champion."),
        "reason": Param("", type="string", title="Reason", description="Why (recorded on the model versions)."),
    },
)
def listing_classifier_rollback():
    @task
    def rollback(params=None, run_id=None) -> dict:
        from common.params import load_params
        from common.state import State
        from promotion.rollback import rollback as move_back

        return move_back(State.from_env(), load_params(), str(params["to"]), params.get("reason") or "",
                         actor=f"airflow:{run_id}")

    rollback()


listing_classifier_rollback()
