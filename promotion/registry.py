"""MLflow tracking and Model Registry access, and the version scoring both gate sides share."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.label_issues import (
    PROBS_MAX_BYTES,
    ProbabilityTable,
    read_probabilities,
    write_probabilities,
)
from common.params import Params
from common.scoring import business_weighted_score, listing_credits
from common.state import State
from common.store import image_path
from common.tracking import (  # noqa: F401 (re-exported: the registry's names)
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    alias_version,
    mlflow_client,
)
from promotion.gate import PerListing, per_listing

log = logging.getLogger(__name__)


TAG_VALUE_CHARS = 4900
"""Longest tag value written (MLflow's limit on a model version tag value is 5,000 characters)."""
DESCRIPTION_CHARS = 4900
"""Longest model version description written (the SQL registry stores at most 5,000 characters;
``mlflow.store.model_registry.dbmodels.models``: ``description = Column(String(5000))``)."""

VERSION_TAGS = ("decision", "reason", "candidate_score", "champion_score", "champion_version", "delta",
                "data_rev", "workspace_commit", "mlflow_run_id", "airflow_run_id")
"""The tags a model version carries for a reviewer to filter by: the decision, the scores and the
delta, the data revision, the run ids (plus, when they happen, the events ``approval``/
``approval_by``, ``promoted_from``, ``superseded_by`` and ``rollback_*``). Short values only: the
MLflow UI's version table shows them in one narrow column. Everything else (the delta's interval, the golden revision, the encoder and its weights) is in the description, on
the run (its tags, ``lineage/``, ``comparison/``)."""
EMPTY_TAG_VALUES = frozenset({"", "none", "None", "null", "nan"})
"""Values that say "nothing": such a tag is not written (an empty field has no tag)."""


def set_version_tags(client, name: str, version: str, tags: dict) -> dict[str, str]:
    """Writes the :data:`VERSION_TAGS` among ``tags`` on a model version.

    A key outside :data:`VERSION_TAGS` is not written (it belongs on the run). An empty value
    (None or one of :data:`EMPTY_TAG_VALUES`) is not written either, and removes the tag a
    retried or repeated gate had left under that key: the version table never shows
    ``none``/``None``.

    Returns:
        ``{key: value}`` of the tags written.
    """
    current = client.get_model_version(name, version).tags
    written = {}
    for key in VERSION_TAGS:
        if key not in tags:
            continue
        value = tags[key]
        if value is None or str(value).strip() in EMPTY_TAG_VALUES:
            if key in current:
                client.delete_model_version_tag(name, version, key)
            continue
        written[key] = str(value)[:TAG_VALUE_CHARS]
        client.set_model_version_tag(name, version, key, written[key])
    return written


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""Experiment tag MLflow 3's UI reads to choose an experiment's view (the JS bundle's
``ExperimentKind`` enum; the UI itself writes it from the experiment's "type" selector)."""
EXPERIMENT_KIND = "custom_model_development"
"""Our experiment trains models: its page opens on the runs, not on the GenAI view (traces,
token dashboards), where an experiment without the tag can land."""


def ensure_experiment(state: State, params: Params) -> str:
    """The experiment id, created with its artifacts in the state folder if missing.

    The experiment carries :data:`EXPERIMENT_KIND_TAG` = :data:`EXPERIMENT_KIND`; an existing
    experiment without it (made before the tag was set) gets it here.
    """
    import mlflow

    client = mlflow_client(state)
    exp = client.get_experiment_by_name(params.registry.experiment)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if state.tracking_uri.startswith("sqlite:"):
        location = state.artifact_root.as_uri()
    return mlflow.create_experiment(params.registry.experiment, artifact_location=location,
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def record_run(client, experiment_id: str, tag: str, value: str, run_name: str, note: str) -> str:
    """The id of a run that holds a record (one per ``tag`` = ``value``), created on first use.

    Such a run (the season table, the champion's weekly monitoring) trains nothing and is never
    "running": it is left ``FINISHED`` and its metrics and artifacts are added to it later
    (MLflow accepts them on an ended run). A record run left ``RUNNING`` by an older version is
    ended here.

    Args:
        client: an ``MlflowClient``.
        experiment_id: the experiment of the run.
        tag, value: the run tag that finds the run again.
        run_name: its name on a new run.
        note: its description (``mlflow.note.content``) on a new run.
    """
    from mlflow.entities import RunStatus

    runs = client.search_runs([experiment_id], f"tags.`{tag}` = '{value}'", max_results=1)
    if runs:
        run = runs[0].info
        if run.status == RunStatus.to_string(RunStatus.RUNNING):
            client.set_terminated(run.run_id, "FINISHED")
        return run.run_id
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={tag: value, "mlflow.note.content": note}).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return run_id


def golden_frame(state: State) -> pd.DataFrame:
    """The golden test set as model input: ``title``, ``image_path`` plus ``listing_id`` and
    ``category_path`` (the truth), one row per golden listing."""
    golden = pd.read_parquet(state.golden_dir / "golden.parquet")
    golden["image_path"] = [str(image_path(state.listings_store, k)) for k in golden["image_key"]]
    return golden


def score_version(state: State, params: Params, version: str, golden: pd.DataFrame,
                  golden_rev: str) -> tuple[dict, PerListing]:
    """Scores a registered model version on the golden set, through its served pyfunc.

    Both the challenger and the champion go through this function, on the same golden frame,
    so the gate compares like with like; a champion's stored metrics are never trusted across
    golden revisions. The predictions are cached on the version's run, keyed by the golden
    revision: the artifact ``golden_predictions/<golden_rev>.csv`` (``listing_id,
    predicted_path, probability, auto``), from which the summary, the paired bootstrap, the slice
    checks and the coverage are computed. A cache that is missing, unreadable, of the format
    before ``auto`` (no such column) or whose listing ids differ from the golden frame's is
    ignored, and the version's predictions come from its per-listing cache
    (:data:`LISTING_CACHE`): only golden listings it has not scored before (or whose inputs
    changed) go through the model.

    Coverage comes from the served ``auto`` column, i.e. the version's *own* stored calibration
    and threshold (``training.calibration``); a version whose served output has no ``auto``
    column (registered before calibration) has coverage None (an empty ``auto`` in the cache).

    Args:
        state: the state folder.
        params: the params (``registry.model_name``, ``score``).
        version: the model version to score.
        golden: :func:`golden_frame`.
        golden_rev: the DVC hash of the golden set.

    Returns:
        ``(summary, per_listing)``: ``{"business_weighted_score", "accuracy", "n", "version",
        "golden_rev", "coverage", "auto_precision", "value_coverage"}`` (the last three None
        without a stored threshold; ``auto_precision`` None when nothing is auto-categorised)
        and the per-listing results in golden order.

    Raises:
        RuntimeError: when the version cannot be loaded or fails to predict.
        mlflow.exceptions.MlflowException: when the registry cannot be reached.
    """
    import mlflow

    client = mlflow_client(state)
    name = params.registry.model_name
    artifact = f"golden_predictions/{golden_rev}.csv"
    mv = client.get_model_version(name, version)
    ids = [str(i) for i in golden["listing_id"]]
    true_paths = list(golden["category_path"])
    pred_paths, probability, auto = None, None, None
    if mv.run_id:
        try:
            cached = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{artifact}")),
                                 dtype=str, keep_default_na=False)
            if cached["listing_id"].tolist() == ids and "auto" in cached.columns:
                pred_paths = cached["predicted_path"].tolist()
                probability = cached["probability"].astype(float).tolist()
                auto = None if (cached["auto"] == "").all() else (cached["auto"] == "True").tolist()
        except Exception:  # a missing or unreadable cache only costs a re-score
            pred_paths = None
    fresh = pred_paths is None
    if fresh:
        pred_paths, probability, auto = _predict_through_cache(client, name, version, mv.run_id, golden, golden_rev)
    s = params.score
    values, credits = listing_credits(true_paths, pred_paths, s.value_table, s.level_credit, s.default_value)
    listings = per_listing(ids, true_paths, pred_paths, values, credits)
    result = {
        "business_weighted_score": business_weighted_score(true_paths, pred_paths, s.value_table,
                                                           s.level_credit, s.default_value),
        "accuracy": float(sum(p == t for p, t in zip(pred_paths, true_paths, strict=True)) / len(true_paths)),
        "n": len(true_paths),
        "version": str(version),
        "golden_rev": golden_rev,
        **_coverage(auto, pred_paths, true_paths, values),
    }
    if fresh and mv.run_id:
        frame = pd.DataFrame({"listing_id": ids, "predicted_path": pred_paths, "probability": probability,
                              "auto": auto if auto is not None else [""] * len(ids)})
        client.log_text(mv.run_id, frame.to_csv(index=False), artifact)
    return result, listings


EVALUATED = "evaluation/predictions.csv"
"""On a registered run: the evaluate stage's ``reports/predictions.csv`` (``promotion.register``)."""
PROBE_ROWS = 32
"""Evaluate-stage predictions checked against the served model before a gate uses them."""
LISTING_CACHE = "golden_predictions/by_listing.parquet"
"""A version's predictions per golden listing, on its run: ``key`` (:func:`listing_keys`),
``predicted_path``, ``probability``, ``auto`` ("" when the version serves no flag)."""


def listing_keys(listings: pd.DataFrame) -> list[str]:
    """:func:`training.serving.listing_keys` (a key per listing that changes when anything the
    served model reads of it changes)."""
    from training.serving import listing_keys as keys

    return keys(listings)


def _evaluated(client, run_id: str, golden: pd.DataFrame, golden_rev: str, keys: list[str]) -> pd.DataFrame:
    """The evaluate stage's golden predictions of a run (its ``evaluation/predictions.csv``,
    what ``register`` logs: the served path, on the cached images or embeddings) as cache rows,
    when the run was trained on this golden revision (its ``golden_rev`` tag); else empty."""
    import mlflow

    if client.get_run(run_id).data.tags.get("golden_rev") != golden_rev:
        return pd.DataFrame(columns=["predicted_path", "probability", "auto"])
    frame = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{EVALUATED}")),
                        dtype={"listing_id": str, "predicted_path": str, "auto": str}, keep_default_na=False)
    key_of = dict(zip(golden["listing_id"].astype(str), keys, strict=True))
    frame = frame[frame["listing_id"].isin(key_of)]
    return pd.DataFrame({"predicted_path": frame["predicted_path"].tolist(),
                         "probability": frame["probability"].astype(float).tolist(),
                         "auto": frame["auto"].tolist()}, index=[key_of[i] for i in frame["listing_id"]])


