"""Scoring under hostile inputs (issue 12): the output is never damaged or mixed up, every
user error is one line, and every input gets exactly one row."""

from __future__ import annotations

import csv
import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _tiny_models import build_tiny_onnx_model, write_cell_images
from _tiny_weighted_model import build_weighted_onnx_model, weighted_model_expected
from bmcd.cli import EXIT_ERROR, EXIT_OK, main
from bmcd.errors import BmcdError, DatasetError, OutputExistsError, OutputWriteError
from bmcd.labels import label_names
from bmcd.preprocessing import PreprocessConfig, preprocess
from bmcd.scoring import LEGACY_COLUMNS, OUTPUT_COLUMNS, iter_inputs, score
from bmcd.scoring._output import OutputLock, sidecar_path

ROOT = Path(__file__).resolve().parents[2]


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> list[Path]:
    return write_cell_images(tmp_path_factory.mktemp("cells"), 12, size=64, seed=7)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return build_tiny_onnx_model(tmp_path_factory.mktemp("other"), bias=-7.0)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == EXIT_ERROR
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


# -- 1. resume never writes to a file that is not a bmcd scores CSV ----------------------


def test_resume_on_a_foreign_file_changes_nothing(tiny_onnx_model_dir, cells, tmp_path, capsys):
    bmp = tmp_path / "cell.bmp"
    bmp.write_bytes(cells[0].read_bytes()[:500])  # truncated: no newline-terminated "header"
    foreign = {
        "notes.csv": b"name,comment\nalpha,first\nbeta,last line without newline",
        "one_line.txt": b"a single line of notes",
        "model_copy.onnx": (tiny_onnx_model_dir / "model.onnx").read_bytes(),
        "cell.bmp": bmp.read_bytes(),
        "prefix.csv": b"path,p_all,label,threshold,error,warning,extra\nx,1,all,0.5,,\n",
    }
    for name, data in foreign.items():
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(OutputExistsError, match="not a bmcd scores CSV"):
            score(tiny_onnx_model_dir, cells, f, resume=True, progress=False)
        assert f.read_bytes() == data, name
        rc, out, err = run_cli(["score", str(tiny_onnx_model_dir), str(cells[0]), "--out", str(f),
                                "--resume", "--no-progress"], capsys)
        assert_one_line_error(rc, err, "not a bmcd scores CSV", "nothing was changed")
        assert f.read_bytes() == data, name
        assert not sidecar_path(f).exists()


# -- 2. a torn record that ends inside a quoted field holding a newline ------------------


