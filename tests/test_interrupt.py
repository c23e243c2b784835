"""Ctrl-C, SIGTERM and a second scan on the same index, against a real scan process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run, write_track

N_TRACKS = 60


@pytest.fixture(scope="module")
def big_library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big") / "Music"
    for i in range(N_TRACKS):
        write_track(root / f"{i:03d}.wav", seconds=12.0, kind=("tone", "noise")[i % 2],
                    freq=100.0 + 10 * i, seed=i)
    return root


def start_scan(library: Path, db: Path, model: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "tagger", "scan", str(library), "--db", str(db), "--model",
         str(model), "--workers", "1", "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stored(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM tracks").fetchone()[0]
    except sqlite3.OperationalError:   # not created yet
        return 0


def wait_for_rows(db: Path, proc: subprocess.Popen, at_least: int = 2) -> None:
    deadline = time.monotonic() + 120
    while stored(db) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the scan stored nothing"
        time.sleep(0.05)


def check_consistent(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        partial = conn.execute(
            "SELECT count(*) FROM tracks t WHERE t.status = 'ok' AND "
            "(SELECT count(*) FROM probabilities p WHERE p.track_id = t.id) != 10").fetchone()[0]
        assert partial == 0
        orphans = conn.execute("SELECT count(*) FROM probabilities WHERE track_id NOT IN "
                               "(SELECT id FROM tracks)").fetchone()[0]
        assert orphans == 0
        return conn.execute("SELECT count(*) FROM tracks").fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_scan_resumes_without_repeating_work(big_library, model_path, tmp_path, signum):
    db = tmp_path / "index.db"
    proc = start_scan(big_library, db, model_path)
    wait_for_rows(db, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted: run the same command again to finish" in err
    done = check_consistent(db)
    assert 0 < done < N_TRACKS
    result = run("scan", big_library, "--db", db, "--model", model_path, "--workers", "0")
    assert f"{N_TRACKS - done} classified, {done} unchanged, 0 failed" in result.stdout
    assert check_consistent(db) == N_TRACKS


@pytest.mark.slow
def test_second_scan_on_the_same_index_is_refused(big_library, model_path, tmp_path):
    db = tmp_path / "index.db"
    proc = start_scan(big_library, db, model_path)
    try:
        wait_for_rows(db, proc)
        result = run("scan", big_library, "--db", db, "--model", model_path, "--workers", "0", ok=1)
        assert result.stderr == (f"Error: {db}: another tagger command (scan, write-tags or "
                                 "restore-tags) is writing to this index; wait for it to "
                                 "finish, or pass another --db\n")
        # reading while a scan writes is fine
        run("query", "--db", db, "--format", "json")
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    check_consistent(db)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_with_130_and_a_consistent_index(big_library, model_path, tmp_path):
    db = tmp_path / "index.db"
    proc = start_scan(big_library, db, model_path)
    wait_for_rows(db, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)                          # two signals sent at once arrive as one
    proc.send_signal(signal.SIGINT)          # may come after the first stop has finished,
    out, err = proc.communicate(timeout=120)  # even after tagger's own handlers are gone:
    # exit code 130, or death by SIGINT, which a shell also reports as 130; never "Aborted!"
    # (exit 1), never a traceback, and a consistent index
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "Aborted" not in err
    assert check_consistent(db) < N_TRACKS


def test_a_ctrl_c_while_the_interpreter_exits_prints_no_traceback(tmp_path):
    """The second Ctrl-C of a scan may land after the command has finished, while Python
    runs its exit handlers (multiprocessing's finalizers): it ends the process by SIGINT."""
    script = ("import atexit, sys, time\n"
              "from tagger.cli import main\n"
              "atexit.register(lambda: (print('exiting', flush=True), time.sleep(30)))\n"
              "sys.argv = ['tagger', '--version']\n"
              "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("tagger ")
        assert proc.stdout.readline() == "exiting\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT and "Traceback" not in err, err
