"""The Dask distributed engine behind ``bmcd.scoring.score(..., engine="dask")``.

The driver lists the inputs once, lazily, and cuts them into partitions of
``partition_size`` paths. Each partition is one Dask task: the worker preprocesses and
infers it with the same pipeline as the local engine and returns one ``(p_all, error)``
pair per path. The driver writes the rows in input order (out-of-order partitions wait in
a bounded window), flushing each, so the output and ``resume`` behave exactly as with the
local engine.

Each worker process loads the model once with the driver's backend (ONNX Runtime or
OpenVINO) and keeps it (:func:`worker_backend`); the backend gets ``host cores // Dask
threads on that host`` threads, so workers x threads does not oversubscribe a machine.

Needs the ``scale`` extra (``dask[distributed]``); every ``distributed`` import is lazy.
This module shares the pipeline, the CSV sink and the input listing with the local
engine and never imports it (docs/architecture.rst). Although it is named
``bmcd.scoring.dask``, ``import dask`` anywhere (here included) still means the
top-level Dask package: Python 3 imports are absolute.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

from .._deps import optional_import
from ..artifact import ModelMeta
from ..errors import BmcdError, DatasetError, SchedulerUnavailableError
from ..preprocessing import default_workers
from ..runtimes import Backend, get_backend
from ._pipeline import Pipeline, Row, batched, progress_bar
from ._sink import CsvSink

__all__ = ["run_dask", "score_partition", "probe_worker", "worker_backend", "PREFLIGHT_SAMPLE"]

#: How many input paths (plus the model file) every worker must be able to open before
#: any partition is submitted.
PREFLIGHT_SAMPLE = 16

# (backend, model file, precision, threads, options, (mtime_ns, size)) -> Backend, per process
_WORKER_BACKENDS: dict[tuple, Any] = {}
_WORKER_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------
# worker side (module-level functions: Dask pickles them by reference)
# ---------------------------------------------------------------------------------------


def worker_spec_options(backend: Backend, options: dict[str, Any] | None) -> dict[str, Any]:
    """The load options a worker needs to rebuild ``backend`` (besides file and threads)."""
    opts = dict(options or {})
    opts.pop("intra_op_threads", None)
    if backend.name == "onnx":
        opts["allow_spinning"] = False  # waiting threads leave the cores to preprocessing
    elif backend.name == "openvino":
        for attr in ("num_streams", "performance_hint", "cpu_pinning", "force_bf16"):
            if hasattr(backend, attr):
                opts.setdefault(attr, getattr(backend, attr))
    return opts


def worker_backend(spec: dict[str, Any]) -> Backend:
    """This process's backend for ``spec``, created on first use.

    The cache key includes the backend, its options and the model file's mtime and size,
    so a long-lived worker picks up a re-exported model (or another backend) instead of
    serving a stale session. A backend that is neither ONNX Runtime nor OpenVINO travels
    pickled in ``spec["instance"]``.
    """
    if spec.get("instance") is not None:
        return spec["instance"]
    threads = spec["threads"] or spec["threads_by_host"].get(socket.gethostname(), 1)
    options = spec.get("options") or {}
    name = spec.get("backend", "onnx")
    key = (
        name, spec["model_file"], spec["precision"], threads,
        tuple(sorted((k, repr(v)) for k, v in options.items())), spec["stamp"],
    )
    with _WORKER_LOCK:
        backend = _WORKER_BACKENDS.get(key)
        if backend is None:
            backend = get_backend(name)(
                spec["model_file"],
                spec["meta"],
                precision=spec["precision"],
                intra_op_threads=threads,
                **options,
            )
            _WORKER_BACKENDS[key] = backend
    return backend


def score_partition(
    spec: dict[str, Any], paths: list[str], batch_size: int
) -> list[tuple[float | None, str | None, bool]]:
    """Score one partition on a worker: ``(p_all, None, no_cell)`` or ``(None, error, False)``."""
    backend = worker_backend(spec)
    config = ModelMeta.from_dict(backend.meta).preprocess
    # one preprocessing thread: it overlaps this task thread's inference, and the
    # cluster's parallelism comes from its workers
    pipe = Pipeline(backend.predict_batch, config, batch_size=batch_size, workers=1)
    out: list[tuple[float | None, str | None, bool]] = []
    for rows in pipe.run(paths):
        out.extend((p, err, no_cell) for _, p, err, no_cell in rows)
    return out


def probe_worker(paths: list[str]) -> dict[str, Any]:
    """Run on every worker before scoring: its host, CPU count, and paths it cannot read."""
    unreadable = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as exc:
            unreadable.append((p, f"{exc.__class__.__name__}: {exc.strerror or exc}"))
    return {
        "host": socket.gethostname(),
        "cpus": default_workers(),
        "pid": os.getpid(),
        "unreadable": unreadable,
    }


# ---------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------


def _rows(paths: list[str], results: list[tuple]) -> list[Row]:
    """Rows for the sink; error messages name the path as given, like the local engine."""
    rows = []
    for path, (p, err, *rest) in zip(paths, results, strict=True):
        if err is not None:
            full = os.path.abspath(path)
            if full != path:
                err = err.replace(full, path)
        rows.append((path, p, err, bool(rest and rest[0])))
    return rows


def _check_address(address: str) -> str:
    """Refuse an address Dask cannot parse, before a Client is made of it.

    A ``distributed.Client`` built on such an address fails, and its finaliser then waits
    10 s and prints a traceback ("Exception ignored in Client.__del__"); checking first
    gives one clear line at once.
    """
    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        registry.get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            host, _ = parse_host_port(location)
            socket.getaddrinfo(host, None)
    except (ValueError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SchedulerUnavailableError(
            f"'{address}' is not a usable Dask scheduler address ({why}). Give "
            f"tcp://HOST:PORT as printed by `dask scheduler` (default port 8786), or leave "
            f"out --scheduler to start a local cluster."
        ) from None
    return address


def _connect(distributed, scheduler: Any, workers: int | None, connect_timeout: float):
    """Return (client, cluster or None, whether we own the client)."""
    if isinstance(scheduler, distributed.Client):
        return scheduler, None, False
    if scheduler is None:
        with warnings.catch_warnings():
            # the scheduler's HTTP endpoint falls back to a free port when 8787 is taken
            warnings.filterwarnings("ignore", message="Port 8787 is already in use")
            cluster = distributed.LocalCluster(
                n_workers=workers or default_workers(),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        return client, cluster, True
    address = _check_address(str(scheduler))
    try:
        client = distributed.Client(address, timeout=connect_timeout, set_as_default=False)
    except Exception as exc:  # OSError / TimeoutError / CommClosedError ...
        raise SchedulerUnavailableError(
            f"Could not reach a Dask scheduler at '{address}' within {connect_timeout:g} s "
            f"({exc.__class__.__name__}: {exc}). Check the address and port (e.g. "
            f"tcp://host:8786) and that `dask scheduler` is running and reachable, or leave "
            f"out the scheduler to start a local cluster."
        ) from exc
    try:
        client.wait_for_workers(1, timeout=connect_timeout)
    except Exception as exc:
        client.close()
        raise SchedulerUnavailableError(
            f"The Dask scheduler at '{address}' answered but has no workers after "
            f"{connect_timeout:g} s. Start some with `dask worker {address}`."
        ) from exc
    return client, None, True


def _preflight(client, sample: list[str]) -> dict[str, int]:
    """Check every worker can read ``sample``; return ONNX Runtime threads per host."""
    probes = client.run(probe_worker, sample)
    if not probes:
        raise SchedulerUnavailableError("The Dask cluster has no workers.")
    for addr, info in probes.items():
        if info["unreadable"]:
            path, why = info["unreadable"][0]
            raise DatasetError(
                f"Dask worker {addr} (host {info['host']}) cannot read '{path}' ({why}), "
                f"although this machine can. Workers open the model and the images "
                f"themselves: put them on storage every worker mounts at the same path "
                f"(NFS, a parallel file system, ...)."
            )
    nthreads = client.nthreads()
    per_host: dict[str, list[int]] = {}
    for addr, info in probes.items():
        host = per_host.setdefault(info["host"], [info["cpus"], 0])
        host[1] += int(nthreads.get(addr, 1))
    return {host: max(1, cpus // max(1, used)) for host, (cpus, used) in per_host.items()}


def run_dask(
    backend: Backend,
    paths: Iterator[str],
    sink: CsvSink,
    *,
    batch_size: int,
    partition_size: int,
    workers: int | None,
    scheduler: Any,
    intra_op_threads: int | None,
    progress: bool,
    connect_timeout: float,
    retries: int,
    backend_options: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Score ``paths`` on Dask, writing rows in input order to ``sink``.

    Returns the peak number of partitions in flight (submitted or waiting to be written)
    and a dict of details (workers, threads per host).
    """
    distributed = optional_import("distributed", purpose="engine='dask'")
    partitions = enumerate(batched(paths, partition_size))
    first = next(partitions, None)
    if first is None:  # nothing left to score: don't start a cluster
        return 0, {}

    known = backend.name in ("onnx", "openvino") and hasattr(backend, "model_path")
    model_file = os.path.abspath(backend.model_path) if known else None
    st = os.stat(model_file) if known else None
    readable = [os.path.abspath(p) for p in first[1] if os.access(p, os.R_OK) and os.path.isfile(p)]
    sample = [model_file, *readable[:PREFLIGHT_SAMPLE]] if known else readable[:PREFLIGHT_SAMPLE]

    t_connect = time.perf_counter()
    client, cluster, own_client = _connect(distributed, scheduler, workers, connect_timeout)
    token = uuid.uuid4().hex[:8]
    submitted: dict[str, tuple[int, list[str], Any]] = {}
    try:
        threads_by_host = _preflight(client, sample)
        n_threads = sum(client.nthreads().values())
        spec = {
            "backend": backend.name,
            "model_file": model_file,
            "meta": backend.meta,
            "precision": getattr(backend, "precision", "fp32"),
            "threads": intra_op_threads,
            "threads_by_host": threads_by_host,
            "stamp": (st.st_mtime_ns, st.st_size) if known else None,
            "options": worker_spec_options(backend, backend_options) if known else {},
            "instance": None if known else backend,
        }
        window = max(4, 2 * n_threads)
        ac = distributed.as_completed(loop=client.loop)
        pending_parts: list[tuple[int, list[str]] | None] = [first]
        results: dict[int, tuple[list[str], list]] = {}
        next_write = 0
        next_submit = 0
        peak = 0
        n_images = 0

        def take() -> tuple[int, list[str]] | None:
            if pending_parts:
                return pending_parts.pop()
            return next(partitions, None)

        def fill() -> None:
            nonlocal next_submit, peak
            while next_submit - next_write < window:
                part = take()
                if part is None:
                    return
                idx, part_paths = part
                fut = client.submit(
                    score_partition,
                    spec,
                    [os.path.abspath(p) for p in part_paths],
                    batch_size,
                    key=f"bmcd-score-{token}-{idx}",
                    retries=retries,
                )
                submitted[fut.key] = (idx, part_paths, fut)
                ac.add(fut)
                next_submit += 1
                peak = max(peak, next_submit - next_write)

        t0 = time.perf_counter()
        fill()
        with progress_bar(progress, "part", "scoring (dask)") as bar:
            for fut in ac:
                idx, part_paths, _ = submitted.pop(fut.key)
                try:
                    res = fut.result()
                except BmcdError:
                    raise
                except Exception as exc:
                    raise BmcdError(
                        f"Partition {idx} ({len(part_paths)} files from '{part_paths[0]}') "
                        f"failed on the Dask cluster ({exc.__class__.__name__}: {exc}). The "
                        f"rows scored so far are in the output; rerun with --resume."
                    ) from exc
                fut.release()
                results[idx] = (part_paths, res)
                while next_write in results:
                    done_paths, done_res = results.pop(next_write)
                    sink.write_rows(_rows(done_paths, done_res))
                    n_images += len(done_paths)
                    next_write += 1
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix(img_s=f"{n_images / elapsed:.1f}" if elapsed > 0 else "-")
                fill()
        details = {
            "setup_seconds": t0 - t_connect,
            "scoring_seconds": time.perf_counter() - t0,
            "n_workers": len(client.nthreads()),
            "threads_per_host": threads_by_host,
            "partitions": next_write,
        }
        return peak, details
    finally:
        if submitted:
            client.cancel([f for _, _, f in submitted.values()], force=True)
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
