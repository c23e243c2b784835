"""The decoder pool: a worker that dies or hangs costs one file, never the scan."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import write_track
from crashers import crash_or_decode
from tagger.pool import DecodeJob, DecodePool


def job_of(path: Path) -> DecodeJob:
    return DecodeJob(str(path), 22050, 3, 10.0)


def test_a_crashing_decoder_costs_one_file(tmp_path):
    files = [write_track(tmp_path / f"good{i}.wav", seconds=1.0) for i in range(6)]
    crash = write_track(tmp_path / "crash.wav", seconds=1.0)
    items = files[:3] + [crash] + files[3:]
    pool = DecodePool(2, function=crash_or_decode)
    results = dict(pool.imap(items, job_of))
    assert set(results) == set(items)
    assert isinstance(results[crash], str) and results[crash].startswith("the decoder crashed")
    assert all(not isinstance(results[f], str) for f in files)


def test_a_hanging_decoder_is_given_up_on(tmp_path):
    files = [write_track(tmp_path / f"good{i}.wav", seconds=1.0) for i in range(3)]
    hang = write_track(tmp_path / "hang.wav", seconds=1.0)
    pool = DecodePool(1, timeout=3.0, function=crash_or_decode)
    results = dict(pool.imap([hang] + files, job_of))
    assert results[hang] == "decoding took longer than 3 s; gave up on it"
    assert all(not isinstance(results[f], str) for f in files)


def test_inline_runs_the_same_function(tmp_path):
    good = write_track(tmp_path / "good.wav", seconds=1.0)
    missing = tmp_path / "missing.wav"
    results = dict(DecodePool(0).imap([good, missing], job_of))
    assert results[missing] == "file not found"
    assert len(results[good].waveforms) == 1


def test_leaving_early_stops_every_worker(tmp_path):
    files = [write_track(tmp_path / f"good{i}.wav", seconds=12.0) for i in range(12)]
    pool = DecodePool(2)
    results = pool.imap(files, job_of)
    next(results)
    processes = [w.process for w in pool._workers.values()]
    started = time.monotonic()
    results.close()                      # what a stopped scan does
    assert time.monotonic() - started < 10
    assert processes and not any(p.is_alive() for p in processes)
