"""A pool of decoder processes that survives its workers.

Each worker has a pipe for its tasks and one for its results, and shares no lock with the
others, so the parent always knows which file a worker is on. A worker that dies (a decoder
segfault, the OOM killer) or hangs past the timeout costs that one file, which comes back
as a failure, and a fresh worker takes its place. A thread of the parent empties the result
pipes, so workers never wait while the main thread runs the model; it reports a worker's
death only after everything the worker sent. `workers=0` runs the same decode function
in-process. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from tagger.decode import Excerpts, decode_excerpts, quiet_ffmpeg
from tagger.errors import DecodeError, TaggerError
from tagger.fingerprint import fingerprint


@dataclass(frozen=True)
class DecodeJob:
    path: str
    sample_rate: int
    n_windows: int
    window_seconds: float


@dataclass(frozen=True)
class Failure:
    """Why a file gave no audio. Transient reasons (permissions, I/O, a crashed or hung
    decoder) are not the file's fault: a later scan tries the file again."""
    reason: str
    transient: bool = False


def decode_job(job: DecodeJob) -> Excerpts | Failure:
    """Decoded excerpts and the file's fingerprint, or why they could not be had. Never raises."""
    try:
        excerpts = decode_excerpts(job.path, job.sample_rate, job.n_windows, job.window_seconds)
        excerpts.fingerprint = fingerprint(job.path)
        return excerpts
    except DecodeError as exc:
        return Failure(exc.reason, exc.transient)
    except Exception as exc:  # a decoder bug must not end the scan
        return Failure(f"unexpected decoder error: {type(exc).__name__}: {exc}", transient=True)