def _predict_through_cache(client, name: str, version: str, run_id: str | None,
                           golden: pd.DataFrame, golden_rev: str) -> tuple[list[str], list[float], list[bool] | None]:
    """The version's served predictions on ``golden``: the listings its run's
    :data:`LISTING_CACHE` holds (same key) are read from it, only the others are predicted
    through its pyfunc, and the cache is written back with them. A week's gate therefore scores
    the champion on the golden listings added since its last gate, not on the whole set.

    A challenger without a cache starts it from its own evaluate stage's predictions when it was
    evaluated on this golden revision (:func:`_evaluated`), after a probe: :data:`PROBE_ROWS`
    of them, spread over the golden set, are predicted through the pyfunc and must agree (path,
    ``auto`` flag, probability within 1e-3); otherwise (a checkpoint changed after evaluate, a
    version served without ``auto``) they are discarded and every listing is predicted.

    Raises:
        RuntimeError: when the version cannot be loaded or fails to predict.
    """
    import tempfile

    import mlflow

    from training.serving import model_input

    keys = listing_keys(golden)
    model = None

    def predict(rows: list[int]) -> pd.DataFrame:
        nonlocal model
        try:
            model = model or mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            predicted = model.predict(model_input(golden.iloc[rows]))
        except Exception as exc:  # any failure to load or predict must stop the gate
            raise RuntimeError(f"model version {name}/{version} cannot be loaded or scored: {exc}") from exc
        if len(predicted) != len(rows):
            raise RuntimeError(f"model version {name}/{version} returned {len(predicted)} predictions "
                               f"for {len(rows)} golden listings")
        return pd.DataFrame({"predicted_path": [str(p) for p in predicted["category_path"]],
                             "probability": [float(p) for p in predicted["probability"]],
                             "auto": ([str(bool(a)) for a in predicted["auto"]] if "auto" in predicted.columns
                                      else [""] * len(rows))}, index=[keys[i] for i in rows])

    cache = pd.DataFrame(columns=["key", "predicted_path", "probability", "auto"])
    if run_id:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cache = pd.read_parquet(mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=LISTING_CACHE, dst_path=tmp))
        except Exception:  # noqa: BLE001 -- no cache yet, or unreadable: the listings are predicted
            pass
    cache = cache.drop_duplicates("key", keep="last").set_index("key")
    seeded, probed = 0, 0
    if run_id and cache.empty:
        try:
            evaluated = _evaluated(client, run_id, golden, golden_rev, keys)
        except Exception as exc:  # noqa: BLE001 -- no evaluate predictions: the listings are predicted
            log.info("%s v%s: no evaluate predictions to start from (%s)", name, version, exc)
            evaluated = pd.DataFrame()
        if len(evaluated):
            known = [i for i, k in enumerate(keys) if k in evaluated.index]
            n = min(PROBE_ROWS, len(known))
            probe = predict(sorted({known[j * len(known) // n] for j in range(n)}))  # spread over the set
            probed, ref = len(probe), evaluated.loc[probe.index]
            if ((probe["predicted_path"] == ref["predicted_path"]).all() and (probe["auto"] == ref["auto"]).all()
                    and np.allclose(probe["probability"], ref["probability"].astype(float), atol=1e-3)):
                cache, seeded = pd.concat([evaluated.drop(index=probe.index), probe]), len(evaluated) - len(probe)
            else:
                log.warning("%s v%s: its evaluate stage's golden predictions differ from what it serves on %d "
                            "probed listings: not used, every golden listing is predicted", name, version,
                            len(probe))
                cache = probe
    missing = [i for i, k in enumerate(keys) if k not in cache.index]
    if missing:
        cache = pd.concat([cache, predict(missing)])
    if run_id and (missing or probed):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(LISTING_CACHE).name
            cache.rename_axis("key").reset_index().to_parquet(path, index=False)
            client.log_artifact(run_id, str(path), str(Path(LISTING_CACHE).parent))
    # DEBUG: the gate's first line in a task log is its decision (a reviewer reads it first)
    log.debug("%s v%s on %d golden listings: %d from its prediction cache (%d of them from its evaluate "
              "stage, %d probed), %d predicted", name, version, len(keys), len(keys) - len(missing) - probed,
              seeded, probed, len(missing) + probed)
    scored = cache.loc[keys]
    auto = None if (scored["auto"] == "").all() else (scored["auto"] == "True").tolist()
    return scored["predicted_path"].tolist(), scored["probability"].astype(float).tolist(), auto


PROBABILITY_CACHE = "golden_predictions/probabilities.npz"
"""A version's class probabilities per golden listing, on its run (:func:`golden_probabilities`;
:func:`common.label_issues.write_probabilities`: listing keys, float16 rows, classes)."""
EVALUATED_PROBS = "evaluation/golden_probs.npz"
"""On a registered run: the evaluate stage's ``reports/golden_probs.npz`` (``promotion.register``)."""


def _read_table(run_id: str, artifact: str) -> ProbabilityTable | None:
    """A run's probability table artifact; None when it has none or it cannot be read (logged)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        except Exception:  # noqa: BLE001 -- not logged (the stores raise their own error types)
            return None
        try:
            return read_probabilities(Path(path))
        except (OSError, ValueError) as exc:
            log.warning("run %s: %s ignored: %s", run_id, artifact, exc)
            return None


def golden_probabilities(client, name: str, version: str, golden: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """A registered version's class probabilities on the golden listings (what golden label
    issues need: cleanlab reads every class's probability), predicting only the listings its
    run's :data:`PROBABILITY_CACHE` does not hold (same :func:`listing_keys` key): a week's gate
    predicts the champion on the golden listings added since, not on the whole set.

    A version without that cache starts it from its evaluate stage's table
    (:data:`EVALUATED_PROBS`, the golden set it was evaluated on), after a probe: :data:`PROBE_ROWS`
    of its rows, spread over it, are predicted through the checkpoint and must agree within 2e-3
    (two float16 steps);
    otherwise (a checkpoint changed after evaluate) the table is discarded.

    The probabilities are those of its checkpoint (``model.pt`` in its model artifacts) loaded
    as the pyfunc loads it (:func:`training.inference.load_checkpoint`,
    :func:`training.inference.predict_paths`), float16 whether they come from a table or were
    just predicted. The cache is written back (the current golden listings only) unless it would
    pass :data:`common.label_issues.PROBS_MAX_BYTES`; a table of other classes is ignored.

    Returns:
        ``(probs, classes)``: float32 ``(N, C)`` probabilities in ``golden``'s row order (float16
        precision: about 3 significant digits), the C category paths.

    Raises:
        RuntimeError: when the version cannot be fetched or loaded.
        ValueError: when the golden set is empty, or an image cannot be read (the row is named).
    """
    import tempfile

    import mlflow

    from training.inference import load_checkpoint, predict_paths

    if golden.empty:
        raise ValueError("the golden set is empty")
    keys = listing_keys(golden)
    run_id = client.get_model_version(name, version).run_id
    loaded = None

    def predict(rows: list[int]) -> np.ndarray:
        nonlocal loaded
        if loaded is None:
            try:
                local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
                loaded = load_checkpoint(next(local.rglob("model.pt")))
            except Exception as exc:  # any failure to fetch or load the version
                raise RuntimeError(f"version {version} of {name} cannot be loaded: {exc}") from exc
        frame = golden.iloc[rows]
        _, probs = predict_paths(loaded, frame, frame["image_path"].tolist())
        return probs.astype(np.float16)

    table = _read_table(run_id, PROBABILITY_CACHE) if run_id else None
    seeded = probed = 0
    if table is None and run_id and (seed := _read_table(run_id, EVALUATED_PROBS)) is not None:
        row_of = {k: i for i, k in enumerate(seed.keys)}
        known = [i for i, k in enumerate(keys) if k in row_of]
        if known:
            n = min(PROBE_ROWS, len(known))
            rows = sorted({known[j * len(known) // n] for j in range(n)})  # spread over the set
            probe = predict(rows)
            probed = len(rows)
            ref = seed.probs[[row_of[keys[i]] for i in rows]]
            if list(loaded.labels) == seed.classes and np.allclose(probe.astype(np.float32), ref.astype(np.float32),
                                                                   atol=2e-3):
                table, seeded = seed, len(known)
            else:
                log.warning("%s v%s: its evaluate stage's golden probabilities differ from its checkpoint's on %d "
                            "probed listings: not used", name, version, probed)
    row_of = {k: i for i, k in enumerate(table.keys)} if table is not None else {}
    missing = [i for i, k in enumerate(keys) if k not in row_of]
    fresh = predict(missing) if missing else None
    if table is not None and loaded is not None and list(loaded.labels) != table.classes:
        log.warning("%s v%s: golden probability cache of other classes ignored", name, version)
        table, row_of, missing = None, {}, list(range(len(keys)))
        fresh = predict(missing)
    classes = list(loaded.labels) if loaded is not None else table.classes
    out = np.empty((len(keys), len(classes)), dtype=np.float16)
    if missing:
        out[missing] = fresh
    known = [i for i, k in enumerate(keys) if k in row_of]
    if known:
        out[known] = table.probs[[row_of[keys[i]] for i in known]]
    log.info("%s v%s golden probabilities on %d listings: %d from its cache (%d of them from its evaluate stage, "
             "%d probed), %d predicted", name, version, len(keys), len(known), seeded, probed, len(missing))
    if run_id and (missing or seeded or table is None or len(table.keys) != len(keys)):
        if out.nbytes > PROBS_MAX_BYTES:
            log.info("%s v%s: golden probabilities (%d x %d, %d bytes as float16) not cached: over %d bytes, "
                     "the whole golden set is predicted each time", name, version, *out.shape, out.nbytes,
                     PROBS_MAX_BYTES)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(PROBABILITY_CACHE).name
                write_probabilities(path, ProbabilityTable(keys, out, classes))
                client.log_artifact(run_id, str(path), str(Path(PROBABILITY_CACHE).parent))
    return out.astype(np.float32), classes


def _coverage(auto: list[bool] | None, pred_paths: list[str], true_paths: list[str], values) -> dict:
    """Golden ``coverage``, ``auto_precision`` and ``value_coverage`` of the served ``auto`` flags
    (as ``training.calibration.coverage_figures``; ``values`` are ``v(y_i)``); all None without."""
    if auto is None:
        return {"coverage": None, "auto_precision": None, "value_coverage": None}
    flags = [bool(a) for a in auto]
    hits = [p == t for p, t, a in zip(pred_paths, true_paths, flags, strict=True) if a]
    total = float(sum(values))
    return {"coverage": sum(flags) / len(flags) if flags else 0.0,
            "auto_precision": sum(hits) / len(hits) if hits else None,
            "value_coverage": float(sum(v for v, a in zip(values, flags, strict=True) if a)) / total
            if total > 0 else 0.0}


def artifact_file(path: Path) -> str | None:
    """``str(path)`` if the file exists, else None."""
    return str(path) if Path(path).exists() else None
