"""Weekly cost: what one week of the retraining DAG costs per task, as the store grows.

Builds a state folder whose listings store holds N listings made from the real rows of
``../shared/datasets/fashion-product-images`` (10,102 listings with images): copy ``k`` of a
row gets the id ``k * 1,000,000 + id`` and image bytes of its own (copy 0 the original JPEG,
copy ``k`` re-encoded at JPEG quality ``95 - (k - 1) % 40`` and cropped by ``(k - 1) // 40``
pixels), so content hashes never collapse two copies. The store is written directly as
partitions in the store's format (:func:`common.store.write_partition`, ``--weeks`` weekly
partitions), with a manifest entry per batch and a DVC-versioned workspace as ``version_data``
leaves them; images are made on ``--jobs`` processes. Unless ``--no-champion``, a first model is
trained on the store's first ``--champion-n`` listings (10,000), registered and promoted (not
timed), so the week warm-starts from a champion as the season's profile asks. A
``--quick-champion`` (16 px) is followed by a decode of the store at the week's image size into
the prepare stage's pixel cache (not timed), as a champion trained at that size leaves it.

Then one week with a new batch of B listings (the next copies: new ids, new bytes) published to
the feed runs through every task of ``listing_classifier_retraining`` in the DAG's order, each
calling the function its task calls, in a process of its own, with the season's training
profile (``profiles/season.yaml`` over ``params.yaml``, written to ``<state>/params.yaml``):
ingest, validate, monitor, version_data, train_evaluate, register, gate, promote. Per task it
prints the wall time of the process and of the step call, the peak resident memory (the task
process's ``VmHWM``, and the largest ``ru_maxrss`` of its children, e.g. ``dvc repro``'s
training), and the bytes and files added to the state folder. A built store serves one week:
the week changes it (new batch, new model version); build again to measure again.

Disk: a store of N listings takes about 8 KB an image three times (store, DVC cache, local
remote) plus the prepared arrays: ~0.3 GB at 10,000, ~3 GB at 100,000, ~30 GB at 1,000,000.

Usage (the lead measures on a quiet machine; one size after the other, never two at once)::

    .venv/bin/python benchmarks/weekly_cost.py run --n 10000 --batch 5000 --work /tmp/weekly-10k
    .venv/bin/python benchmarks/weekly_cost.py run --n 100000 --batch 5000 --work /tmp/weekly-100k
    # the two steps apart (a built store is reused by `week`, which copies nothing back):
    .venv/bin/python benchmarks/weekly_cost.py build --n 10000 --work /tmp/weekly-10k
    .venv/bin/python benchmarks/weekly_cost.py week --batch 5000 --work /tmp/weekly-10k
    # a champion that has trained on every batch of the store (what replay assumes), built fast:
    .venv/bin/python benchmarks/weekly_cost.py run --n 100000 --batch 5000 --champion-n 100000 \
        --quick-champion --work /tmp/weekly-100k
    # a quick check that it works:
    .venv/bin/python benchmarks/weekly_cost.py run --n 2000 --batch 500 --weeks 4 --work /tmp/weekly-2k

The table is also written to ``<work>/weekly_cost.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

SOURCE = ROOT.parent / "shared" / "datasets" / "fashion-product-images"
COPY_STRIDE = 1_000_000
"""Copy ``k`` of listing ``id`` is listing ``k * COPY_STRIDE + id`` (fashion ids are < 100,000)."""
FIRST_WEEK = date(2026, 1, 5)
"""The Monday of the store's first partition; the new batch is dated ``--weeks`` weeks later."""
TASKS = ("ingest", "check_images", "validate", "monitor", "version_data", "train_evaluate", "register", "gate",
         "promote")
"""The DAG's tasks in its order (``monitor`` runs before ``version_data`` there)."""


def _source_rows() -> pd.DataFrame:
    frame = pd.read_csv(SOURCE / "styles.csv", dtype=str, keep_default_na=False, on_bad_lines="skip")
    return frame[[(SOURCE / "images" / f"{i}.jpg").is_file() for i in frame["id"]]].reset_index(drop=True)


