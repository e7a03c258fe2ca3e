"""The ``bmcd score``: streaming batch scoring into CSV (docs/cli.rst)."""

from __future__ import annotations

import argparse
import sys

from ..errors import BmcdError
from ._common import EXIT_OK, EXIT_PARTIAL, add_command, positive_int, precision


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the score subcommand (in this order)."""
    _add_score(sub)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "score", _cmd_score,
        "score many images with an exported ONNX model, streaming rows to a CSV",
        "Score image files with an exported ONNX model. Writes one CSV row per input "
        "(path,p_all,label,threshold,error,warning), flushed chunk by chunk; unreadable files "
        "get an error row and the run goes on; warning is no_cell when no cell was found in "
        "the image. The model is recorded in FILE.json and FILE.lock is held while the run "
        "writes. Exit status: 0 all scored, 3 some rows carry errors, 1 fatal error "
        "(including: no inputs, output not writable).",
    )
    p.add_argument("model", metavar="MODEL", help="model directory or bare .onnx file")
    p.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="folders (recursive), image files, quoted glob patterns, CSV manifests "
        "(column path/file/filename/new_names)",
    )
    p.add_argument(
        "--out", "-o", required=True, metavar="FILE",
        help="output CSV file, or - for standard output (the summary then goes to stderr)",
    )
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--int8", action="store_true", help="run model.int8.onnx")
    prec.add_argument(
        "--bf16", action="store_true",
        help="run model.onnx in bf16 (needs --backend openvino, a CPU with native bf16 and a "
        "passed bf16 gate: bmcd export MODEL --bf16)",
    )
    p.add_argument(
        "--backend", choices=["onnx", "openvino"], default="onnx",
        help="inference runtime: onnx (ONNX Runtime, default) or openvino (bmcd[openvino])",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N",
        help="files per chunk (default 64)",
    )
    p.add_argument(
        "--workers", type=positive_int, default=None, metavar="N",
        help="local: preprocessing threads; dask without --scheduler: local worker "
        "processes (default: CPU count)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, metavar="N",
        help="inference threads per session (ONNX Runtime intra-op, OpenVINO) (default: "
        "local: CPU count / inference workers, without spinning; dask: cores / Dask threads "
        "per host)",
    )
    p.add_argument(
        "--inference-workers", type=positive_int, default=None, metavar="N",
        help="local: chunks inferred at once (default: onnx 2 single-thread calls on 2+ "
        "cores, 1 with --threads; openvino 1)",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="skip files already in --out (refused if FILE is not a bmcd scores CSV or was "
        "written by another model)",
    )
    p.add_argument(
        "--engine", choices=["local", "dask"], default=None,
        help="local (default) or dask (needs bmcd[scale]; implied by --scheduler)",
    )
    p.add_argument(
        "--scheduler", metavar="ADDR", default=None,
        help="Dask scheduler address, e.g. tcp://host:8786 (default: a local cluster)",
    )
    p.add_argument(
        "--partition-size", type=positive_int, default=1024, metavar="N",
        help="dask: files per task (default 1024)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--by-subject", metavar="FILE", default=None,
        help="also write one row per subject (from C-NMC file names): cells, mean p(all), "
        "fraction called 'all', subject call (mean p(all) >= threshold)",
    )


def _cmd_score(args: argparse.Namespace) -> int:
    from ..scoring import score

    engine = args.engine or ("dask" if args.scheduler else "local")
    if args.scheduler and engine != "dask":
        raise BmcdError("--scheduler needs --engine dask (or leave out --engine).")
    if args.by_subject and args.out == "-":
        raise BmcdError(
            "--by-subject reads the scores back from --out FILE; with --out - there is no file. "
            "Give --out FILE."
        )
    summary = score(
        args.model,
        args.inputs,
        args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        precision=precision(args),
        backend=args.backend,
        inference_workers=args.inference_workers,
        engine=engine,
        scheduler=args.scheduler,
        partition_size=args.partition_size,
        intra_op_threads=args.threads,
        progress=not args.no_progress,
    )
    print(summary, file=sys.stderr if args.out == "-" else sys.stdout)
    if args.by_subject:
        from ..scoring._subjects import write_subject_table

        res = write_subject_table(summary.out, args.by_subject)
        print(f"per subject: {res['subjects']} subject(s) from {res['cells']} cell(s) -> "
              f"{res['out']}")
    if summary.exit_status:
        n = summary.n_errors + summary.n_previous_errors
        print(
            f"bmcd score: {n} file(s) could not be scored; see the 'error' column of "
            f"{summary.out}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK
