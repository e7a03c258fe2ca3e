"""The ``bmcd export``: Keras to ONNX, optionally int8 (docs/cli.rst)."""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, add_command, non_negative_float


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the export subcommand (in this order)."""
    _add_export(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "export", _cmd_export,
        "export a trained model to ONNX (checked against Keras), optionally int8",
        "Convert MODEL/model.keras to MODEL/model.onnx with tf2onnx, check it against Keras "
        "on preprocessed images (max |p_keras - p_onnx| and labels, at two batch sizes), and "
        "record the numbers in MODEL/bmcd.json. With --int8, also write MODEL/model.int8.onnx "
        "(ONNX Runtime static QDQ quantization) and gate it against the fp32 model. With "
        "--bf16, gate OpenVINO bf16 against fp32 the same way (recorded in MODEL/bmcd.json; "
        "the openvino backend runs bf16 only after a passed gate). A check that fails writes "
        "no file (a failed bf16 gate is recorded) and exits with status 1.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory (bmcd.json + model.keras)")
    p.add_argument("--int8", action="store_true", help="also quantize to model.int8.onnx")
    p.add_argument("--bf16", action="store_true",
                   help="also gate OpenVINO bf16 against fp32 (needs bmcd[openvino] and a CPU "
                   "with native bf16); the result is recorded in MODEL/bmcd.json")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default: 17, checked against the installed onnxruntime)")
    p.add_argument("--samples", metavar="DIR", default=None,
                   help="images for the parity check and the int8 gate: a dataset folder or "
                   "CSV manifest (labels enable the ROC-AUC gate) or any folder of images "
                   "(default: synthetic cells made on the fly)")
    p.add_argument("--atol", type=non_negative_float, default=None, metavar="X",
                   help="largest accepted |p_keras - p_onnx| (default: 1e-4)")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="int8 calibration images, ideally the training set (default: 200 "
                   "synthetic cells)")
    p.add_argument("--force", action="store_true",
                   help="keep model.int8.onnx / allow bf16 even if it fails its gate "
                   "(recorded as forced)")
    p.add_argument("--rehash", action="store_true",
                   help="export nothing: record the sha256 of the exported files now in "
                   "MODEL (after replacing one on purpose), so loading accepts them")


def _cmd_export(args: argparse.Namespace) -> int:
    import os

    if args.rehash:
        from ..artifact import rehash_exports

        changed = rehash_exports(args.model)
        for key, sha in changed.items():
            print(f"recorded exports.{key}: sha256 {sha[:16]}")
        if not changed:
            print(f"no exported file recorded in {args.model}/bmcd.json; nothing to rehash")
        return EXIT_OK

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner quiet
    from ..exporters.onnx import export_onnx, quantize_int8

    rec = export_onnx(args.model, opset=args.opset, samples=args.samples, atol=args.atol)
    par = rec["parity"]
    print(f"wrote {rec['path']} (opset {rec['opset']}, IR {rec['ir_version']}, "
          f"{rec['bytes'] / 1e6:.1f} MB, sha256 {rec['sha256'][:16]})")
    print(f"parity vs Keras on {par['n']} images [{rec['samples']}], batch sizes "
          f"{'/'.join(map(str, par['batch_sizes']))}:")
    print(f"  max |p_keras - p_onnx| = {par['max_abs_diff']:.3g} (atol {par['atol']:g}), "
          f"mean {par['mean_abs_diff']:.3g}; labels identical "
          f"{par['n'] - par['label_disagreements']}/{par['n']} at threshold {par['threshold']:g}")
    if args.int8:
        q = quantize_int8(args.model, calibration=args.calibration, validation=args.samples,
                          force=args.force)
        g = q["gate"]
        print(f"wrote {q['path']} ({q['quant_format']}, "
              f"{'per-channel' if q['per_channel'] else 'per-tensor'} int8, "
              f"{q['bytes'] / 1e6:.1f} MB), calibrated on {q['calibration']['n']} images "
              f"[{q['calibration']['source']}]")
        print(f"int8 gate vs fp32 on {g['n']} images [{q['validation']}]:")
        print(f"  label agreement {g['label_agreement']:.4f}: {g['label_disagreements']} "
              f"flipped, allowed {g['allowed_label_flips']}; max |dp| "
              f"{g['max_abs_diff']:.3g}, mean {g['mean_abs_diff']:.3g}; fp32 p(all) std "
              f"{g['p_all_spread']['std']:.3f}")
        print(f"  rule: {g['rule']}")
        if "roc_auc_change" in g:
            print(f"  ROC-AUC {g['roc_auc_fp32']:.4f} -> {g['roc_auc_int8']:.4f} (change "
                  f"{g['roc_auc_change']:+.4f}, limit {g['max_auc_change']:g}); weighted F1 "
                  f"{g['f1_weighted_fp32']:.4f} -> {g['f1_weighted_int8']:.4f} (change "
                  f"{g['f1_weighted_change']:+.4f})")
        if q["forced"]:
            print("  GATE FAILED: file kept because of --force (recorded as forced)")
    if args.bf16:
        from ..exporters.bf16 import format_bf16_gate, gate_bf16

        print(format_bf16_gate(gate_bf16(args.model, samples=args.samples, force=args.force)))
    return EXIT_OK