def _copies(frame: pd.DataFrame, start: int, count: int) -> pd.DataFrame:
    """Rows ``start .. start + count - 1`` of the endless sequence of copies of ``frame``, with
    their copy index ``_k`` and source id ``_source``."""
    idx = pd.RangeIndex(start, start + count)
    rows = frame.iloc[idx % len(frame)].reset_index(drop=True)
    k = pd.Series(idx // len(frame))
    return rows.assign(_k=k.values, _source=rows["id"].values,
                       id=[str(kk * COPY_STRIDE + int(i)) for kk, i in zip(k, rows["id"], strict=True)])


def _variant(job: tuple[str, int, str]) -> str:
    """Writes copy ``k`` of a source image to ``target``; returns the SHA-256 of its bytes."""
    from PIL import Image

    source_id, k, target = job
    source = SOURCE / "images" / f"{source_id}.jpg"
    if k == 0:
        data = source.read_bytes()
    else:
        with Image.open(source) as img:
            img = img.convert("RGB")
            crop = (k - 1) // 40
            if crop:
                img = img.crop((0, 0, max(1, img.width - crop), max(1, img.height - crop)))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=95 - (k - 1) % 40)
            data = out.getvalue()
    Path(target).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _images(rows: pd.DataFrame, folder: Path, pool: Pool) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(s, int(k), str(folder / f"{i}.jpg")) for s, k, i in zip(rows["_source"], rows["_k"], rows["id"],
                                                                      strict=True)]
    return pool.map(_variant, jobs, chunksize=64)


def _season_params(state) -> Path:
    import yaml

    from common.params import load_params, write_params

    overrides = yaml.safe_load((ROOT / "profiles" / "season.yaml").read_text(encoding="utf-8")) or {}
    path = state.root / "params.yaml"
    write_params(load_params(ROOT / "params.yaml").with_overrides(overrides), path)
    return path


