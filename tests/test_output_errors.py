"""Output that cannot be written, against real tagger processes: a pipe whose reader has gone
(`tagger query | head -1`) ends tagger quietly with exit code 0, a full disk (/dev/full) is
one "Error:" line and exit code 1. Never a traceback, and never Python's "Exception
ignored" when it flushes stdout at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_track
from tagger.genres import GENRES
from tagger.index import Index, TrackResult

ROWS = 2000                 # far more than a pipe holds (64 KiB), as CSV
FULL = "Error: cannot write the output (No space left on device)\n"
CLOSED_PIPE = 0             # see tagger.cli.output_failed


@pytest.fixture(scope="module")
def big_index(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("output") / "index.db"
    with Index(db) as index:
        index.store([TrackResult(f"/music/{i:05d} a rather long file name.flac", 1, 1,
                                 "0123456789ab", "ok",
                                 {g: 0.55 if j == i % 10 else 0.05 for j, g in enumerate(GENRES)})
                     for i in range(ROWS)])
    return db


def tagger(*args, stdout) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tagger", *map(str, args)], stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


def closed_pipe():
    """The write end of a pipe whose read end is already closed."""
    read, write = os.pipe()
    os.close(read)
    return write


QUERIES = [["--format", f] for f in ("table", "json", "csv", "m3u")]


@pytest.mark.parametrize("fmt", QUERIES, ids=lambda a: a[1])
def test_a_closed_pipe_ends_query_quietly(big_index, fmt):
    write = closed_pipe()
    try:
        proc = tagger("query", "--db", big_index, *fmt, stdout=write)
    finally:
        os.close(write)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (CLOSED_PIPE, "")


def test_a_reader_that_goes_away_early_ends_query_quietly(big_index):
    """`tagger query --format csv | head -1`: the reader leaves while tagger is writing."""
    proc = tagger("query", "--db", big_index, "--format", "csv", stdout=subprocess.PIPE)
    assert proc.stdout.readline().startswith("path,genre,")
    proc.stdout.close()
    err = proc.stderr.read()
    assert (proc.wait(timeout=60), err) == (CLOSED_PIPE, "")


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


@needs_dev_full
@pytest.mark.parametrize("fmt", QUERIES, ids=lambda a: a[1])
def test_a_full_disk_is_one_error_line(big_index, fmt):
    with open("/dev/full", "w") as full:
        proc = tagger("query", "--db", big_index, *fmt, stdout=full)
        _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (1, FULL)


def ends_as_promised(*args) -> None:
    """A full disk: one Error: line and 1; a closed pipe: quietly, 0."""
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            proc = tagger(*args, stdout=full)
            _, err = proc.communicate(timeout=120)
        assert (proc.returncode, err) == (1, FULL), args
    write = closed_pipe()
    try:
        proc = tagger(*args, stdout=write)
    finally:
        os.close(write)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (CLOSED_PIPE, ""), args


def test_help_version_and_the_scan_summary_end_the_same_way(tmp_path, model_path):
    empty = tmp_path / "Empty"
    empty.mkdir()
    for args in (["--help"], ["--version"], ["scan", empty, "--db", tmp_path / "new.db",
                                             "--model", model_path]):
        ends_as_promised(*args)


@pytest.mark.slow
def test_show_ends_the_same_way(tmp_path, model_path):
    ends_as_promised("show", write_track(tmp_path / "one.wav", seconds=1.0), "--model", model_path)
