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

Prints a JSON summary with the number of listings, the seconds and the listings/s.
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
        ValueError: on another extension, or when ``title`` is missing.
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
    if "title" not in frame.columns:
        raise ValueError(f"{path}: no title column")
    if "image_path" in frame.columns and images_root is not None:
        root = Path(images_root)
        frame["image_path"] = [str(p if Path(p).is_absolute() else root / p) if isinstance(p, str) else p
                               for p in frame["image_path"]]
    return frame


def load_model(model: str, device: str = "cpu"):
    """A predictor with ``predict(DataFrame) -> DataFrame``: pyfunc for a model URI, else the
    checkpoint wrapped in ``training.serving.ListingClassifierModel``."""
    from training.serving import ListingClassifierModel, load_checkpoint

    if Path(model).is_file():
        wrapper = ListingClassifierModel()
        wrapper.loaded = load_checkpoint(model, device=device)

        class _Local:
            def predict(self, frame: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
                return wrapper.predict(None, frame, params)

        return _Local()
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model)


def predict_file(model: str, input_path: str | Path, output: str | Path | None = None,
                 images_root: str | Path | None = None, batch_size: int = 256) -> dict:
    """Predicts every listing of a file and writes ``listing_id?, category_path, leaf, probability,
    auto``: the served columns (``training.serving.ListingClassifierModel``), ``probability``
    calibrated and ``auto`` True where it clears the model's stored threshold (no ``auto`` for a
    model registered before calibration).

    Returns:
        ``{"listings", "seconds", "listings_per_s", "load_seconds", "output"}``; the seconds
        count prediction (image decoding included), not model loading.

    Raises:
        ValueError: see :func:`read_listings`; from the model on a bad row, e.g. an image that
            cannot be read (the message names the row, 0-based in the file's order). Nothing is
            written then.
    """
    from training.serving import model_input

    t0 = time.perf_counter()
    predictor = load_model(model)
    load_seconds = time.perf_counter() - t0
    listings = read_listings(input_path, images_root)
    t1 = time.perf_counter()
    out = predictor.predict(model_input(listings), params={"batch_size": batch_size})
    seconds = time.perf_counter() - t1
    if "listing_id" in listings.columns:
        out.insert(0, "listing_id", listings["listing_id"].astype(str).to_numpy())
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(output, index=False)
    return {"listings": len(out), "seconds": round(seconds, 3),
            "listings_per_s": round(len(out) / seconds, 1) if seconds > 0 else None,
            "load_seconds": round(load_seconds, 2), "output": str(output) if output else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="MLflow model URI or checkpoint file")
    parser.add_argument("--input", required=True, help="listings file (.csv, .jsonl, .parquet)")
    parser.add_argument("--output", default=None, help="predictions CSV (default: not written)")
    parser.add_argument("--images-root", default=None, help="folder of relative image paths")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    summary = predict_file(args.model, args.input, args.output, args.images_root, args.batch_size)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
