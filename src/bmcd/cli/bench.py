"""The ``bmcd bench``: backend throughput side by side (docs/cli.rst)."""

from __future__ import annotations

import argparse
import sys

from ..errors import BmcdError
from ._common import EXIT_OK, add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the bench subcommand (in this order)."""
    _add_bench(sub)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "bench", _cmd_bench,
        "compare Keras, tf.function, ONNX Runtime and OpenVINO throughput side by side",
        "Time Keras predict, a compiled tf.function, ONNX Runtime fp32 and int8 and OpenVINO "
        "f32, bf16 and int8 (with bmcd[openvino]) on the same fresh inputs in one process "
        "(warm-up first, parity checked beside every timing), then bmcd score end to end over "
        "files on disk. Prints a table (images/s, ms/image at batch 1, ratio to Keras predict) "
        "and the machine. Without --model, random-weight models are built, exported and "
        "quantized once and cached: throughput does not depend on the values of the weights.",
    )
    p.add_argument(
        "--arch", nargs="+", default=["mobilenet_v2", "resnet50"],
        choices=["mobilenet_v2", "resnet50"], help="architectures (default: both)",
    )  # fmt: skip
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (224)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (32); batch 1 too")
    p.add_argument(
        "--seconds", type=float, default=3.0,
        help="time per backend and batch size (3; at least 3 timed calls each)",
    )  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end score rows")
    p.add_argument(
        "--n-files", type=int, default=2000, help="files scored end to end (2000)"
    )
    p.add_argument(
        "--e2e-precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "bf16", "int8"],
        help="precisions scored end to end with the local engine (default: fp32 int8; bf16 "
        "with OpenVINO only)",
    )  # fmt: skip
    p.add_argument(
        "--e2e-backend", nargs="+", default=["onnx"], choices=["onnx", "openvino"],
        help="runtimes scored end to end (default: onnx)",
    )  # fmt: skip
    p.add_argument(
        "--backends", nargs="+", default=None, metavar="NAME",
        help="model-only rows to time, some of: keras_predict tf_function ort_fp32 ort_int8 "
        "ov_f32 ov_bf16 ov_int8 (default: all that can run here)",
    )  # fmt: skip
    p.add_argument("--targets", metavar="FILE",
                   help="speed goals to check: a .py file defining TARGETS (e.g. "
                   "benchmarks/targets.py) or a JSON list")
    p.add_argument("--no-dask", action="store_true",
                   help="skip the Dask local-cluster row (default: run it when dask is installed)")
    p.add_argument("--images", metavar="DIR",
                   help="images to benchmark on, e.g. real C-NMC BMPs (default: synthetic cells)")
    p.add_argument("--model", metavar="DIR",
                   help="benchmark this model directory instead of random-weight models")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where benchmark models and files are kept (default ~/.cache/bmcd/bench)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached benchmark models")


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from .. import bench

    for name in ("image_size", "batch_size", "n_files"):
        if getattr(args, name) < 1:
            raise BmcdError(
                f"--{name.replace('_', '-')} must be a positive integer, received "
                f"{getattr(args, name)}."
            )
    if args.seconds <= 0:
        raise BmcdError(f"--seconds must be positive, received {args.seconds}.")
    targets = bench.load_targets(args.targets) if args.targets else None  # fail early
    backends = tuple(args.backends) if args.backends else bench.BACKENDS
    unknown = [b for b in backends if b not in bench.BACKENDS]
    if unknown:
        raise BmcdError(f"--backends: unknown {unknown}; expected some of {list(bench.BACKENDS)}.")
    report = bench.run_bench(
        archs=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seconds=args.seconds,
        e2e=not args.no_e2e,
        n_files=args.n_files,
        e2e_precisions=args.e2e_precision,
        e2e_runtimes=args.e2e_backend,
        backends=backends,
        targets=targets,
        dask=False if args.no_dask else None,
        images=args.images,
        model=args.model,
        cache_dir=args.cache_dir,
        rebuild=args.rebuild,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(bench.format_report(report))
    if args.json:
        from ..artifact import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(report, indent=2).encode() + b"\n")
        print(f"report written to {args.json}")
    return EXIT_OK
