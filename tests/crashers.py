"""Decode functions that misbehave on purpose, importable by spawned worker processes."""

import os
import signal
import time

from tagger.pool import DecodeJob, decode_job


def crash_or_decode(job: DecodeJob):
    """Kills its own process on files named 'crash*', hangs on 'hang*', else decodes."""
    name = os.path.basename(job.path)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        time.sleep(3600)
    return decode_job(job)


def worker_pid(job: DecodeJob):
    """Decodes nothing: says which process it ran in (as a Failure's reason)."""
    from tagger.pool import Failure
    return Failure(f"pid {os.getpid()}")


def slow_decode(job: DecodeJob):
    """Decodes, a second per file: a run long enough to interrupt."""
    time.sleep(1.0)
    return decode_job(job)
