"""The decoder pool: a worker that dies or hangs costs one file, never the scan."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import write_track
from crashers import crash_or_decode
from tagger.pool import DecodeJob, DecodePool, Failure


def job_of(path: Path) -> DecodeJob:
    return DecodeJob(str(path), 22050, 3, 10.0)


def files(folder: Path, n: int, seconds: float = 1.0) -> list[Path]:
    return [write_track(folder / f"good{i:02d}.wav", seconds=seconds) for i in range(n)]


def test_a_crashing_decoder_costs_one_file(tmp_path):
    good = files(tmp_path, 6)
    crash = write_track(tmp_path / "crash.wav", seconds=1.0)
    items = good[:3] + [crash] + good[3:]
    results = dict(DecodePool(2, function=crash_or_decode).imap(items, job_of))
    assert set(results) == set(items)
    assert isinstance(results[crash], Failure) and results[crash].transient
    assert results[crash].reason == "the decoder crashed (worker exit code -11)"
    assert not any(isinstance(results[f], Failure) for f in good)


def test_a_crash_while_the_consumer_is_busy(tmp_path):
    """Work keeps being dealt while a dead worker's last results wait to be taken."""
    good = files(tmp_path, 24)
    crash = write_track(tmp_path / "crash.wav", seconds=1.0)
    items = good[:3] + [crash] + good[3:]
    results = {}
    for item, result in DecodePool(1, function=crash_or_decode).imap(items, job_of):
        results[item] = result
        time.sleep(0.05)                      # the model running in the main thread
    assert set(results) == set(items)
    assert [f for f in items if isinstance(results[f], Failure)] == [crash]


def test_a_hanging_decoder_is_given_up_on(tmp_path):
    good = files(tmp_path, 3)
    hang = write_track(tmp_path / "hang.wav", seconds=1.0)
    results = dict(DecodePool(1, timeout=3.0, function=crash_or_decode).imap([hang] + good, job_of))
    assert results[hang] == Failure("decoding took longer than 3 s; gave up on it", transient=True)
    assert not any(isinstance(results[f], Failure) for f in good)


def test_a_slow_consumer_is_not_a_hung_decoder(tmp_path):
    good = files(tmp_path, 8)
    results = {}
    # The timeout counts from when a file is handed to a worker, the worker's own start-up
    # included: 3 s leaves room for that on a busy machine (1 s did not).
    for item, result in DecodePool(2, timeout=3.0).imap(good, job_of):
        results[item] = result
        if len(results) == 1:
            time.sleep(4.5)                   # longer than the timeout
    assert not any(isinstance(r, Failure) for r in results.values())


def test_inline_runs_the_same_function(tmp_path):
    good = write_track(tmp_path / "good.wav", seconds=1.0)
    missing = tmp_path / "missing.wav"
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio")
    results = dict(DecodePool(0).imap([good, missing, notes], job_of))
    assert results[missing] == Failure("file not found", transient=True)
    assert not results[notes].transient
    assert len(results[good].waveforms) == 1


def test_stop_is_seen_while_a_decoder_hangs(tmp_path):
    hang = write_track(tmp_path / "hang.wav", seconds=1.0)
    deadline = time.monotonic() + 1.0
    pool = DecodePool(1, timeout=600, function=crash_or_decode)
    started = time.monotonic()
    assert list(pool.imap([hang], job_of, should_stop=lambda: time.monotonic() > deadline)) == []
    assert time.monotonic() - started < 10


def test_leaving_early_stops_every_worker(tmp_path):
    good = files(tmp_path, 12, seconds=12.0)
    pool = DecodePool(2)
    results = pool.imap(good, job_of)
    next(results)
    processes = [w.process for w in pool._workers.values()]
    started = time.monotonic()
    results.close()                      # what a stopped scan does
    assert time.monotonic() - started < 10
    assert processes and not any(p.is_alive() for p in processes)


def _decoder_processes() -> list:
    import psutil
    return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


def test_no_more_decoders_than_files(tmp_path, model_path):
    """--workers 64 for one file started 64 processes."""
    from tagger.checkpoint import load
    from tagger.classify import Classifier
    from tagger.crawl import crawl
    from tagger.scanner import classify_files
    write_track(tmp_path / "one.wav", seconds=1.0)
    batches = classify_files(list(crawl([tmp_path])), Classifier(load(model_path), "cpu"),
                             workers=8, batch_size=1)
    try:
        (result,) = next(batches)
        assert result.status == "ok"
        assert len(_decoder_processes()) == 1
    finally:
        batches.close()
    assert _decoder_processes() == []


def test_show_and_scan_share_the_decode_timeout(tmp_path, model_path):
    """`show` decodes through classify_files, as the scan does: a hung decoder costs one
    file after the timeout (show decoded in-process, with no timeout)."""
    from tagger.checkpoint import load
    from tagger.classify import Classifier
    from tagger.crawl import Candidate
    from tagger.scanner import classify_files
    good = write_track(tmp_path / "good.wav", seconds=1.0)
    hang = write_track(tmp_path / "hang.wav", seconds=1.0)
    todo = [Candidate(str(hang), 0, 0), Candidate(str(good), 0, 0)]
    results = [r for batch in classify_files(todo, Classifier(load(model_path), "cpu"),
                                             workers=1, batch_size=1, decode_timeout=2.0,
                                             function=crash_or_decode) for r in batch]
    assert {r.path: r.status for r in results} == {str(hang): "error", str(good): "ok"}
    assert results[0].error == "decoding took longer than 2 s; gave up on it"


def test_a_kept_pool_reuses_its_worker_across_imaps(tmp_path):
    """keep=True (cluster-scan's decode actors: one imap per block) starts the worker once;
    a crash in one imap is replaced as ever, and close() ends the worker."""
    from crashers import worker_pid
    good, crash = files(tmp_path, 2), write_track(tmp_path / "crash.wav", seconds=1.0)
    pool = DecodePool(1, keep=True, function=worker_pid)
    first = [r.reason for _, r in pool.imap(good, job_of)]
    second = [r.reason for _, r in pool.imap(good, job_of)]
    assert len(set(first + second)) == 1, (first, second)
    pool.close()
    kept = DecodePool(1, keep=True, function=crash_or_decode)
    assert dict(kept.imap([crash], job_of))[crash].reason.startswith("the decoder crashed")
    assert not any(isinstance(r, Failure) for _, r in kept.imap(good, job_of))
    kept.close()
