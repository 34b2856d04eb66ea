"""`refplan bench` as a user runs it: bad flags refused before anything runs; Ctrl-C mid-matrix.

The flag checks need no torch (milliseconds). The Ctrl-C test starts a real bench (the ci suite) in
its own process group, waits for the first row of the CSV, then sends SIGINT, and is marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from refplan.cli import main


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "0"], "--steps"),
    (["--steps", "-3"], "--steps"),
    (["--steps", "0", "--list"], "--steps"),
    (["--batch", "0"], "--batch"),
    (["--seq", "-1"], "--seq"),
    (["--lora-r", "0"], "--lora-r"),
    (["--timeout", "0"], "--timeout"),
])
def test_non_positive_numbers_exit_2_before_anything_runs(argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    assert _exit_code(["bench", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not out.exists()  # nothing ran, no CSV of 'unsupported' rows


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's refusals
        return e.code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_while_a_row_is_written_waits_for_the_whole_row(tmp_path):
    from refplan.harness.rows import append_row, read_done

    class SendsCtrlC:  # a cell whose formatting is interrupted half-way through the row
        def __str__(self):
            os.kill(os.getpid(), signal.SIGINT)
            return "ok"

    path = tmp_path / "bench.csv"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if pytest runs with it ignored
    try:
        append_row(path, {"key": "a", "status": "ok"})
        with pytest.raises(KeyboardInterrupt):
            append_row(path, {"key": "b", "status": SendsCtrlC(), "wall_s": 1.5})
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = read_done(path)
    assert list(rows) == ["a", "b"]
    assert rows["b"]["status"] == "ok" and rows["b"]["wall_s"] == "1.5"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "bench"])
def test_ctrl_c_stops_the_matrix_leaves_a_valid_csv_and_exits_130(target, tmp_path):
    """``group``: a terminal's Ctrl-C reaches the bench, its server and the scenario in flight.
    ``bench``: only the bench process gets SIGINT (``kill -INT``); it must end the others itself."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("trl")
    from refplan.harness.rows import COLUMNS

    out = tmp_path / "out"
    env = {**os.environ, "REFPLAN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "bench.txt", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "refplan.cli", "bench", "--suite", "ci", "--out", str(out), "--no-progress"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        # its own process group, as a terminal's foreground job; SIGINT as a terminal leaves it even
        # when pytest itself runs with SIGINT ignored (a background job)
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        csv_path = out / "bench.csv"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "bench.txt").read_text()
        assert csv_path.exists(), "no row within 300 s"

        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "bench.txt").read_text()
    assert rc == 130, text
    assert took < 30, f"took {took:.1f} s to stop"
    assert "interrupted" in text and "--resume" in text

    df = pd.read_csv(csv_path)
    assert list(df.columns) == COLUMNS
    assert 1 <= len(df) < 11  # the ci suite has 11 items; the one in flight is not written
    assert df["key"].is_unique
    assert set(df["status"]) <= {"ok", "unsupported"}, df[["key", "status", "error"]]

    deadline = time.monotonic() + 10  # no server or scenario process is left behind
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid)