def test_torn_record_inside_a_quoted_newline_resumes_exactly(tiny_onnx_model_dir, cells, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    names = ["a.bmp", "b\nnewline, comma.bmp", "c.bmp", 'd "quoted"\n.bmp', "e.bmp"]
    for i, name in enumerate(names):
        (src / name).write_bytes(cells[i].read_bytes())
    clean = tmp_path / "clean.csv"
    score(tiny_onnx_model_dir, src, clean, batch_size=2, progress=False)
    data = clean.read_bytes()
    assert len(rows_of(clean)) == 1 + len(names)
    for marker in (b"b\nnew", b'd ""quoted""\n'):
        # cut just after the embedded newline: the record is torn inside its quoted path
        cut = data.index(marker) + marker.index(b"\n") + 1
        out = tmp_path / f"torn{cut}.csv"
        out.write_bytes(data[:cut])
        s = score(tiny_onnx_model_dir, src, out, batch_size=2, resume=True, progress=False)
        assert out.read_bytes() == data
        assert s.n_skipped + s.n_scored == len(names)


# -- 3. the model's identity -------------------------------------------------------------


def test_resume_with_another_model_is_refused(tiny_onnx_model_dir, other_model, cells, tmp_path,
                                              capsys):
    out = tmp_path / "s.csv"
    score(tiny_onnx_model_dir, cells[:6], out, progress=False)
    record = sidecar_path(out).read_text()
    assert '"sha256"' in record and '"bmcd_version"' in record and '"threshold"' in record
    import hashlib
    sha_a = hashlib.sha256((tiny_onnx_model_dir / "model.onnx").read_bytes()).hexdigest()
    sha_b = hashlib.sha256((other_model / "model.onnx").read_bytes()).hexdigest()
    assert sha_a in record
    before = out.read_bytes()
    with pytest.raises(OutputExistsError) as exc:
        score(other_model, cells, out, resume=True, progress=False)
    assert sha_a in str(exc.value) and sha_b in str(exc.value) and "--out" in str(exc.value)
    assert out.read_bytes() == before and sidecar_path(out).read_text() == record
    rc, _, err = run_cli(["score", str(other_model), *map(str, cells), "--out", str(out),
                          "--resume", "--no-progress"], capsys)
    assert_one_line_error(rc, err, sha_b)
    # the same model resumes
    s = score(tiny_onnx_model_dir, cells, out, resume=True, progress=False)
    assert (s.n_skipped, s.n_scored) == (6, 6)


def test_an_older_five_column_file_resumes_with_five_columns(tiny_onnx_model_dir, cells, tmp_path):
    out = tmp_path / "old.csv"
    score(tiny_onnx_model_dir, cells[:4], out, progress=False)
    rows = rows_of(out)
    legacy = "".join(",".join(r[:5]) + "\n" for r in rows)
    out.write_text(legacy)
    sidecar_path(out).unlink()
    s = score(tiny_onnx_model_dir, cells, out, resume=True, progress=False)
    assert (s.n_skipped, s.n_scored) == (4, len(cells) - 4)
    new = rows_of(out)
    assert tuple(new[0]) == LEGACY_COLUMNS and all(len(r) == 5 for r in new)
    assert len(new) == 1 + len(cells) and sidecar_path(out).exists()


# -- 4. one run per output ---------------------------------------------------------------


HOLD = """
import sys, time
from pathlib import Path
from bmcd.scoring._output import OutputLock
lock = OutputLock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_the_same_output_refuses(tiny_onnx_model_dir, cells, tmp_path, capsys):
    out = tmp_path / "s.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_cli(["score", str(tiny_onnx_model_dir), *map(str, cells), "--out",
                              str(out), "--resume", "--no-progress"], capsys)
        assert_one_line_error(rc, err, "Another bmcd score run")
        assert not out.exists()
        # in-process too: the lock is per open file, not per process
        with pytest.raises(OutputExistsError, match="Another bmcd score run"):
            score(tiny_onnx_model_dir, cells, out, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops a dead process's flock
        holder.wait()
    s = score(tiny_onnx_model_dir, cells, out, progress=False)
    assert s.n_scored == len(cells) and len(rows_of(out)) == 1 + len(cells)
    assert not out.with_name(out.name + ".lock").exists()  # removed at the end


def test_the_lock_is_released_after_a_failed_run(tiny_onnx_model_dir, cells, tmp_path, monkeypatch):
    out = tmp_path / "s.csv"

    def boom(*a, **k):
        raise DatasetError("planted failure")

    monkeypatch.setattr("bmcd.scoring.run_local", boom)
    with pytest.raises(DatasetError, match="planted"):
        score(tiny_onnx_model_dir, cells, out, progress=False)
    lock = OutputLock(out)  # free again
    lock.release()


# -- 5. file names that are not UTF-8 ----------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system taking any bytes")
def test_a_non_utf8_file_name_gets_its_row_and_resume_finds_it(tiny_onnx_model_dir, cells,
                                                               tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw_names = [b"UID_1_1_1_all.bmp", b"UID_\xff_2_1_all.bmp", b"UID_\xe9t\xe9_3_1_hem.bmp",
                 b"UID_4_4_1_hem.bmp"]
    for i, raw in enumerate(raw_names):
        with open(os.path.join(os.fsencode(src), raw), "wb") as f:
            f.write(cells[i].read_bytes())
    clean = tmp_path / "clean.csv"
    s = score(tiny_onnx_model_dir, src, clean, batch_size=2, progress=False)
    assert (s.n_scored, s.n_errors) == (4, 0)
    data = clean.read_bytes()
    assert b"UID_\xff_2_1_all.bmp," in data  # the name's own bytes, not a replacement
    assert data.count(b"\n") == 5
    out = tmp_path / "resumed.csv"
    out.write_bytes(data[: data.index(b"UID_\xe9t\xe9")])  # a run killed after two rows
    s = score(tiny_onnx_model_dir, src, out, batch_size=2, resume=True, progress=False)
    assert (s.n_skipped, s.n_scored) == (2, 2)
    assert out.read_bytes() == data


# -- 8. the output must be writable before anything is scored ----------------------------


@pytest.mark.parametrize("where", ["/proc/bmcd-x.csv", "/proc/no-such-dir/x.csv"])
def test_an_unwritable_output_fails_before_scoring(tiny_onnx_model_dir, cells, where,
                                                   monkeypatch, capsys):
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    called = []
    monkeypatch.setattr("bmcd.scoring.run_local", lambda *a, **k: called.append(1))
    with pytest.raises(OutputWriteError):
        score(tiny_onnx_model_dir, cells, where, progress=False)
    rc, _, err = run_cli(["score", str(tiny_onnx_model_dir), str(cells[0]), "--out", where,
                          "--no-progress"], capsys)
    assert_one_line_error(rc, err, where)
    assert not called


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_before_scoring(tiny_onnx_model_dir, cells, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError, match="writable"):
            score(tiny_onnx_model_dir, cells, ro / "s.csv", progress=False)
    finally:
        ro.chmod(0o755)


def test_a_full_disk_mid_run_keeps_the_rows_so_far(tiny_onnx_model_dir, cells, tmp_path,
                                                   monkeypatch):
    clean = tmp_path / "clean.csv"
    score(tiny_onnx_model_dir, cells, clean, batch_size=4, progress=False)
    out = tmp_path / "s.csv"
    real_fsync = os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("bmcd.scoring._sink.os.fsync", fsync)
    with pytest.raises(OutputWriteError, match="No space left.*--resume"):
        score(tiny_onnx_model_dir, cells, out, batch_size=4, progress=False)
    monkeypatch.undo()
    assert len(rows_of(out)) >= 1 + 4  # the first chunk is kept
    score(tiny_onnx_model_dir, cells, out, batch_size=4, resume=True, progress=False)
    assert out.read_bytes() == clean.read_bytes()


class _FillingDisk:
    """A text file on a disk with ``budget`` characters free: writes are buffered, and the
    flush that would pass the budget fails with ENOSPC, as does the flush in ``close()``."""

    def __init__(self, f, budget: int):
        self._f, self.budget, self.pending = f, budget, ""

    def write(self, text: str) -> int:
        self.pending += text
        return len(text)

    def flush(self) -> None:
        if len(self.pending) > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._f.write(self.pending)
        self.budget -= len(self.pending)
        self.pending = ""
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._f.close()


@pytest.mark.parametrize("budget, kept", [(420, 4), (10, 0)], ids=["mid-run", "at-once"])
def test_a_disk_that_fills_is_one_line_and_resumable(tiny_onnx_model_dir, cells, tmp_path,
                                                     monkeypatch, capsys, budget, kept):
    """A disk that fills mid-run (the buffered rows fail again on close): one line, exit 1."""
    from bmcd.scoring._sink import CsvSink

    clean = tmp_path / "clean.csv"
    score(tiny_onnx_model_dir, cells, clean, batch_size=4, progress=False)
    assert len(clean.read_text()) > 2 * budget  # the disk fills before the end
    real_open = CsvSink._open
    monkeypatch.setattr(CsvSink, "_open", lambda self: _FillingDisk(real_open(self), budget))
    out = tmp_path / "s.csv"
    rc, _, err = run_cli(["score", str(tiny_onnx_model_dir), *map(str, cells), "--out", str(out),
                          "--batch-size", "4", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "No space left on device", "--resume")
    monkeypatch.undo()
    assert len(rows_of(out)) == (1 + kept if kept else 0)  # header and the first chunk
    score(tiny_onnx_model_dir, cells, out, batch_size=4, resume=True, progress=False)
    assert out.read_bytes() == clean.read_bytes()


def test_a_named_link_loop_gets_an_error_row_that_says_so(tiny_onnx_model_dir, cells, tmp_path):
    loop = tmp_path / "loop.bmp"
    loop.symlink_to(loop)
    dangling = tmp_path / "gone.bmp"
    dangling.symlink_to(tmp_path / "missing.bmp")
    out = tmp_path / "s.csv"
    s = score(tiny_onnx_model_dir, [cells[0], loop, dangling], out, progress=False)
    assert (s.n_scored, s.n_errors) == (1, 2)
    errors = {r[0]: r[4] for r in rows_of(out)[1:]}
    assert "symbolic link loop" in errors[str(loop)]
    assert "not found" in errors[str(dangling)]


# -- 9. manifests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, needle",
    [
        ("path\ncaf\xe9.bmp\n".encode("latin-1"), "not UTF-8"),
        (b"path\n" + bytes(range(256)) * 4, "not UTF-8"),
        (b"path\n" + b"x" * 140_000 + b"\n", "not valid CSV"),
    ],
    ids=["latin-1", "random-bytes", "huge-field"],
)
def test_an_unreadable_manifest_is_one_line(tiny_onnx_model_dir, tmp_path, content, needle, capsys):
    manifest = tmp_path / "list.csv"
    manifest.write_bytes(content)
    with pytest.raises(DatasetError, match=needle):
        list(iter_inputs([manifest]))
    rc, _, err = run_cli(["score", str(tiny_onnx_model_dir), str(manifest), "--out",
                          str(tmp_path / "s.csv"), "--no-progress"], capsys)
    assert_one_line_error(rc, err, str(manifest), needle)
    assert not (tmp_path / "s.csv").exists()
    # a labelled dataset manifest (bmcd info / evaluate / train) says the same
    rc, _, err = run_cli(["info", str(manifest)], capsys)
    assert_one_line_error(rc, err, str(manifest), needle)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000))
def test_manifest_parsing_on_random_bytes_raises_only_bmcd_errors(tmp_path, body):
    manifest = tmp_path / "random.csv"
    manifest.write_bytes(b"path\n" + body)
    try:
        listed = list(iter_inputs([manifest]))
    except BmcdError:
        return
    assert all(isinstance(p, str) for p in listed)


def test_manifest_cells_are_taken_as_written_unless_only_the_stripped_name_exists(tmp_path, cells):
    (tmp_path / " lead.bmp").write_bytes(cells[0].read_bytes())
    (tmp_path / "plain.bmp").write_bytes(cells[1].read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n lead.bmp\n  plain.bmp \n")
    assert [Path(p).name for p in iter_inputs([manifest])] == [" lead.bmp", "plain.bmp"]


# -- rough edges -------------------------------------------------------------------------


def test_no_inputs_is_an_error(tiny_onnx_model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "header_only.csv").write_text("path\n")
    for item in ("empty", "header_only.csv"):
        out = tmp_path / f"{item}.out.csv"
        rc, _, err = run_cli(["score", str(tiny_onnx_model_dir), str(tmp_path / item), "--out",
                              str(out), "--no-progress"], capsys)
        assert_one_line_error(rc, err, "no image file")
        assert not out.exists() and not sidecar_path(out).exists()


def test_out_dash_writes_the_csv_to_stdout(tiny_onnx_model_dir, cells, tmp_path, capsys,
                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = tmp_path / "ref.csv"
    score(tiny_onnx_model_dir, cells, ref, progress=False)
    rc, out, err = run_cli(["score", str(tiny_onnx_model_dir), *map(str, cells), "--out", "-",
                            "--no-progress"], capsys)
    assert rc == EXIT_OK
    assert out == ref.read_text() and "scored 12" in err
    assert not (tmp_path / "-").exists()
    rc, _, err = run_cli(["score", str(tiny_onnx_model_dir), str(cells[0]), "--out", "-",
                          "--resume"], capsys)
    assert_one_line_error(rc, err, "standard output")


def test_threads_default_is_documented_as_what_the_code_does():
    from bmcd.cli import build_parser
    from bmcd.preprocessing import default_workers
    from bmcd.scoring import default_local_threads

    assert default_local_threads() == default_workers()
    buf = io.StringIO()
    sub = build_parser()._subparsers._group_actions[0].choices["score"]
    sub.print_help(buf)
    text = " ".join(buf.getvalue().split())
    assert "CPU count - 1" not in text and "local: CPU count / inference workers," in text
    docs = (ROOT / "docs" / "scaling.rst").read_text()
    assert "minus one" not in docs


def test_no_cell_images_are_flagged_without_changing_the_first_five_columns(
    tiny_onnx_model_dir, cells, tmp_path
):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a_black.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(src / "b_one_pixel.png"), np.full((1, 1, 3), 3, np.uint8))
    (src / "c_cell.bmp").write_bytes(cells[0].read_bytes())
    out = tmp_path / "s.csv"
    s = score(tiny_onnx_model_dir, src, out, progress=False)
    rows = rows_of(out)
    assert tuple(rows[0]) == OUTPUT_COLUMNS and OUTPUT_COLUMNS[:5] == LEGACY_COLUMNS
    by_name = {Path(r[0]).name: r for r in rows[1:]}
    assert by_name["a_black.png"][5] == "no_cell" and by_name["b_one_pixel.png"][5] == "no_cell"
    assert by_name["c_cell.bmp"][5] == "" and by_name["a_black.png"][1] != ""
    assert s.n_no_cell == 2 and "without a cell" in str(s)


# -- a model that sees colours and positions ---------------------------------------------


SCALE, BIAS = 3e-5, -0.5  # logits of the 12 cells between about -1.6 and +1.7


def test_scoring_keeps_channel_order_and_orientation(cells, tmp_path):
    model = build_weighted_onnx_model(tmp_path / "weighted", image_size=32, scale=SCALE, bias=BIAS)
    out = tmp_path / "s.csv"
    score(model, cells, out, batch_size=5, progress=False)
    rows = rows_of(out)[1:]
    assert [r[0] for r in rows] == [str(c) for c in cells]
    cfg = PreprocessConfig(image_size=32)
    x = np.stack([preprocess(c, cfg) for c in cells])
    expected = weighted_model_expected(x, SCALE, BIAS)
    got = np.array([float(r[1]) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert got.std() > 0.1  # outputs vary, so the comparison has power
    # the test can tell: a channel swap or a flip changes outputs 40x beyond the tolerance
    for wrong in (x[..., ::-1], x[:, ::-1], x[:, :, ::-1]):
        assert np.abs(weighted_model_expected(wrong, SCALE, BIAS) - got).max() > 2e-3
    # one label rule: bmcd.labels.label_names
    thr = float(rows[0][3])
    assert [r[2] for r in rows] == label_names(got.astype(np.float32), thr).tolist()
