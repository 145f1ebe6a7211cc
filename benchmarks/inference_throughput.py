"""Inference throughput of the served model: listings/s of batch prediction on the golden set.

Writes the workspace's golden listings (title, fields, image path into the listings store) to a
Parquet file and runs ``training.predict.predict_file`` on it: the model is loaded as the
MLflow pyfunc when ``--model`` is a model URI (``models:/listing-classifier@champion`` with
``MLFLOW_TRACKING_URI`` set), or from the checkpoint file. JPEG decoding and resizing of every
image are included in the time; model loading is not. Two paths, interleaved, in one run:
``pooled`` (decoded in ``training.inference.DECODE_WORKERS`` threads, one batch ahead of the model:
what the batch CLI does) and ``serial`` (``DECODE_WORKERS = 0``: each batch decoded in the
calling thread before its forward pass, the path before the decode pool).

Usage::

    .venv/bin/python benchmarks/inference_throughput.py --workspace .state/workspace \\
        [--model models:/listing-classifier@champion] [--batch-sizes 64 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd
    import torch

    import training.inference as inference
    from training.predict import predict_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default=".state/workspace")
    parser.add_argument("--model", default=None, help="model URI or checkpoint (default: the workspace's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ws = Path(args.workspace).resolve()
    model = args.model or str(ws / "models" / "model.pt")
    golden = pd.read_parquet(ws / "data" / "prepared" / "golden.parquet")
    pooled = inference.DECODE_WORKERS
    result: dict = {"model": model, "listings": len(golden), "threads": torch.get_num_threads(),
                    "decode_workers": pooled, "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        listings = Path(tmp) / "golden.parquet"
        golden.assign(image_path=golden["image_key"]).to_parquet(listings, index=False)
        # interleaved, so that a change of load on the machine meets both paths alike
        for batch_size in args.batch_sizes:
            rates: dict[str, list[float]] = {"serial": [], "pooled": []}
            for _ in range(args.repeats):
                for path, workers in (("serial", 0), ("pooled", pooled)):
                    inference.DECODE_WORKERS = workers
                    rates[path].append(predict_file(model, listings, images_root=ws / "data" / "listings",
                                                    batch_size=batch_size)["listings_per_s"])
            inference.DECODE_WORKERS = pooled
            for path, values in rates.items():
                result[f"listings_per_s_{path}_batch_{batch_size}"] = statistics.median(values)
                result[f"listings_per_s_{path}_batch_{batch_size}_runs"] = [round(v, 1) for v in values]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
