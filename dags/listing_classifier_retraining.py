"""
### Listing classifier: weekly retraining

Pulls the week's new labelled listings from the feed, validates every batch with Great
Expectations (bad rows or batches are quarantined with a report, never trained on), versions
the listings store with DVC, runs `dvc repro` (prepare -> train -> evaluate), registers the
model in MLflow as `challenger`, and moves the `champion` alias only when the challenger's
business-weighted score beats the champion's on the same golden test set by at least
`min_improvement`.

Tasks: `ingest` -> `plan_image_checks` -> `check_images` (mapped: one instance per shard of
`validate.image_shard_size` rows of a staged batch, shared by the workers) -> `validate` (the
reduce step: duplicates, GX, routing, the store) -> `monitor` (the champion on the fresh listings) ->
`version_data` (DVC) -> `retrain_decision` (skips the rest when nothing new was accepted) and
`plan_embedding` -> `embed_images` (mapped: with a frozen encoder, one instance per shard of
`train.embed_shard_size` new images, shared by the workers) -> `train_evaluate` (`dvc repro`) ->
`register` -> `gate` -> `needs_approval` -> (`approval`) -> `promote` -> `review` ->
`collect_garbage` (`dvc gc`: keeps the champion's, the previous champion's and recent commits' data).

Each task calls one function of the platform's packages and passes its typed result
(`common.results`) through XCom as small references (batch ids, data revision, model version);
the next task rebuilds it with `from_xcom`. Trigger it by hand from the UI with the form
to change epochs, backbone, branches, min_improvement or max_batches for one run.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from common.dag_defaults import dag_settings, embed_concurrency

try:  # operator extra links to MLflow, from the plugins folder (on sys.path in every component)
    from listing_classifier_links import PROMOTE_LINKS, REGISTER_LINKS
except ImportError:  # a bare DagBag without the plugins folder: the same DAG, without the links
    PROMOTE_LINKS = REGISTER_LINKS = ()

DAG_ID = "listing_classifier_retraining"


class RecordedApprovalOperator(ApprovalOperator):
    """ApprovalOperator whose response is also in XCom (key ``response``), Reject included.

    On *Reject*, ApprovalOperator skips ``promote`` by raising Airflow's DownstreamTasksSkipped,
    which ends the task before its return value is pushed; ``review`` needs the response either way.
    """

    def execute_complete(self, context, event):
        if "error" not in event:
            context["ti"].xcom_push(key="response", value={
                "chosen_options": event["chosen_options"], "responded_by_user": event["responded_by_user"]})
        return super().execute_complete(context=context, event=event)


@dag(
    schedule="@weekly",
    # + start_date, catchup=False, max_active_runs=1, default_args (owner, retries)
    **dag_settings(DAG_ID, tags=["ml", "retraining", "listing-classifier"], doc_md=__doc__,
                   retry_delay=timedelta(minutes=2)),
    params={
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100, title="Training epochs",
                        description="Epochs of this run's training (empty: params.yaml's train.epochs)."),
        "backbone": Param(None, type=["null", "string"],
                          enum=[None, "resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_large",
                                "convnext_tiny"],
                          values_display={None: "params.yaml's train.backbone (default)"},
                          title="Image backbone",
                          description="torchvision image backbone (empty: params.yaml's train.backbone)."),
        "branches": Param(None, type=["null", "string"], enum=[None, "fused", "image", "text"],
                          values_display={None: "params.yaml's train.branches (default)",
                                          "fused": "fused: image + title (+ structured)",
                                          "image": "image only", "text": "title only"},
                          title="Model branches",
                          description="Fused, image-only or text-only model (empty: params.yaml's train.branches)."),
        "min_improvement": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                 title="Minimum improvement over the champion",
                                 description="Business-weighted score the challenger must gain over the "
                                             "champion, 0 to 1 (empty: params.yaml's gate.min_improvement)."),
        "max_batches": Param(None, type=["null", "integer"], minimum=1, title="Feed batches, at most",
                             description="New feed batches this run ingests, at most; the rest wait for "
                                         "the next run (empty: params.yaml's ingest.max_batches)."),
        # ["boolean", "null"]: Airflow's form marks a Param required unless its type admits null,
        # and a toggle always has a value; null (from the REST API) means off
        "retrain": Param(False, type=["boolean", "null"], title="Retrain even with nothing new",
                         description="On: train, register and gate even when this run accepts no new "
                                     "listing (after a params or taxonomy change). Off: a run with "
                                     "nothing new stops after versioning and says so."),
        "full_retrain": Param(False, type=["boolean", "null"], title="Train on the whole store",
                              description="On: this run trains on every listing of the store. Off: "
                                          "a run from the champion trains on the new listings plus "
                                          "a replay sample of earlier ones (train.replay_size), and "
                                          "on the whole store every train.full_retrain_every runs."),
        "require_approval": Param(False, type=["boolean", "null"], title="Require a human approval",
                                  description="On: a reviewer approves in Airflow (HITL) before the "
                                              "champion alias moves. Off: the gate decides alone."),
    },
)
def listing_classifier_retraining():
    @task
    def ingest(params=None, data_interval_end=None, logical_date=None) -> dict:
        from common.params import run_params
        from common.state import State
        from ingestion.ingest import ingest_new_batches

        cutoff = data_interval_end or logical_date
        return ingest_new_batches(State.from_env(), run_params(params), cutoff).to_xcom()

    @task
    def plan_image_checks(ingested: dict, params=None) -> list[dict]:
        from common.params import run_params
        from common.results import IngestResult
        from common.state import State
        from validation.image_shards import plan_image_shards

        shards = plan_image_shards(State.from_env(), run_params(params), IngestResult.from_xcom(ingested).staged)
        return [shard.to_xcom() for shard in shards]

    # mapped: one task instance per shard, spread over the workers; the label names the shard
    @task(map_index_template="{{ shard_label }}")
    def check_images(shard: dict, params=None) -> dict:
        from airflow.sdk import get_current_context

        from common.params import run_params
        from common.state import State
        from validation.image_shards import ImageShard, check_image_shard

        piece = ImageShard.from_xcom(shard)
        get_current_context()["shard_label"] = f"{piece.batch_id} [{piece.start}:{piece.stop}]"
        return check_image_shard(State.from_env(), run_params(params), piece).to_xcom()

    # the reduce step: duplicates, GX, routing and the store, batch after batch (none_failed:
    # it runs when nothing was staged, so no shard was mapped)
    @task(trigger_rule="none_failed")
    def validate(ingested: dict, params=None) -> dict:
        from common.params import run_params
        from common.results import IngestResult
        from common.state import State
        from validation.staged import validate_staged_batches

        batches = IngestResult.from_xcom(ingested)
        return validate_staged_batches(State.from_env(), run_params(params), batches.staged,
                                       batches.refused).to_xcom()

    @task
    def version_data(validated: dict, params=None) -> dict:
        from common.params import run_params
        from common.results import ValidateResult
        from common.state import State
        from ingestion import versioning

        note = " ".join(ValidateResult.from_xcom(validated).stored_batches)
        return versioning.version_data(State.from_env(), run_params(params), note=note).to_xcom()

    @task
    def monitor(validated: dict, params=None) -> dict:
        from common.params import run_params
        from common.results import ValidateResult
        from common.state import State
        from monitoring.candidates import candidate_groups
        from monitoring.fresh_batch import score_champion_on_fresh

        state, run, batches = State.from_env(), run_params(params), ValidateResult.from_xcom(validated).stored_batches
        result = score_champion_on_fresh(state, run, batches).to_xcom()
        candidate_groups(state, run, batches)  # held-back listings grouped for a taxonomy decision
        return result

    @task
    def plan_embedding(validated: dict, data: dict, params=None) -> list[dict]:
        from common.params import run_params
        from common.results import ValidateResult
        from common.state import State
        from training.embed_shards import plan_embed_shards

        shards = plan_embed_shards(State.from_env(), run_params(params),
                                   ValidateResult.from_xcom(validated).stored_batches)
        return [shard.to_xcom() for shard in shards]

    # mapped: one task instance per shard of the week's new images (frozen encoder), spread over
    # the workers, at most LCP_EMBED_CONCURRENCY at once (each loads the encoder); the embed
    # stage of train_evaluate is the reduce step (it finds them cached)
    @task(map_index_template="{{ shard_label }}", max_active_tis_per_dagrun=embed_concurrency())
    def embed_images(shard: dict, params=None) -> dict:
        from airflow.sdk import get_current_context

        from common.params import run_params
        from common.state import State
        from training.embed_shards import EmbedShard, embed_shard

        piece = EmbedShard.from_xcom(shard)
        get_current_context()["shard_label"] = f"{piece.batch_id} [{piece.start}:{piece.stop}]"
        return embed_shard(State.from_env(), run_params(params), piece).to_xcom()

    @task.branch
    def retrain_decision(validated: dict, data: dict, params=None, ti=None) -> str | None:
        from common.params import run_params
        from common.results import DataVersionResult, ValidateResult
        from common.state import State
        from promotion.retrain import decide_retrain

        decision = decide_retrain(State.from_env(), run_params(params), ValidateResult.from_xcom(validated),
                                  DataVersionResult.from_xcom(data), bool((params or {}).get("retrain")))
        ti.xcom_push(key="decision", value=decision.to_xcom())
        return "train_evaluate" if decision.retrain else None  # None: every training task skipped

    # none_failed: it runs when no image needed embedding (no shard was mapped)
    @task(execution_timeout=timedelta(hours=3), trigger_rule="none_failed")
    def train_evaluate(data: dict) -> dict:
        from common.results import DataVersionResult
        from common.state import State
        from training.pipeline import run_pipeline

        return run_pipeline(State.from_env(), note=DataVersionResult.from_xcom(data).data_rev[:10]).to_xcom()

    @task
    def register(data: dict, trained: dict, validated: dict, params=None, dag=None, run_id=None) -> dict:
        from common.params import run_params
        from common.results import DataVersionResult, ReproduceResult, ValidateResult
        from common.state import State
        from promotion.register import register_challenger

        return register_challenger(
            State.from_env(), run_params(params), DataVersionResult.from_xcom(data),
            ReproduceResult.from_xcom(trained).workspace_commit, dag.dag_id, run_id,
            validation=ValidateResult.from_xcom(validated)).to_xcom()

    # the decision is logged first by gate_challenger; the whole result is in XCom, not the log
    @task(show_return_value_in_logs=False)
    def gate(registered: dict, data: dict, params=None) -> dict:
        from common.params import run_params
        from common.results import DataVersionResult, RegisterResult
        from common.state import State
        from promotion.promote import gate_challenger

        return gate_challenger(State.from_env(), run_params(params), RegisterResult.from_xcom(registered).version,
                               DataVersionResult.from_xcom(data).golden_rev).to_xcom()

    @task.branch
    def needs_approval(decision: dict, params=None) -> str:
        from common.results import GateResult

        wanted = bool((params or {}).get("require_approval"))
        return "approval" if wanted and GateResult.from_xcom(decision).promote else "promote"

    @task(trigger_rule="none_failed_min_one_success")
    def promote(decision: dict, params=None) -> dict:
        from common.params import run_params
        from common.results import GateResult
        from common.state import State
        from promotion.promote import promote as move_alias

        return move_alias(State.from_env(), run_params(params), GateResult.from_xcom(decision)).to_xcom()

    @task(trigger_rule="none_failed_min_one_success")
    def review(decision: dict, params=None, ti=None) -> dict:
        from common.params import run_params
        from common.results import GateResult
        from common.state import State
        from promotion.promote import record_review

        approval_result = ti.xcom_pull(task_ids="approval", key="response", default=None)
        return record_review(State.from_env(), run_params(params), GateResult.from_xcom(decision), approval_result,
                             bool((params or {}).get("require_approval"))).to_xcom()

    ingested = ingest()
    @task(trigger_rule="none_failed_min_one_success")
    def collect_garbage(params=None) -> dict:
        from common.params import run_params
        from common.state import State
        from promotion.collect import collect_garbage as collect

        return collect(State.from_env(), run_params(params)).to_xcom()

    checked = check_images.expand(shard=plan_image_checks(ingested))
    validated = validate(ingested)
    checked >> validated
    data = version_data(validated)
    # the champion on this week's fresh listings, before anything is retrained on them
    monitor(validated) >> data
    # a week with nothing new stops here: train_evaluate and everything after it is skipped
    trained = train_evaluate(data)
    retrain_decision(validated, data) >> trained
    # frozen encoder: the week's new images embedded by mapped tasks before dvc repro
    embed_images.expand(shard=plan_embedding(validated, data)) >> trained
    registered = register(data, trained, validated)
    registered.operator.operator_extra_links = REGISTER_LINKS
    decision = gate(registered, data)
    # A rejection skips `promote` (its direct downstream); `review` still records it.
    approval = RecordedApprovalOperator(
        task_id="approval",
        subject="Promote listing-classifier v{{ ti.xcom_pull(task_ids='gate')['version'] }} to champion?",
        body="{{ ti.xcom_pull(task_ids='gate')['reason'] }}\n\nThe full comparison is the model "
             "version's description in the MLflow UI.",
        # an unanswered request must not hold every later weekly run (max_active_runs=1):
        # after 3 days the scheduler answers it with the default, Reject
        defaults="Reject",
        response_timeout=timedelta(days=3),
    )
    moved = promote(decision)
    moved.operator.operator_extra_links = PROMOTE_LINKS
    needs_approval(decision) >> [approval, moved]
    approval >> moved
    moved >> review(decision) >> collect_garbage()


listing_classifier_retraining()