def _env(work: Path) -> dict[str, str]:
    state = work / "state"
    return {**os.environ, "LCP_STATE_DIR": str(state), "LCP_PARAMS": str(state / "params.yaml"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONPATH": str(ROOT)}


QUICK_CHAMPION = {"prepare": {"image_size": 16}, "train": {"epochs": 1}}
"""``--quick-champion``: the first model is trained at 16 px for one epoch (same architecture, so
the week still warm-starts from it): a whole 100,000-listing store is then trained on in minutes.
Its weights are not what the benchmark measures; that it has trained on every batch is."""


def _first_champion(state, params, quick: bool = False) -> int:
    """Versions the store as it is, trains, registers and promotes a first model; its version."""
    from ingestion.versioning import version_data
    from promotion.promote import gate_challenger, promote
    from promotion.register import register_challenger
    from training.pipeline import run_pipeline

    params = params.with_overrides(QUICK_CHAMPION) if quick else params
    data = version_data(state, params, note="benchmark champion's store")
    trained = run_pipeline(state, note="benchmark champion")
    registered = register_challenger(state, params, data, trained.workspace_commit, "benchmark", "build")
    decision = gate_challenger(state, params, registered.version, data.golden_rev)
    return promote(state, params, decision).champion


def _warm_pixels(state, params, jobs: int) -> float:
    """Decodes every partition of the store at the week's image size into the prepare stage's
    pixel cache (``training.pixels``), as the prepare stage of a champion trained at that size
    would have left it; a ``--quick-champion`` trains at 16 px, and without this the measured
    week would decode the whole store once (a one-time cost of a changed image size, not a
    week's). Not timed as the week; returns its seconds."""
    from common.store import batch_ids
    from training.pixels import PIXELS, PixelCache

    t0 = time.perf_counter()
    cache = PixelCache(state.workspace / PIXELS, params.prepare.image_size, state.listings_store, jobs)
    for batch_id in batch_ids(state.listings_store):
        if cache.index(batch_id) is None:
            cache.decode_partition(batch_id)
    return round(time.perf_counter() - t0, 1)


def build(work: Path, n: int, weeks: int, jobs: int, champion: bool, champion_n: int = 10_000,
          quick: bool = False) -> dict:
    """Builds ``<work>/state``: a store of ``n`` listings in ``weeks`` partitions, its manifest,
    a DVC-versioned workspace, and (``champion``) a promoted first model, trained (not timed)
    once the first partitions hold ``champion_n`` listings (all of them when ``n`` is smaller):
    the champion of a large store was trained on its older listings, and a first training on a
    whole 100,000-listing store would take longer than the week being measured."""
    os.environ.update(_env(work))
    from common.catalog import load_catalog
    from common.params import load_params
    from common.results import BatchReport
    from common.state import State
    from common.store import write_partition
    from ingestion.manifest import update_entries
    from ingestion.versioning import version_data
    from validation.adapt import to_canonical

    if (work / "state").exists():
        raise SystemExit(f"{work}/state exists: remove it, or run `week` on it")
    catalog = load_catalog(ROOT / "catalogs" / "fashion.yaml")
    state = State(work / "state").ensure()
    params = load_params(_season_params(state))
    frame = _source_rows()
    started = time.perf_counter()
    sizes = [n // weeks + (w < n % weeks) for w in range(weeks)]
    offset, out = 0, {}
    with Pool(jobs) as pool:
        for week, size in enumerate(sizes):
            batch_id = f"{catalog.name}-{(FIRST_WEEK + timedelta(weeks=week)).isoformat()}"
            ingested_at = f"{(FIRST_WEEK + timedelta(weeks=week)).isoformat()}T00:00:00+00:00"
            rows = _copies(frame, offset, size)
            offset += size
            scratch = work / "src" / batch_id
            shas = _images(rows, scratch, pool)
            canon = to_canonical(rows.drop(columns=["_k", "_source"]), catalog, batch_id, ingested_at)
            images = [(scratch / f"{i}.jpg", sha, ".jpg") for i, sha in zip(rows["id"], shas, strict=True)]
            write_partition(state.listings_store, batch_id, canon, images)
            shutil.rmtree(scratch)
            report = BatchReport(batch_id=batch_id, status="accepted", rows=size, accepted_rows=size,
                                 rejected_rows=0)
            update_entries(state.manifest, {batch_id: {
                "status": "accepted", "ingested_at": ingested_at, "source": "benchmarks/weekly_cost.py",
                "files": size + 1, "report": report.to_json(), "data_rev": None}})
            print(f"  {batch_id}: {size} listings ({time.perf_counter() - started:.0f} s)", flush=True)
            if champion and "champion" not in out and (offset >= champion_n or week == weeks - 1):
                out["champion"] = _first_champion(state, params, quick)
                out["quick_champion"] = quick
                out["champion_trained_on"] = offset
    if out.get("quick_champion"):
        out["pixels_warmed_s"] = _warm_pixels(state, params, jobs)
    store_s = time.perf_counter() - started
    data = version_data(state, params, note="benchmark store")
    out.update({"n": n, "weeks": weeks, "next_copy": offset, "store_s": round(store_s, 1),
                "version_s": round(time.perf_counter() - started - store_s, 1), "data_rev": data.data_rev})
    out["build_s"] = round(time.perf_counter() - started, 1)
    (work / "build.json").write_text(json.dumps(out, indent=1))
    return out


def _publish(work: Path, batch: int, jobs: int) -> tuple[str, datetime]:
    """Publishes the week's new batch (the next ``batch`` copies) to the state's feed folder."""
    from common.catalog import load_catalog
    from ingestion.feed import catalog_taxonomy

    built = json.loads((work / "build.json").read_text())
    catalog = load_catalog(ROOT / "catalogs" / "fashion.yaml")
    monday = FIRST_WEEK + timedelta(weeks=built["weeks"])
    batch_id = f"{catalog.name}-{monday.isoformat()}"
    feed = work / "state" / "feed"
    frame = _source_rows()
    feed.mkdir(parents=True, exist_ok=True)
    (feed / catalog.taxonomy.file).write_text(json.dumps(catalog_taxonomy(frame, catalog)), encoding="utf-8")
    rows = _copies(frame, built["next_copy"], batch)
    tmp = feed / f".{batch_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with Pool(jobs) as pool:
        _images(rows, tmp / "images", pool)
    rows.drop(columns=["_k", "_source"]).to_csv(tmp / catalog.listings_file, index=False)
    tmp.rename(feed / batch_id)
    cutoff = datetime.combine(monday + timedelta(weeks=1), datetime.min.time(), tzinfo=UTC)
    return batch_id, cutoff


def _state_size(root: Path) -> tuple[int, int]:
    """(bytes, files) under ``root``, apparent sizes, links not followed."""
    total = files = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
                files += 1
            except FileNotFoundError:
                pass
    return total, files


def run_task(name: str, work: Path) -> None:
    """One task, as its DAG task calls it; results of earlier tasks from ``<work>/results``."""
    from common.params import run_params
    from common.results import (
        DataVersionResult,
        GateResult,
        IngestResult,
        RegisterResult,
        ReproduceResult,
        ValidateResult,
    )
    from common.state import State

    results = work / "results"

    def prev(task: str) -> dict:
        return json.loads((results / f"{task}.json").read_text())["result"]

    state, params = State.from_env(), run_params(None)
    started = time.perf_counter()
    if name == "ingest":
        from ingestion.ingest import ingest_new_batches

        cutoff = datetime.fromisoformat(json.loads((work / "week.json").read_text())["cutoff"])
        result = ingest_new_batches(state, params, cutoff).to_xcom()
    elif name == "check_images":  # the DAG's plan_image_checks and its mapped tasks, one after the other here
        from validation.image_shards import check_image_shard, plan_image_shards

        shards = plan_image_shards(state, params, IngestResult.from_xcom(prev("ingest")).staged)
        result = {"shards": len(shards), "checked": sum(check_image_shard(state, params, s).checked for s in shards)}
    elif name == "validate":
        from validation.staged import validate_staged_batches

        batches = IngestResult.from_xcom(prev("ingest"))
        result = validate_staged_batches(state, params, batches.staged, batches.refused).to_xcom()
    elif name == "monitor":
        from monitoring.candidates import candidate_groups
        from monitoring.fresh_batch import score_champion_on_fresh

        batches = ValidateResult.from_xcom(prev("validate")).stored_batches
        result = score_champion_on_fresh(state, params, batches).to_xcom()
        candidate_groups(state, params, batches)
    elif name == "version_data":
        from ingestion import versioning

        note = " ".join(ValidateResult.from_xcom(prev("validate")).stored_batches)
        result = versioning.version_data(state, params, note=note).to_xcom()
    elif name == "train_evaluate":
        from training.pipeline import run_pipeline

        result = run_pipeline(state, note=DataVersionResult.from_xcom(prev("version_data")).data_rev[:10]).to_xcom()
    elif name == "register":
        from promotion.register import register_challenger

        result = register_challenger(
            state, params, DataVersionResult.from_xcom(prev("version_data")),
            ReproduceResult.from_xcom(prev("train_evaluate")).workspace_commit, "benchmark", "week",
            validation=ValidateResult.from_xcom(prev("validate"))).to_xcom()
    elif name == "gate":
        from promotion.promote import gate_challenger

        result = gate_challenger(state, params, RegisterResult.from_xcom(prev("register")).version,
                                 DataVersionResult.from_xcom(prev("version_data")).golden_rev).to_xcom()
    elif name == "promote":
        from promotion.promote import promote

        result = promote(state, params, GateResult.from_xcom(prev("gate"))).to_xcom()
    else:
        raise SystemExit(f"unknown task {name!r}: one of {TASKS}")
    step_s = time.perf_counter() - started
    # this process: VmHWM, the peak of its own address space since exec. Not ru_maxrss of
    # RUSAGE_SELF: Linux carries the forking parent's peak across fork and exec into it.
    # Children (dvc repro's training, git, DVC): the largest peak among them (RUSAGE_CHILDREN).
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:"))
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps({
        "result": result, "step_s": step_s, "rss_self_mb": hwm_kb / 1024,
        "rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, default=str))


def week(work: Path, batch: int, jobs: int) -> list[dict]:
    """Publishes the new batch, then runs every task in a process of its own; returns the rows."""
    if not (work / "build.json").exists():
        raise SystemExit(f"no built store in {work}: run `build` first")
    os.environ.update(_env(work))
    shutil.rmtree(work / "results", ignore_errors=True)
    batch_id, cutoff = _publish(work, batch, jobs)
    (work / "week.json").write_text(json.dumps({"batch_id": batch_id, "batch": batch, "cutoff": cutoff.isoformat()}))
    rows = []
    for name in TASKS:
        before = _state_size(work / "state")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "task", name, "--work", str(work)],
                              env=_env(work), cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            raise SystemExit(f"task {name} failed (exit {done.returncode})")
        after = _state_size(work / "state")
        measured = json.loads((work / "results" / f"{name}.json").read_text())
        rows.append({"task": name, "wall_s": round(wall, 2), "step_s": round(measured["step_s"], 2),
                     "peak_rss_mb": round(max(measured["rss_self_mb"], measured["rss_children_mb"]), 1),
                     "rss_self_mb": round(measured["rss_self_mb"], 1),
                     "rss_children_mb": round(measured["rss_children_mb"], 1),
                     "bytes_added": after[0] - before[0], "files_added": after[1] - before[1]})
        print(f"  {name}: {rows[-1]['wall_s']} s", flush=True)
    return rows


def _print(build_info: dict, batch: int, rows: list[dict]) -> None:
    print(f"\nN = {build_info['n']} listings in {build_info['weeks']} partitions, new batch B = {batch}; "
          f"champion v{build_info.get('champion')}")
    head = f"{'task':<15}{'wall s':>9}{'step s':>9}{'peak RSS MB':>13}{'self MB':>9}{'child MB':>10}" \
           f"{'bytes added':>14}{'files':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['task']:<15}{r['wall_s']:>9.2f}{r['step_s']:>9.2f}{r['peak_rss_mb']:>13.1f}"
              f"{r['rss_self_mb']:>9.1f}{r['rss_children_mb']:>10.1f}{r['bytes_added']:>14,}{r['files_added']:>8,}")
    print(f"{'total':<15}{sum(r['wall_s'] for r in rows):>9.2f}{sum(r['step_s'] for r in rows):>9.2f}"
          f"{'':>32}{sum(r['bytes_added'] for r in rows):>14,}{sum(r['files_added'] for r in rows):>8,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "build", "week", "task"])
    parser.add_argument("name", nargs="?", help="task: the DAG task to run")
    parser.add_argument("--work", type=Path, required=True, help="folder of the benchmark's state")
    parser.add_argument("--n", type=int, default=10_000, help="listings in the store")
    parser.add_argument("--batch", type=int, default=5_000, help="listings of the week's new batch")
    parser.add_argument("--weeks", type=int, default=10, help="partitions of the store")
    parser.add_argument("--jobs", type=int, default=2, help="processes making images")
    parser.add_argument("--no-champion", action="store_true", help="no first model: the week trains from scratch")
    parser.add_argument("--champion-n", type=int, default=10_000,
                        help="the first model is trained on the store's first partitions holding this many listings")
    parser.add_argument("--quick-champion", action="store_true",
                        help="train the first model at 16 px for one epoch (QUICK_CHAMPION)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    if args.command == "task":
        run_task(args.name, work)
        return 0
    if args.command in ("run", "build"):
        work.mkdir(parents=True, exist_ok=True)
        print(f"== building a store of {args.n} listings in {work}", flush=True)
        info = build(work, args.n, args.weeks, args.jobs, not args.no_champion, args.champion_n,
                     args.quick_champion)
        print(f"== built in {info['build_s']} s (store {info['store_s']} s, first version {info['version_s']} s)")
    if args.command in ("run", "week"):
        print(f"== one week with a new batch of {args.batch} listings", flush=True)
        rows = week(work, args.batch, args.jobs)
        info = json.loads((work / "build.json").read_text())
        _print(info, args.batch, rows)
        (work / "weekly_cost.json").write_text(json.dumps({"build": info, "batch": args.batch, "tasks": rows},
                                                          indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
