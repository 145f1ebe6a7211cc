"""What each step of the retraining DAG returns: one small typed result per step.

A step function (``ingestion.ingest.ingest_new_batches``, ``validation.staged.
validate_staged_batches``, ``ingestion.versioning.version_data``, ``training.pipeline.run_pipeline``,
``promotion.register.register_challenger``, ``promotion.promote.gate_challenger``, ``promote``,
``record_review``) returns its result object. The DAG task returns :meth:`StepResult.to_xcom`, a
dict of JSON types holding small references (batch ids, paths, revisions, run ids, counts), and
the task of the next step rebuilds the object with :meth:`StepResult.from_xcom`, which checks
the shape: a missing or unknown key raises ``pydantic.ValidationError`` (a ``ValueError``)
naming it. Step functions take these objects, or the fields they read, never XCom dicts.

Only pydantic and the standard library are imported here, so every step module and every task
can import this module without importing the other steps. ``common`` imports nothing of the
packages above it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class StepResult(BaseModel):
    """Base of the step results: frozen, no extra keys, JSON types in and out.

    Attributes:
        LOCAL: fields kept out of :meth:`to_xcom` (too big for XCom; the step's CLI prints them,
            and the state holds them, e.g. the manifest's validation reports).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    LOCAL: ClassVar[frozenset[str]] = frozenset()

    def to_xcom(self) -> dict[str, Any]:
        """The references the next steps read, as JSON types (tuples become lists).

        Returns:
            Every field but :attr:`LOCAL`.
        """
        return self.model_dump(mode="json", exclude=set(self.LOCAL))

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON types, :attr:`LOCAL` ones included (what the step's CLI prints).

        Returns:
            A dict ``json.dumps`` writes (strings may hold the lone surrogates of a batch name
            that was not UTF-8; ``json.dumps`` escapes them).
        """
        return self.model_dump(mode="json")

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> Self:
        """Rebuilds the result from :meth:`to_xcom`'s dict (``LOCAL`` fields get their defaults).

        Raises:
            pydantic.ValidationError: when a key is missing or unknown, or a value has the
                wrong type.
        """
        return cls.model_validate(value)


class RefusedBatch(StepResult):
    """A batch the feed source refused at ingest, quarantined with its report.

    Attributes:
        batch_id: the batch folder's name as the feed lists it (may be unsafe as a path).
        reason: the refusal's code, e.g. ``batch_holds_link``.
        detail: the human explanation.
        report: path of its ``report.json`` in quarantine.
    """

    batch_id: str
    reason: str
    detail: str
    report: str


class IngestResult(StepResult):
    """``ingest``'s result (:func:`ingestion.ingest.ingest_new_batches`).

    Attributes:
        feed: the feed's URL (folder or ``s3://``).
        ingested: batch ids staged by this call, in the feed's order.
        staged: batch ids waiting for validation (this call's and earlier ones'), sorted.
        refused: the batches this call refused and quarantined.
        taxonomy: path of the feed's taxonomy copied to staging.
    """

    feed: str
    ingested: tuple[str, ...]
    staged: tuple[str, ...]
    refused: tuple[RefusedBatch, ...] = ()
    taxonomy: str


class ValidationFailure(BaseModel):
    """The exception that stopped one batch's validation (reason ``validation_error``).

    Attributes:
        stage: the step that raised: ``read``, ``parse``, ``images``, ``gx``, ``drift``,
            ``route`` or ``store``.
        type: the exception's class name, e.g. ``RecursionError``.
        message: its message (cut to 500 characters; the traceback is in the task log).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    type: str
    message: str


class BatchReport(BaseModel):
    """One batch's validation report: ``report.json`` in quarantine and the manifest's ``report``.

    Built by :func:`validation.validate.validate_batch` (or by ingest for a batch it refused)
    and read by attribute wherever a report is read (the manifest's entries hold its JSON:
    :meth:`from_entry`). Reading is lenient (unknown keys of older reports are dropped, absent
    ones take their defaults); what is written always has every field.

    Attributes:
        batch_id: the batch.
        status: ``accepted``, ``partial`` or ``quarantined``.
        rows: rows read from the listings file (0 when it could not be read).
        accepted_rows: rows written to the store.
        rejected_rows: rows quarantined (all rows when the batch is quarantined whole).
        bad_row_fraction: share of rows failing a row-level check, or None when not reached.
        reasons: reason code (:data:`validation.reasons.REASONS`) -> rows failing it.
        batch_reasons: why the whole batch was quarantined (``"<code>: <detail>"``), if it was.
        failed_expectations: the failed GX expectations (``expectation``, ``column``,
            ``unexpected_count``, ``reason``, optional ``error``), drift excluded.
        drift: :func:`validation.drift.drift_summary`, or None when GX did not run.
        warnings: unknown categories, relabels, retired categories, drift over a threshold.
        relabels: accepted listings whose category differs from their stored version.
        retired_rows: accepted rows of a retired category.
        validation_id: the GX validation result id, or None.
        data_docs: the Data Docs index path, or None.
        data_docs_page: the batch's Data Docs validation page, or None.
        store_file: the store partition's table, or None.
        rejected_file: ``rejected.csv``, or None.
        report: ``report.json``, or None when nothing was rejected.
        error: the exception that stopped validation (status quarantined, reason
            ``validation_error``), or None.
        source: the feed's URL, for a batch refused at ingest.
        released_from: for a release batch, the batch whose held-back rows it holds.
        released_to: the release batches that took this batch's held-back rows.
        neutralised_cells: the cells of ``rejected.csv`` written with a leading ``'`` so that a
            spreadsheet shows them as text (CSV injection, :mod:`common.csv_safe`), with their
            raw values: ``{"row", "listing_id", "column", "value"}``.
    """

    model_config = ConfigDict(extra="ignore")

    batch_id: str
    status: Literal["accepted", "partial", "quarantined"] = "quarantined"
    rows: int = 0
    accepted_rows: int = 0
    rejected_rows: int = 0
    bad_row_fraction: float | None = None
    reasons: dict[str, int] = Field(default_factory=dict)
    batch_reasons: list[str] = Field(default_factory=list)
    failed_expectations: list[dict[str, Any]] = Field(default_factory=list)
    drift: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    relabels: list[dict[str, Any]] = Field(default_factory=list)
    retired_rows: int = 0
    validation_id: str | None = None
    data_docs: str | None = None
    data_docs_page: str | None = None
    store_file: str | None = None
    rejected_file: str | None = None
    report: str | None = None
    error: ValidationFailure | None = None
    source: str | None = None
    released_from: str | None = None
    released_to: list[str] = Field(default_factory=list)
    neutralised_cells: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def from_entry(cls, entry: dict[str, Any] | None) -> BatchReport | None:
        """The report a manifest entry holds (``entry["report"]``), or None when it has none."""
        raw = (entry or {}).get("report")
        return cls.model_validate(raw) if raw else None

    def to_json(self) -> dict[str, Any]:
        """Every field as JSON types (what ``report.json`` and the manifest hold)."""
        return self.model_dump(mode="json")


class ValidateResult(StepResult):
    """``validate``'s result (:func:`validation.staged.validate_staged_batches`).

    Attributes:
        accepted: batch ids accepted whole, sorted.
        partial: batch ids whose good rows were accepted and bad rows quarantined, sorted.
        quarantined: batch ids quarantined whole (at validation or refused at ingest), sorted.
        store_listings: listings in the store after validation (latest version of each id).
        data_docs: path of the Data Docs index, or None when no batch was validated now.
        validation_ids: ``{batch id: GX validation result id, or None}`` (lineage).
        reports: ``{batch id: report}`` (:class:`BatchReport`, as
            :func:`validation.validate.validate_batch` returns it); kept out of XCom (the
            manifest records each report).
        released: release batches of this run (``<origin batch>.release-<k>``): held-back
            listings whose category the taxonomy now has, validated again into their own store
            partition (:func:`validation.staged.release_held_back`), sorted. Their reports and
            GX ids are in ``reports`` and ``validation_ids``; not in :attr:`stored_batches`
            (that is the week's new batches, which the monitor task scores).
        released_listings: listings those release batches put into the store.
    """

    LOCAL: ClassVar[frozenset[str]] = frozenset({"reports"})

    accepted: tuple[str, ...]
    partial: tuple[str, ...]
    quarantined: tuple[str, ...]
    store_listings: int
    data_docs: str | None
    validation_ids: dict[str, str | None]
    reports: dict[str, BatchReport] = Field(default_factory=dict)
    released: tuple[str, ...] = ()
    released_listings: int = 0

    @property
    def stored_batches(self) -> tuple[str, ...]:
        """The batches with rows in the store: accepted and partial ones, sorted."""
        return tuple(sorted(self.accepted + self.partial))


class DataVersionResult(StepResult):
    """``version_data``'s result (:func:`ingestion.versioning.version_data`).

    Attributes:
        data_rev: the DVC workspace commit (40 hex digits) pinning store, golden set and code.
        listings_md5: the store's hash (:func:`ingestion.workspace.store_hash` of its partitions'
            DVC directory hashes; before 2026-12, ``data/listings.dvc``'s ``<md5>.dir``).
        golden_rev: DVC's hash of ``data/golden``, the golden test set both gate sides are
            scored on (``<md5>.dir``).
        remote: the DVC remote's URL.
        workspace: the workspace folder.
        added: DVC targets added by this call.
        pushed: DVC targets pushed by this call.
    """

    data_rev: str
    listings_md5: str
    golden_rev: str
    remote: str
    workspace: str
    added: tuple[str, ...] = ()
    pushed: tuple[str, ...] = ()


class ReproduceResult(StepResult):
    """``train_evaluate``'s result (:func:`training.pipeline.run_pipeline`, ``dvc repro``).

    Attributes:
        workspace_commit: the workspace commit after ``dvc repro`` (data + code + params +
            ``dvc.lock``), 40 hex digits.
        metrics: the workspace's ``metrics.json`` (evaluation on the golden set).
        workspace: the workspace folder.
    """

    workspace_commit: str
    metrics: dict[str, Any]
    workspace: str


class RegisterResult(StepResult):
    """``register``'s result (:func:`promotion.register.register_challenger`).

    The UI plugin (``plugins/listing_classifier_links.py``) reads ``version``, ``run_id`` and
    ``model_uri`` from this task's XCom.

    Attributes:
        version: the model version (a decimal string).
        run_id: the MLflow run that logged it.
        model_uri: ``models:/<name>/<version>``.
    """

    version: str
    run_id: str
    model_uri: str


class GateDecision(StepResult):
    """The gate's verdict and the figures behind it (:func:`promotion.gate.decide`).

    Attributes:
        promote: whether the champion alias should move to the candidate.
        decision: ``"promoted"`` or ``"rejected"`` (``"unchanged"`` only in a :class:`GateResult`
            whose challenger already is the champion).
        reason: one human-readable sentence per failed check, or why it passed.
        candidate_score: the candidate's business-weighted score on the golden set, in [0, 1].
        champion_score: the champion's, None on a first run.
        delta: ``candidate_score - champion_score``, None on a first run.
        required_improvement: the improvement the delta (or its lower bound) had to clear.
        interval: ``(low, high)`` bootstrap interval of the delta, None in point mode / first run.
        confidence: the interval's level.
        mode: ``"point"`` or ``"interval"``.
        first_run: True when there was no champion (only value thresholds applied).
        slices: every checked slice, as dicts of ``promotion.gate.SliceResult``.
        failing_slices: the categories of the failing slices.
        coverage: the coverage guardrail: ``candidate`` and ``champion`` (each ``coverage``,
            ``auto_precision``, ``value_coverage`` at their own stored thresholds), ``drop``
            (champion - candidate coverage), ``max_drop``, ``checked`` (False when skipped),
            ``passed`` (None when not checked) and ``note`` (why it was skipped, or its
            outcome); None when not compared.
    """

    promote: bool
    decision: Literal["promoted", "rejected", "unchanged"]
    reason: str
    candidate_score: float
    champion_score: float | None
    delta: float | None
    required_improvement: float | None = None
    interval: tuple[float, float] | None = None
    confidence: float | None = None
    mode: Literal["point", "interval"] = "point"
    first_run: bool = False
    slices: tuple[dict[str, Any], ...] = ()
    failing_slices: tuple[str, ...] = ()
    coverage: dict[str, Any] | None = None


class GateResult(GateDecision):
    """``gate``'s result (:func:`promotion.promote.gate_challenger`): the decision and its figures.

    The fields of :class:`GateDecision` (figures rounded as ``promotion.gate.Decision.to_dict``
    rounds them), plus the versions compared and what they were scored on. A challenger that
    already is the champion is ``"unchanged"``: nothing was compared (no interval, no slices).

    Attributes:
        version: the challenger's model version.
        champion_version: the champion's version when the gate ran, None on a first run.
        candidate_accuracy: the challenger's leaf accuracy, in [0, 1].
        champion_accuracy: the champion's, None on a first run.
        golden_rev: the golden set's DVC hash both sides were scored on.
        n_golden: golden listings scored.
        serving_check: ``{"ok", "detail", "seconds"}`` of the challenger's serving check, or
            None when it did not run (not promoted by the gate).
        leaves_without_golden: leaf categories of the store with no golden listing (the gate
            is blind to them; named in the report).
        experiment_id: the challenger's MLflow experiment (links), or None.
        golden_label_issues: golden listings flagged as likely mislabelled, for relabelling
            (``monitoring.label_issues.golden_suspects``: ``flagged``, ``checked``,
            ``scored_by``, ``artifact``; or ``error``), None when not computed.
    """

    version: str
    champion_version: str | None
    candidate_accuracy: float
    champion_accuracy: float | None
    golden_rev: str
    n_golden: int
    serving_check: dict[str, Any] | None = None
    leaves_without_golden: tuple[str, ...] = ()
    experiment_id: str | None = None
    golden_label_issues: dict[str, Any] | None = None


class PromoteResult(StepResult):
    """``promote``'s result (:func:`promotion.promote.promote`).

    The UI plugin reads ``champion`` from this task's XCom.

    Attributes:
        champion: the version holding ``champion`` after the step, None when there is none.
        moved: whether this call moved the alias.
        decision: the gate's decision it acted on.
    """

    champion: str | None
    moved: bool
    decision: str


class ReviewResult(StepResult):
    """``review``'s result (:func:`promotion.promote.record_review`).

    Attributes:
        version: the challenger's model version.
        approval: ``"approved"``, ``"rejected"``, ``"not required"`` (no review asked),
            ``"not needed"`` (the gate rejected it) or ``"missing"`` (required, no response:
            recorded as a rejection).
    """

    version: str
    approval: Literal["approved", "rejected", "not required", "not needed", "missing"]
