"""The Dask engine: parity with the local engine, lost workers, unreachable schedulers."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import write_bad_files, write_cell_images

distributed = pytest.importorskip("distributed")

from bmcd.cli import EXIT_PARTIAL, main  # noqa: E402
from bmcd.errors import SchedulerUnavailableError  # noqa: E402
from bmcd.preprocessing import default_workers  # noqa: E402
from bmcd.scoring import OUTPUT_COLUMNS, score  # noqa: E402

pytestmark = pytest.mark.dask


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == OUTPUT_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def cluster():
    """LocalCluster(n_workers=2, processes=True) shared by this module's tests."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=50,
    ) as cl, distributed.Client(cl, set_as_default=False) as client:
        yield cl, client


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """240 synthetic cells (160 px BMP) with a truncated, an empty and a non-image file."""
    root = tmp_path_factory.mktemp("dask_imgs")
    good = write_cell_images(root / "cells", 240, size=160, seed=7)
    write_bad_files(root / "cells", good[0])  # same folder: errors interleave with good rows
    return root


@pytest.fixture(scope="module")
def local_result(tiny_onnx_model_dir, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.csv"
    s = score(tiny_onnx_model_dir, image_dir, out, batch_size=16, progress=False)
    assert s.n_errors == 3
    return out


def wait_for_workers(client, n=2, timeout=60):
    client.wait_for_workers(n, timeout=timeout)
    deadline = time.monotonic() + timeout
    while len(client.nthreads()) < n and time.monotonic() < deadline:
        time.sleep(0.1)


def assert_same_rows(got: Path, expected: Path) -> None:
    a, b = read_rows(got), read_rows(expected)
    assert [r["path"] for r in a] == [r["path"] for r in b]  # same rows, same order
    for ra, rb in zip(a, b, strict=True):
        assert ra["label"] == rb["label"] and ra["error"] == rb["error"]
        assert ra["threshold"] == rb["threshold"]
        if rb["p_all"]:
            assert abs(float(ra["p_all"]) - float(rb["p_all"])) <= 1e-6
        else:
            assert ra["p_all"] == ""


def test_dask_matches_local_engine(cluster, tiny_onnx_model_dir, image_dir, local_result, tmp_path):
    _, client = cluster
    wait_for_workers(client)
    out = tmp_path / "dask.csv"
    s = score(
        tiny_onnx_model_dir, image_dir, out, engine="dask", scheduler=client.scheduler.address,
        partition_size=25, batch_size=8, progress=False,
    )
    assert (s.n_total, s.n_scored, s.n_errors, s.engine) == (243, 240, 3, "dask")
    assert s.extra["partitions"] == 10 and s.extra["n_workers"] == 2
    assert s.extra["threads_per_host"] == {socket.gethostname(): max(1, default_workers() // 2)}
    assert_same_rows(out, local_result)
    # a connected Client works too, and is left open
    out2 = tmp_path / "dask2.csv"
    score(tiny_onnx_model_dir, image_dir, out2, engine="dask", scheduler=client,
          partition_size=100, progress=False)
    assert_same_rows(out2, local_result)
    assert client.status == "running"


def test_model_loaded_once_per_worker(cluster, tiny_onnx_model_dir, image_dir, tmp_path):
    _, client = cluster
    wait_for_workers(client)
    model = tmp_path / "model-copy"  # a new path: a new cache entry on every worker
    shutil.copytree(tiny_onnx_model_dir, model)

    def sessions():
        from bmcd.runtimes.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend.sessions_created

    before = client.run(sessions)
    s = score(model, image_dir, tmp_path / "o.csv", engine="dask",
              scheduler=client.scheduler.address, partition_size=10, progress=False)
    after = client.run(sessions)
    created = {w: after[w] - before.get(w, 0) for w in after}
    assert s.extra["partitions"] == 25 > len(after)  # many more partitions than workers
    assert all(n <= 1 for n in created.values()), created  # once per worker, not per task
    assert 1 <= sum(created.values()) <= len(after)
    # a second run reuses the cached sessions: nothing new is loaded
    score(model, image_dir, tmp_path / "o2.csv", engine="dask",
          scheduler=client.scheduler.address, partition_size=10, progress=False)
    assert client.run(sessions) == after


class KillWorkerOnce(distributed.WorkerPlugin):
    """SIGKILL the worker process when it starts its first bmcd partition (once per test)."""

    def __init__(self, marker: str):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "bmcd-score" in str(key) and not os.path.exists(self.marker):
            Path(self.marker).write_text(f"{os.getpid()} {key}")
            os.kill(os.getpid(), signal.SIGKILL)


def test_worker_killed_part_way_still_one_row_per_input(
    cluster, tiny_onnx_model_dir, image_dir, local_result, tmp_path
):
    import cloudpickle

    _, client = cluster
    wait_for_workers(client)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "killed.marker"
    pids_before = set(client.run(os.getpid).values())
    client.register_plugin(KillWorkerOnce(str(marker)), name="kill-once")
    try:
        out = tmp_path / "o.csv"
        s = score(tiny_onnx_model_dir, image_dir, out, engine="dask",
                  scheduler=client.scheduler.address, partition_size=20, progress=False)
    finally:
        client.unregister_worker_plugin("kill-once")
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists(), "no worker was killed"
    killed_pid = int(marker.read_text().split()[0])
    assert killed_pid in pids_before
    assert s.n_scored + s.n_errors == 243
    assert_same_rows(out, local_result)  # exactly one row per input, in input order
    wait_for_workers(client)  # the nanny restarts the killed worker
    assert killed_pid not in set(client.run(os.getpid).values())


def test_resume_with_dask_matches_a_clean_run(
    cluster, tiny_onnx_model_dir, image_dir, local_result, tmp_path
):
    _, client = cluster
    wait_for_workers(client)
    lines = local_result.read_text().splitlines(keepends=True)
    out = tmp_path / "part.csv"
    out.write_text("".join(lines[:101]) + lines[101][:10])  # 100 rows + a torn one
    s = score(tiny_onnx_model_dir, image_dir, out, engine="dask", resume=True,
              scheduler=client.scheduler.address, partition_size=30, progress=False)
    assert (s.n_skipped, s.n_scored + s.n_errors) == (100, 143)
    assert_same_rows(out, local_result)


def test_unreachable_scheduler_fails_fast(tiny_onnx_model_dir, image_dir, tmp_path):
    with socket.socket() as sock:  # a free port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SchedulerUnavailableError, match=rf"127\.0\.0\.1:{port}.*dask scheduler"):
        score(tiny_onnx_model_dir, image_dir, tmp_path / "o.csv", engine="dask",
              scheduler=f"tcp://127.0.0.1:{port}", connect_timeout=3, progress=False)
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "o.csv").exists()  # nothing written: a rerun needs no --resume


def test_cli_dask_engine_with_its_own_local_cluster(
    tiny_onnx_model_dir, image_dir, tmp_path, capsys, monkeypatch
):
    """No --scheduler: a LocalCluster sized by --workers is started and closed.

    Relative inputs: workers get absolute paths, but the output (paths and error messages)
    is the same as the local engine's.
    """
    monkeypatch.chdir(image_dir)
    local = tmp_path / "local.csv"
    assert main(["score", str(tiny_onnx_model_dir), "cells", "--out", str(local)]) == EXIT_PARTIAL
    out = tmp_path / "o.csv"
    rc = main(["score", str(tiny_onnx_model_dir), "cells", "--out", str(out),
               "--engine", "dask", "--workers", "2", "--partition-size", "64", "--no-progress"])
    assert rc == EXIT_PARTIAL
    assert "engine dask" in capsys.readouterr().out
    assert_same_rows(out, local)
    rows = read_rows(out)
    assert all(not os.path.isabs(r["path"]) for r in rows)
    assert sum(bool(r["error"]) for r in rows) == 3
    p = np.array([float(r["p_all"]) for r in rows if r["p_all"]])
    assert ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("address", ["notaurl", "http://localhost:8786", "tcp://no-such-host.invalid:8786"])
def test_an_unusable_scheduler_address_is_one_line_at_once(tiny_onnx_model_dir, image_dir, tmp_path,
                                                           address):
    """No "Exception ignored in Client.__del__" traceback and no 10 s hang (issue 12)."""
    out = tmp_path / "o.csv"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bmcd.cli", "score", str(tiny_onnx_model_dir), str(image_dir),
         "--out", str(out), "--scheduler", address, "--no-progress"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")])},
    )
    assert time.monotonic() - t0 < 8
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a usable Dask scheduler address" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system taking any bytes")
def test_dask_scores_and_resumes_a_non_utf8_file_name(cluster, tiny_onnx_model_dir, image_dir,
                                                      tmp_path):
    _, client = cluster
    wait_for_workers(client)
    src = tmp_path / "in"
    src.mkdir()
    cells = sorted((image_dir / "cells").glob("*.bmp"))[:4]
    raw_names = [b"a.bmp", b"b_\xff.bmp", b"c_\xe9.bmp", b"d.bmp"]
    for cell, raw in zip(cells, raw_names, strict=True):
        with open(os.path.join(os.fsencode(src), raw), "wb") as f:
            f.write(cell.read_bytes())
    local = tmp_path / "local.csv"
    score(tiny_onnx_model_dir, src, local, progress=False)
    out = tmp_path / "dask.csv"
    s = score(tiny_onnx_model_dir, src, out, engine="dask", scheduler=client.scheduler.address,
              partition_size=2, progress=False)
    assert (s.n_scored, s.n_errors) == (4, 0)
    data = out.read_bytes()
    assert data == local.read_bytes() and b"b_\xff.bmp," in data
    out.write_bytes(data[: data.index(b"c_\xe9")] + b'"c_')  # killed mid-row
    s = score(tiny_onnx_model_dir, src, out, engine="dask", resume=True,
              scheduler=client.scheduler.address, partition_size=2, progress=False)
    assert (s.n_skipped, s.n_scored) == (2, 2) and out.read_bytes() == data
