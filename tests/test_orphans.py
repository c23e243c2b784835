"""Decoder processes whose scan was killed (SIGKILL: no handler runs) leave quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import write_track
from test_interrupt import stored, wait_for_rows


@pytest.mark.slow
def test_workers_of_a_killed_scan_exit_without_a_traceback(model_path, tmp_path):
    library = tmp_path / "Music"
    for i in range(24):
        write_track(library / f"{i:02d}.wav", seconds=12.0, kind="noise", seed=i)
    db, log = tmp_path / "index.db", tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with open(log, "wb") as stderr:      # the workers inherit it
        proc = subprocess.Popen(
            [sys.executable, "-m", "tagger", "scan", str(library), "--db", str(db), "--model",
             str(model_path), "--workers", "2", "--batch-size", "2"],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        wait_for_rows(db, proc)
        workers = psutil.Process(proc.pid).children(recursive=True)  # and a resource tracker
        assert len(workers) >= 2
    finally:
        proc.kill()
        proc.wait(60)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "a decoder outlived its scan"
    assert stored(db) < 24
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Error" not in text, text
