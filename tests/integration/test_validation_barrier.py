"""The exception barrier of batch validation: whatever raises while one batch is read, parsed,
checked, validated by GX, measured for drift or written to the store quarantines that batch
(reason ``validation_error``), leaves the store without it, and the other batches are validated.

Each stage is made to raise in turn, for the middle one of three real weekly batches (180 real
fashion listings, published and ingested the way the DAG does it), by wrapping the real function
the stage calls: the wrapper raises for the poison batch and calls the real one otherwise. The
store stage's wrapper raises *after* the real write, so the barrier must also remove a partition
already in place. No input is listed: this tests the invariant, not the inputs that broke it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from common.catalog import load_catalog
from common.params import load_params
from common.results import BatchReport
from common.state import State
from common.store import batch_ids, read_store
from ingestion.feed import publish
from ingestion.ingest import ingest_new_batches
from ingestion.manifest import read_manifest

pytestmark = pytest.mark.integration

BATCHES = ("fashion-2026-11-02", "fashion-2026-11-09", "fashion-2026-11-16")
POISON = BATCHES[1]


class InjectedFault(RuntimeError):
    """What the wrapped stage raises."""


@pytest.fixture(scope="module")
def staged(tmp_path_factory, fashion_dir) -> Path:
    """A state folder with three real weekly batches staged, none validated."""
    root = tmp_path_factory.mktemp("barrier")
    publish(fashion_dir, root / "feed", weeks=3, catalog=load_catalog("catalogs/fashion.yaml"), limit=180)
    state = State(root / "state")
    ingested = ingest_new_batches(state, load_params(), None, str(root / "feed"))
    assert tuple(ingested.staged) == BATCHES
    return state.root


def _poisoned(real, is_poison, after: bool = False):
    def wrapper(*args, **kwargs):
        if is_poison(*args, **kwargs):
            if after:
                real(*args, **kwargs)
            raise InjectedFault("injected fault for the test")
        return real(*args, **kwargs)
    return wrapper


def _calls(n: int):
    """A predicate true on the n-th call (1-based): for a stage that is not told the batch id."""
    seen = [0]

    def nth(*_args, **_kwargs) -> bool:
        seen[0] += 1
        return seen[0] == n
    return nth


STAGES = {
    # stage: (module, function, predicate on its arguments, raise after the real call)
    "read": ("validation.validate", "read_listings_file", lambda path: POISON in str(path), False),
    "parse": ("validation.validate", "to_canonical", lambda raw, catalog, batch_id, *a: batch_id == POISON, False),
    "images": ("validation.validate", "check_image", lambda batch_dir, *a: POISON in str(batch_dir), False),
    "gx": ("validation.checkpoint", "run_checkpoint", lambda frame, suite, gx_dir, run_name, *a: run_name == POISON, False),
    "drift": ("validation.validate", "drift_summary", _calls(2), False),
    "store": ("validation.validate", "write_partition", lambda store, batch_id, *a: batch_id == POISON, True),
    "data_docs": ("validation.data_docs", "record_decision", lambda gx_dir, report: report.batch_id == POISON, False),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_that_raises_quarantines_its_batch_and_the_others_go_on(
        stage: str, staged: Path, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    import importlib

    from validation.staged import validate_staged_batches

    state_root = tmp_path / "state"
    shutil.copytree(staged, state_root, symlinks=True)
    state = State(state_root)
    module, name, predicate, after = STAGES[stage]
    if stage == "drift":
        predicate = _calls(2)  # a fresh counter for each case
    target = importlib.import_module(module)
    monkeypatch.setattr(target, name, _poisoned(getattr(target, name), predicate, after))

    with caplog.at_level(logging.INFO):
        result = validate_staged_batches(state, load_params())

    # the poison batch: quarantined with validation_error, its stage, type and message
    assert POISON in result.quarantined
    report = result.reports[POISON]
    assert report.status == "quarantined"
    assert list(report.reasons) == ["validation_error"]
    assert report.error is not None
    assert (report.error.stage, report.error.type) == (stage, "InjectedFault")
    assert "injected fault" in report.error.message
    assert report.batch_reasons[0].startswith("validation_error: InjectedFault")
    saved = json.loads((state.quarantine / POISON / "report.json").read_text(encoding="utf-8"))
    assert saved["error"] == {"stage": stage, "type": "InjectedFault", "message": report.error.message}
    entry = read_manifest(state.manifest)[POISON]
    assert entry["status"] == "quarantined"
    assert BatchReport.from_entry(entry) == report
    # the traceback is in the task log, at ERROR
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and POISON in r.getMessage()]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is InjectedFault

    # the store holds nothing of it, and the other batches were validated and stored
    assert POISON not in batch_ids(state.listings_store)
    for other in (BATCHES[0], BATCHES[2]):
        assert other in result.accepted + result.partial
        assert other in batch_ids(state.listings_store)
    store = read_store(state.listings_store, ["listing_id", "batch_id"])
    assert POISON not in set(store["batch_id"])
    assert result.store_listings == len(store) > 0


def test_a_real_poison_record_never_raises(staged: Path, tmp_path: Path) -> None:
    """A JSON Lines batch whose record nests 100,000 levels deep (the finding that made
    ``python -m validation.staged`` fail on every retry): the batch is judged, never raised
    out of validation, and the batch after it is validated."""
    from validation.staged import validate_staged_batches

    state_root = tmp_path / "state"
    shutil.copytree(staged, state_root, symlinks=True)
    state = State(state_root)
    folder = state.staging / POISON
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder.chmod(0o755)
    listings = next(p for p in folder.iterdir() if p.name.startswith("styles."))
    deep = '{"id": ' + "[" * 100_000 + "]" * 100_000 + "}"
    listings.unlink()
    (folder / "styles.jsonl").write_text(deep + "\n", encoding="utf-8")

    result = validate_staged_batches(state, load_params())

    assert POISON in result.quarantined
    assert result.reports[POISON].status == "quarantined"
    assert BATCHES[2] in result.accepted + result.partial
