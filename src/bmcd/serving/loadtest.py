"""A bounded load test of ``bmcd serve`` on loopback (``python -m bmcd.serving.loadtest``).

It starts two servers (``python -m bmcd.serving``) in subprocesses, one with
micro-batching (``--max-batch 32``) and one without (``--max-batch 1``), and drives them
with an async httpx client at concurrency 1, 8 and 32: every client sends one image per
request, back to back. The phases alternate between the two servers (A B B A at each
concurrency), so that load from other processes falls on both alike. It reports throughput (images/s), p50 / p99 latency and failed requests, and,
in the same run, the model-only throughput that ``bmcd bench`` measures for the same file
(ONNX Runtime, batch 32, preprocessed inputs), so that the ratio serve / model-only is
measured on the same machine at the same time. The whole run stops itself within
``--budget-s`` seconds (default 60). Results are in ``docs/serving.rst``.

Examples
--------
.. code-block:: console

    $ python -m bmcd.serving.loadtest MODEL --precision int8 --images CELL_FOLDER
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ServiceError

__all__ = ["run_loadtest", "main"]

CONCURRENCY = (1, 8, 32)
_BOUNDARY = "bmcd-loadtest-boundary"
_HEADERS = {"content-type": f"multipart/form-data; boundary={_BOUNDARY}"}


def _multipart(name: str, data: bytes) -> bytes:
    """One file as a multipart body, built once so the client spends little CPU per request."""
    head = (f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
    return head.encode() + data + f"\r\n--{_BOUNDARY}--\r\n".encode()


def _start_server(model: str, precision: str, max_batch: int, max_wait_ms: float):
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "bmcd.serving", model, "--port", "0", "--precision", precision,
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            url = line.split("listening on ")[1].split()[0]
            import urllib.request

            while time.time() < deadline:  # ready when /healthz answers
                try:
                    urllib.request.urlopen(url + "healthz", timeout=5).read()
                    return proc, url
                except OSError:
                    time.sleep(0.05)
            break
    proc.kill()
    raise ServiceError(f"bmcd serve did not start: {proc.stderr.read()[-2000:]}")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux ``/proc``; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _drive(url: str, payloads: list[bytes], concurrency: int,
                 warmup_s: float, measure_s: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    failures = 0
    done = 0
    reasons: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    import socket

    # TCP_NODELAY: without it the body waits for the delayed ACK of the headers (~40 ms)
    transport = httpx.AsyncHTTPTransport(
        limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as client:
        t_start = time.perf_counter()
        t_measure = t_start + warmup_s
        t_end = t_measure + measure_s

        async def worker(k: int) -> None:
            nonlocal failures, done
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                body = payloads[i % len(payloads)]
                i += concurrency
                ok = False
                try:
                    r = await client.post("v1/predict", content=body, headers=_HEADERS)
                    ok = r.status_code == 200 and r.json()["results"][0]["error"] is None
                    why = "" if ok else f"HTTP {r.status_code}: {r.text[:300]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{exc.__class__.__name__}: {exc}"
                if not ok and len(reasons) < 3:
                    reasons.append(why)
                t1 = time.perf_counter()
                if t0 >= t_measure and t1 <= t_end:
                    latencies.append(t1 - t0)
                    done += 1
                    failures += 0 if ok else 1
                elif not ok:
                    failures += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "latencies": np.array(latencies),
        "concurrency": concurrency,
        "requests": done,
        "failed": failures,
        "images_per_s": done / measure_s,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "failure_examples": reasons,
    }


def _model_only(model: str, precision: str, images: list[Path], seconds: float) -> dict[str, Any]:
    """Model-only throughput as ``bmcd bench`` measures it (batch 32 and 1, fresh inputs)."""
    from ..artifact import read_model_meta
    from ..bench import make_input_batches, time_interleaved
    from ..preprocessing import preprocess_batch
    from ..runtimes.onnx import OnnxRuntimeBackend

    config = read_model_meta(model).preprocess
    x = preprocess_batch([str(p) for p in images[:32]], config)
    be = OnnxRuntimeBackend.load(model, precision=precision)
    out = {}
    for bs in (32, 1):
        batches = make_input_batches(x, bs, 8 if bs > 1 else 64)
        timing = time_interleaved({"ort": be.predict_batch}, batches, batch_size=bs,
                                  seconds=seconds / 2, warmup=2)["ort"][0]
        out[f"batch_{bs}"] = {"images_per_s": timing.images_per_second,
                              "ms_per_image": timing.ms_per_image}
    del be
    out["images_per_s"] = out["batch_32"]["images_per_s"]
    return out


def _images(folder: str | None, tmp: Path) -> list[Path]:
    from ..data import iter_image_files

    if folder:
        files = sorted(Path(f) for f in iter_image_files(folder))
    else:
        from ..synthetic import make_cells

        files = sorted(Path(f) for f in make_cells(tmp / "cells", n_per_class=32, n_subjects=8, seed=0, progress=False))
    if not files:
        raise SystemExit(f"no images found in {folder!r}")
    rng = np.random.default_rng(0)
    return [files[i] for i in rng.permutation(len(files))[:256]]


def run_loadtest(model: str, *, precision: str = "int8", images: str | None = None,
                 budget_s: float = 60.0, max_wait_ms: float = 5.0) -> dict[str, Any]:
    """Run the load test (at most about ``budget_s`` seconds); return the results."""
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = _images(images, Path(tmp))
        payloads = [_multipart(p.name, p.read_bytes()) for p in files]
        model_only = _model_only(model, precision, files, seconds=min(5.0, budget_s * 0.08))
        # Both servers run at once (an idle one uses no CPU) and the phases alternate
        # A B B A at each concurrency, so that load from other processes falls on both alike.
        servers = {}
        try:
            for max_batch in (32, 1):
                servers[max_batch] = _start_server(model, precision, max_batch, max_wait_ms)
            plan = [(c, b) for c in CONCURRENCY for b in (32, 1, 1, 32)]
            parts: dict[tuple[int, int], list[dict[str, Any]]] = {}
            for k, (c, b) in enumerate(plan):
                left = budget_s - (time.perf_counter() - t0) - 2.0  # 2 s to stop the servers
                phase = max(1.0, left / (len(plan) - k))
                s0, c0, w0 = _cpu_seconds(servers[b][0].pid), time.process_time(), time.perf_counter()
                r = asyncio.run(_drive(servers[b][1], payloads, c, warmup_s=min(0.8, phase * 0.2),
                                       measure_s=phase * 0.8))
                s1, wall = _cpu_seconds(servers[b][0].pid), time.perf_counter() - w0
                r["seconds"] = phase * 0.8
                # CPU per request over the whole phase (warm-up included) and client cores used
                n_all = max(1, r["requests"] * wall / r["seconds"])
                r["server_cpu_ms"] = None if s0 is None or s1 is None else (s1 - s0) / n_all * 1000
                r["client_cores"] = (time.process_time() - c0) / wall
                parts.setdefault((b, c), []).append(r)
            runs = []
            for (b, c), rs in sorted(parts.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
                lat = np.concatenate([r.pop("latencies") for r in rs])
                health = json.loads(__import__("urllib.request").request.urlopen(
                    servers[b][1] + "healthz", timeout=10).read())
                run = {
                    "max_batch": b,
                    "concurrency": c,
                    "requests": sum(r["requests"] for r in rs),
                    "failed": sum(r["failed"] for r in rs),
                    "images_per_s": sum(r["requests"] for r in rs) / sum(r["seconds"] for r in rs),
                    "p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else float("nan"),
                    "p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else float("nan"),
                    "failure_examples": [e for r in rs for e in r["failure_examples"]][:3],
                    "server_mean_batch_all_phases": health["batching"]["mean_batch"],
                    "server_cpu_ms_per_image": _mean([r["server_cpu_ms"] for r in rs]),
                    "client_cpu_cores": _mean([r["client_cores"] for r in rs]),
                }
                runs.append(run)
                print(_row(run, model_only), flush=True)
        finally:
            for proc, _ in servers.values():
                _stop_server(proc)
    ident = {"model": str(model), "precision": precision, "images": images or "synthetic",
             "n_images": len(files)}
    return {"setup": ident, "model_only": model_only, "runs": runs,
            "wall_s": time.perf_counter() - t0, "cpu_count": os.cpu_count()}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _row(r: dict[str, Any], model_only: dict[str, Any]) -> str:
    ratio = r["images_per_s"] / model_only["images_per_s"]
    return (f"max_batch {r['max_batch']:>2}  concurrency {r['concurrency']:>2}: "
            f"{r['images_per_s']:7.1f} img/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
            f"failed {r['failed']}  ratio to model-only {ratio:.2f}  "
            f"server CPU {r['server_cpu_ms_per_image'] or float('nan'):.1f} ms/img  "
            f"client {r['client_cpu_cores']:.2f} cores  "
            f"(server mean batch over all its phases {r['server_mean_batch_all_phases']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bmcd.serving.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    p.add_argument("--images", metavar="DIR", help="folder of cell images (default: synthetic cells)")
    p.add_argument("--budget-s", type=float, default=60.0, help="total time budget (default 60)")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = p.parse_args(argv)
    res = run_loadtest(a.model, precision=a.precision, images=a.images, budget_s=a.budget_s,
                       max_wait_ms=a.max_wait_ms)
    mo = res["model_only"]
    print(f"model-only (bmcd bench style): batch 32 {mo['batch_32']['images_per_s']:.1f} img/s, "
          f"batch 1 {mo['batch_1']['images_per_s']:.1f} img/s; "
          f"wall {res['wall_s']:.1f} s on {res['cpu_count']} CPUs")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
