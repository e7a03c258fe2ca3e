"""OpenVINO against ONNX Runtime on the same bmcd files, interleaved in one process.

Usage (from the repository root; needs the ``train`` extra to build the random-weight
benchmark models once, and the ``openvino`` extra)::

    python benchmarks/openvino_vs_ort.py [--archs mobilenet_v2 resnet50] [--seconds 6]
        [--cache DIR] [--json out.json]

Rows, model only, batch 32 at 224 px, every backend on all cores:
ORT fp32, OpenVINO f32, OpenVINO bf16 (where the CPU has native bf16), ORT int8, OpenVINO
int8, and OpenVINO bf16 with 2 streams of 1 thread (a batch split in two, run at once;
int8 with several streams is refused by the backend: OpenVINO 2026.4 got it wrong).
The models are :func:`bmcd.bench.ensure_bench_model`'s (random weights, exported and
quantized by bmcd), so the files are those ``bmcd bench`` times. bf16 runs with
``force_bf16=True``: an accuracy gate means nothing for random weights; the bf16 outputs
are still checked against fp32 with the int8 sanity bound beside the timing, and the bf16
gate's numbers on the benchmark images are printed for reference.

Until ``bmcd bench`` has OpenVINO rows, this script is how the figures in
``docs/benchmarks.rst`` for OpenVINO are taken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

from bmcd.bench import (
    check_int8_sanity,
    check_parity,
    cpu_flags,
    ensure_bench_model,
    make_input_batches,
    source_images,
    time_interleaved,
)
from bmcd.preprocessing import PreprocessConfig, preprocess_batch
from bmcd.runtimes.onnx import OnnxRuntimeBackend
from bmcd.runtimes.openvino import OpenVINOBackend, cpu_description, cpu_supports_bf16

LABELS = {
    "ort_fp32": "ORT fp32",
    "ov_f32": "OpenVINO f32",
    "ov_bf16": "OpenVINO bf16",
    "ort_int8": "ORT int8",
    "ov_int8": "OpenVINO int8",
    "ov_bf16_2x1": "OpenVINO bf16, 2 streams x 1 thread",
}


def predictors(mdir: Path, threads: int) -> dict:
    fns = {
        "ort_fp32": OnnxRuntimeBackend.load(mdir, intra_op_threads=threads).predict_batch,
        "ov_f32": OpenVINOBackend.load(mdir, intra_op_threads=threads).predict_batch,
    }
    if cpu_supports_bf16():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: no gate to pass (see above)
            fns["ov_bf16"] = OpenVINOBackend.load(
                mdir, precision="bf16", force_bf16=True, intra_op_threads=threads
            ).predict_batch
    fns["ort_int8"] = OnnxRuntimeBackend.load(
        mdir, precision="int8", intra_op_threads=threads).predict_batch
    fns["ov_int8"] = OpenVINOBackend.load(
        mdir, precision="int8", intra_op_threads=threads).predict_batch
    if threads >= 2 and "ov_bf16" in fns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fns["ov_bf16_2x1"] = OpenVINOBackend.load(
                mdir, precision="bf16", force_bf16=True, intra_op_threads=2, num_streams=2,
                performance_hint="THROUGHPUT").predict_batch
    return fns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet50"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0, help="per backend (interleaved)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--cache", default=None, help="bench model cache (default: bmcd bench's)")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)

    from bmcd.bench import default_cache_dir

    cache = Path(args.cache) if args.cache else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    files, desc = source_images(None, cache)
    cfg = PreprocessConfig(image_size=args.image_size)
    imgs = preprocess_batch(files[:64], cfg)
    flags = cpu_flags()
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_description(),
        "isa_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                     "amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"}),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "threads": args.threads,
        "images": desc,
        "loadavg_start": list(os.getloadavg()),
        "rows": [],
    }
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    print(f"CPU {report['cpu'].get('model_name')} ({report['logical_cpus']} logical), ISA "
          f"{' '.join(report['isa_flags'])}; OpenVINO {report['cpu'].get('openvino_version')}, "
          f"ONNX Runtime {report['onnxruntime']}; load {report['loadavg_start']}")
    for arch in args.archs:
        mdir = ensure_bench_model(arch, args.image_size, cache, imgs, log=print)
        fns = predictors(mdir, args.threads)
        inputs = make_input_batches(imgs, args.batch_size, 4, seed=args.batch_size)
        res = time_interleaved(fns, inputs, batch_size=args.batch_size,
                               seconds=args.seconds * len(fns), warmup=2)
        ref = res["ort_fp32"][1]
        base = res["ort_fp32"][0].images_per_second
        for name, (timing, outs) in res.items():
            common = [i for i in outs if i in ref]
            if name in ("ort_fp32", "ov_f32"):
                diff = max(check_parity(name, outs[i], ref[i], 1e-4, what="ORT fp32")
                           for i in common)
            else:  # reduced precision: the int8 sanity bound against fp32
                diff = check_int8_sanity(name, [outs[i] for i in common], [ref[i] for i in common])
            row = {"arch": arch, "backend": name, "label": LABELS[name], **timing.to_dict(),
                   "ratio_to_ort_fp32": timing.images_per_second / base,
                   "max_abs_diff_vs_ort_fp32": diff}
            report["rows"].append(row)
            print(f"{arch:13s} {LABELS[name]:36s} {timing.images_per_second:7.1f} img/s "
                  f"x{row['ratio_to_ort_fp32']:.2f}  cpu {timing.cpu_ms_per_image or 0:6.1f} "
                  f"ms/img  rounds {timing.rounds:3d}  max|dp| {diff:.3g}")
        del fns, res
    report["loadavg_end"] = list(os.getloadavg())
    print(f"load at end {report['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
