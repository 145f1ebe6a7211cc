"""Batch prediction: a file of listings in, their category paths and probabilities out.

The model is either a registered MLflow model (``models:/listing-classifier@champion``, any
MLflow model URI; loaded as pyfunc, exactly as a serving endpoint would) or a checkpoint file
(``models/model.pt``). Listings come as CSV, JSON Lines or Parquet with at least ``title`` and an
image as ``image_path`` (relative paths are resolved against ``--images-root``) or
``image_bytes``; the other listing fields (``description``, ``brand``, ``price``, ``currency``,
``attributes``) are read when present. The output keeps ``listing_id`` when the input has it;
``auto`` says which listings may be categorised without a person (the model's threshold at
``score.target_precision``, ``training.calibration``).

CLI::

    python -m training.predict --model models:/listing-classifier@champion \\
        --input listings.parquet --images-root feed/2026-11-02 --output predictions.csv

Prints a JSON summary with the number of listings, the seconds and the listings/s. A listing whose
image cannot be read stops the run with an error naming its row; with ``--skip-bad`` it is left
out instead, and the skipped rows (row, listing_id, reason) are in the summary and in
``<output>.skipped.csv``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


def read_listings(path: str | Path, images_root: str | Path | None = None) -> pd.DataFrame:
    """Reads a listings file for prediction.

    Args:
        path: ``.csv``, ``.jsonl`` / ``.json`` (JSON Lines) or ``.parquet``.
        images_root: folder that relative ``image_path`` values are relative to.

    Returns:
        The listings, ``image_path`` made absolute.

    Raises:
        ValueError: on another extension (a missing ``title`` is the model's to judge: a model
            with a text branch refuses it, an image model of a catalog without titles needs none).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path, dtype={"listing_id": str})
    elif suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=True, dtype={"listing_id": str})
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: expected a .csv, .jsonl or .parquet listings file")
    if "image_path" in frame.columns and images_root is not None:
        root = Path(images_root)
        frame["image_path"] = [str(p if Path(p).is_absolute() else root / p) if isinstance(p, str) else p
                               for p in frame["image_path"]]
    return frame


def load_model(model: str, device: str = "cpu"):
    """A predictor with ``predict(DataFrame) -> DataFrame``: pyfunc for a model URI, else the
    checkpoint wrapped in ``training.serving.ListingClassifierModel``."""
    from training.inference import load_checkpoint
    from training.serving import ListingClassifierModel

    if Path(model).is_file():
        wrapper = ListingClassifierModel()
        wrapper.loaded = load_checkpoint(model, device=device)

        class _Local:
            def predict(self, frame: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
                return wrapper.predict(None, frame, params)

        return _Local()
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model)


def _predict_skipping(predictor, frame: pd.DataFrame, batch_size: int) -> tuple[pd.DataFrame, list[dict]]:
    """Predicts ``frame`` chunk by chunk, leaving out the rows the model refuses.

    A chunk of ``batch_size`` rows that fails on a row (``training.serving.InvalidListingError``
    names it) is predicted again without that row, so each bad row costs one more pass over its
    chunk, not over the file.

    Returns:
        ``(predictions of the good rows in order, with a "row" column: their 0-based row in
        frame, skipped rows as {"row", "listing_id", "reason"})``.

    Raises:
        InvalidListingError: for an error that names no row (e.g. no ``title`` column).
    """
    from training.serving import InvalidListingError

    outs, skipped = [], []
    for start in range(0, len(frame), batch_size):
        rows = list(range(start, min(start + batch_size, len(frame))))
        while rows:
            try:
                out = predictor.predict(frame.iloc[rows].reset_index(drop=True),
                                        params={"batch_size": batch_size})
            except InvalidListingError as exc:
                if exc.row is None:
                    raise
                bad = rows.pop(exc.row)
                skipped.append({"row": bad, "listing_id": exc.listing_id, "reason": exc.reason})
                continue
            outs.append(out.assign(row=rows))
            break
    if not outs:
        return pd.DataFrame(columns=["category_path", "leaf", "probability", "row"]), skipped
    return pd.concat(outs, ignore_index=True), skipped


def predict_file(model: str, input_path: str | Path, output: str | Path | None = None,
                 images_root: str | Path | None = None, batch_size: int = 256,
                 skip_bad: bool = False) -> dict:
    """Predicts every listing of a file and writes ``listing_id?, category_path, leaf, probability,
    auto``: the served columns (``training.serving.ListingClassifierModel``), ``probability``
    calibrated and ``auto`` True where it clears the model's stored threshold (no ``auto`` for a
    model registered before calibration).

    Args:
        model: MLflow model URI or checkpoint file (:func:`load_model`).
        input_path, images_root: as :func:`read_listings`.
        output: predictions CSV; None: not written.
        batch_size: rows per forward pass (the model's ``batch_size`` param), >= 1.
        skip_bad: leave out the listings whose image cannot be read (missing, truncated, not an
            image, outside the image root) instead of stopping; they are listed in the summary's
            ``skipped`` and in ``<output>.skipped.csv`` (``row, listing_id, reason``; written,
            with only the header when none was skipped, whenever ``output`` is).

    Returns:
        ``{"listings", "seconds", "listings_per_s", "load_seconds", "output"}``, plus with
        ``skip_bad`` ``"skipped"`` (list of ``{"row", "listing_id", "reason"}``, rows 0-based in
        the file's order) and ``"skipped_output"``; ``listings`` counts the predicted ones. The
        seconds count prediction (image decoding included), not model loading.

    Raises:
        ValueError: see :func:`read_listings`; without ``skip_bad``, from the model on a bad row,
            e.g. an image that cannot be read (``training.serving.InvalidListingError``, its
            message names the row, 0-based in the file's order, and its ``listing_id``).
            Nothing is written then.
    """
    from training.serving import model_input

    t0 = time.perf_counter()
    predictor = load_model(model)
    load_seconds = time.perf_counter() - t0
    listings = read_listings(input_path, images_root)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    frame = model_input(listings)
    t1 = time.perf_counter()
    skipped = None
    if skip_bad:
        out, skipped = _predict_skipping(predictor, frame, batch_size)
        kept = out.pop("row").to_numpy(dtype=int)
    else:
        out = predictor.predict(frame, params={"batch_size": batch_size})
        kept = slice(None)
    seconds = time.perf_counter() - t1
    if "listing_id" in listings.columns:
        out.insert(0, "listing_id", listings["listing_id"].astype(str).to_numpy()[kept])
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(output, index=False)
    summary = {"listings": len(out), "seconds": round(seconds, 3),
               "listings_per_s": round(len(out) / seconds, 1) if seconds > 0 else None,
               "load_seconds": round(load_seconds, 2), "output": str(output) if output else None}
    if skip_bad:
        summary["skipped"] = skipped
        summary["skipped_output"] = None
        if output:
            summary["skipped_output"] = f"{output}.skipped.csv"
            pd.DataFrame(skipped, columns=["row", "listing_id", "reason"]).to_csv(
                summary["skipped_output"], index=False)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MLflow model URI or checkpoint file")
    parser.add_argument("--input", required=True, help="listings file (.csv, .jsonl, .parquet)")
    parser.add_argument("--output", default=None, help="predictions CSV (default: not written)")
    parser.add_argument("--images-root", default=None, help="folder of relative image paths")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per forward pass")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out listings whose image cannot be read (listed in the summary "
                             "and <output>.skipped.csv) instead of stopping at the first")
    args = parser.parse_args(argv)
    summary = predict_file(args.model, args.input, args.output, args.images_root, args.batch_size,
                           args.skip_bad)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