def _worker_main(tasks: Any, results: Any, function, parent: int) -> None:
    # The parent decides what Ctrl-C and SIGTERM mean (sent to the whole process group, they
    # must not kill a worker mid-file, which would look like a decoder crash); it ends the
    # workers itself, and a worker whose parent is gone stops on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    quiet_ffmpeg()
    try:
        while os.getppid() == parent:    # not decoding the files queued for a killed parent
            if tasks.poll(1.0):
                seq, job = tasks.recv()
                results.send((seq, function(job)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return                           # the parent closed its end, or is gone: no traceback


@dataclass
class _Worker:
    process: Any
    tasks: Any                # the parent's end of the worker's task pipe
    pending: deque            # (seq, item, job) in the order the worker will do them
    busy_since: float
    lost: bool = False        # its task pipe broke: it is dead, a replacement is coming


_END = object()
_PARENT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while starting a worker: it inherits the ignored state, so
    a signal to the process group cannot kill it before it has set up its own handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = [signal.signal(s, signal.SIG_IGN) for s in _PARENT_SIGNALS]
    try:
        yield
    finally:
        for s, handler in zip(_PARENT_SIGNALS, old):
            signal.signal(s, handler)


class DecodePool:
    """imap(items, job_of) yields (item, function(job_of(item))) in completion order, where
    function is decode_job unless given (a module-level function, so that it pickles).
    keep: an imap that runs to its end leaves the workers running for the next one (close()
    ends them); otherwise each imap starts its own and ends them."""

    def __init__(self, workers: int, timeout: float = 300.0, prefetch: int = 8,
                 function: Callable[[DecodeJob], Excerpts | Failure] = decode_job,
                 keep: bool = False):
        self.n_workers = workers
        self.keep = keep
        self.function = function
        self.timeout = timeout
        self.prefetch = prefetch
        self._ctx = mp.get_context("spawn")
        self._ids = itertools.count()
        self._workers: dict[int, _Worker] = {}
        self._inbox: dict[Any, int] = {}         # result pipe -> worker id, for the reader
        self._results: queue.Queue = queue.Queue()   # (worker id, seq, result); seq None: gone
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._deaths_in_a_row = 0                # worker deaths with no result in between

    def _start_worker(self) -> None:
        worker_id = next(self._ids)
        task_r, task_w = self._ctx.Pipe(duplex=False)
        result_r, result_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_worker_main,
                                 args=(task_r, result_w, self.function, os.getpid()),
                                 daemon=True, name=f"tagger-decode-{worker_id}")
        with _signals_ignored():    # so that a Ctrl-C never reaches a starting worker
            proc.start()
        task_r.close()
        result_w.close()          # so that the worker's death closes the pipe
        self._workers[worker_id] = _Worker(proc, task_w, deque(), time.monotonic())
        self._inbox[result_r] = worker_id

    def _read(self) -> None:
        """The reader thread: result pipes -> self._results; a closed pipe -> (id, None, None)."""
        while not self._stop.is_set():
            conns = list(self._inbox)
            if not conns:
                time.sleep(0.05)
                continue
            for conn in wait(conns, timeout=0.2):
                worker_id = self._inbox[conn]
                try:
                    seq, result = conn.recv()
                except (EOFError, OSError):
                    del self._inbox[conn]
                    conn.close()
                    self._results.put((worker_id, None, None))
                else:
                    self._results.put((worker_id, seq, result))

    def imap(self, items: Iterable, job_of: Callable[[Any], DecodeJob],
             should_stop: Callable[[], bool] = lambda: False,
             ) -> Iterator[tuple[Any, Excerpts | Failure]]:
        """Stops early, leaving the rest undone, once should_stop() is true (checked at least
        every 0.2 s, whether or not results arrive)."""
        if self.n_workers <= 0:
            for item in items:
                if should_stop():
                    return
                yield item, self.function(job_of(item))
            return
        todo: deque = deque()          # (item, job) taken back from a dead worker
        source = iter(items)
        seq = itertools.count()
        finished = False
        try:
            while len(self._workers) < self.n_workers:     # none, or those kept (see keep)
                self._start_worker()
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, daemon=True,
                                                name="tagger-results")
                self._reader.start()
            last_check = time.monotonic()
            while not should_stop():
                fed = True
                while fed:                                 # deal work out, one file a turn
                    fed = False
                    for worker in self._workers.values():
                        if len(worker.pending) >= self.prefetch or worker.lost:
                            continue
                        if todo:
                            item, job = todo.popleft()
                        elif (item := next(source, _END)) is not _END:
                            job = job_of(item)
                        else:
                            break
                        if not worker.pending:
                            worker.busy_since = time.monotonic()
                        n = next(seq)
                        try:
                            worker.tasks.send((n, job))
                        except OSError:            # it died; its end-of-pipe is on the way
                            worker.lost = True
                            todo.appendleft((item, job))
                            continue
                        worker.pending.append((n, item, job))
                        fed = True
                if not todo and not any(w.pending for w in self._workers.values()):
                    finished = not any(w.lost for w in self._workers.values())
                    return                                 # the source is exhausted too
                if self._results.empty() and time.monotonic() - last_check > 0.5:
                    # Only with every result received taken is busy_since no later than
                    # the moment each worker started the file it is on.
                    last_check = time.monotonic()
                    yield from self._give_up_on_hung(todo)
                try:
                    worker_id, n, result = self._results.get(timeout=0.2)
                except queue.Empty:
                    continue
                worker = self._workers.get(worker_id)
                if worker is None:
                    continue                               # one already given up on
                if n is None:
                    worker.process.join(5)
                    reason = f"the decoder crashed (worker exit code {worker.process.exitcode})"
                    self._deaths_in_a_row += 1
                    if self._deaths_in_a_row > 2 * self.n_workers + 2:
                        raise TaggerError(f"decoder processes keep dying ({reason}); run with "
                                          "--workers 0 to see the error")
                    yield from self._replace(worker_id, todo, reason)
                elif worker.pending and worker.pending[0][0] == n:
                    _, item, _ = worker.pending.popleft()
                    worker.busy_since = time.monotonic()
                    self._deaths_in_a_row = 0
                    yield item, result
        finally:
            if not (self.keep and finished):
                self.close()

    def _give_up_on_hung(self, todo: deque) -> Iterator[tuple[Any, Failure]]:
        now = time.monotonic()
        for worker_id, worker in list(self._workers.items()):
            if worker.pending and now - worker.busy_since > self.timeout:
                worker.process.kill()
                worker.process.join(5)
                yield from self._replace(worker_id, todo, f"decoding took longer than "
                                         f"{self.timeout:.0f} s; gave up on it")

    def _replace(self, worker_id: int, todo: deque, reason: str) -> Iterator[tuple[Any, Failure]]:
        """The file a lost worker was on fails; the files queued behind it go back to the
        queue, and a fresh worker takes its place."""
        worker = self._workers.pop(worker_id)
        worker.tasks.close()
        self._start_worker()
        if worker.pending:
            _, item, _ = worker.pending.popleft()
            todo.extendleft(reversed([(it, job) for _, it, job in worker.pending]))
            yield item, Failure(reason, transient=True)

    def close(self) -> None:
        for worker in self._workers.values():
            worker.process.kill()
        for worker in self._workers.values():
            worker.process.join(5)
            worker.tasks.close()
        self._workers.clear()
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        for conn in list(self._inbox):
            conn.close()
        self._inbox.clear()
        self._stop.clear()
