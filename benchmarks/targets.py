"""Speed targets of bmcd's reference machine, and a checker for saved ``bmcd bench`` reports.

These goals were set in the benchmark issue for a 2-core Intel Xeon with AVX-512 VNNI and
AMX (a shared virtual machine); docs/benchmarks.rst ("The targets") gives the range each
one measured there and what limits it. They are goals of that machine, not properties of
bmcd, which is why the library ships none: pass them, or your own, to
``bmcd.bench.run_bench(targets=...)`` or :func:`bmcd.bench.evaluate_targets`
(``bmcd.bench.load_targets("benchmarks/targets.py")`` reads this file).

Check a saved report against them::

    bmcd bench --images ../shared/data/cnmc-sample --json bench.json
    python benchmarks/targets.py bench.json

Each target: ``key`` names a measured quantity (:data:`bmcd.bench.TARGET_QUANTITIES`;
``{arch}`` stands for every architecture measured), ``what`` is the printed label (``@B``
becomes the batch size), ``op`` and ``value`` the goal.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TARGETS: tuple[dict[str, Any], ...] = (
    {
        "key": "ratio_fp32_keras:{arch}",
        "what": "ORT fp32 / keras predict @B ({arch})",
        "op": ">=",
        "value": 2.0,
    },
    {
        "key": "ratio_int8_fp32:resnet50",
        "what": "ORT int8 / ORT fp32 @B (resnet50)",
        "op": ">=",
        "value": 2.5,
    },
    {
        "key": "ratio_int8_fp32:mobilenet_v2",
        "what": "ORT int8 / ORT fp32 @B (mobilenet_v2)",
        "op": ">=",
        "value": 2.2,
    },
    {
        "key": "ms_fp32_b1:mobilenet_v2",
        "what": "ORT fp32 mobilenet_v2 @1, ms/image",
        "op": "<=",
        "value": 10.0,
    },
    {
        "key": "ratio_e2e_model:mobilenet_v2:int8",
        "what": "score / model-only ORT, mobilenet_v2 int8",
        "op": ">=",
        "value": 0.85,
    },
    # issue 11 (OpenVINO): where the CPU has native bf16 (this machine: AMX, AVX512-BF16)
    {
        "key": "ratio_ov_bf16_fp32:resnet50",
        "what": "OpenVINO bf16 / ORT fp32 @B (resnet50)",
        "op": ">=",
        "value": 1.8,
    },
    {
        "key": "ratio_best_int8:mobilenet_v2",
        "what": "best int8 / ORT int8 @B (mobilenet_v2)",
        "op": ">=",
        "value": 1.2,
    },
)


def main(argv: list[str] | None = None) -> int:
    """Print a saved ``bmcd bench --json`` report with these targets checked.

    Returns 0 when every measured target is met, 1 otherwise.
    """
    from bmcd.bench import evaluate_targets, format_report

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/targets.py BENCH_JSON", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        report = json.load(f)
    report["targets"] = evaluate_targets(report, TARGETS)
    print(format_report(report))
    return 0 if all(t["met"] for t in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
