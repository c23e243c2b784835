"""The scan: crawl -> plan -> decode (worker processes) -> classify (batched) -> store.

No terminal I/O here: the CLI passes callbacks for progress and a function that says when to
stop. Memory stays bounded: the pool keeps a few files in flight per worker, and at most one
batch of decoded audio waits for the model.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from tagger.crawl import Candidate, crawl, real_path
from tagger.decode import Excerpts
from tagger.errors import UserError
from tagger.fingerprint import fingerprint
from tagger.index import (Index, Known, TrackResult, gone, is_uncertain, offline, under,
                          with_real)
from tagger.pool import DecodeJob, DecodePool, Failure, decode_job

if TYPE_CHECKING:                   # importing torch is kept off the rescan path
    from tagger.classify import Classifier

SILENCE_PEAK = 10 ** (-80 / 20)     # excerpts that never rise above -80 dBFS count as silent
DECODE_TIMEOUT = 300.0              # seconds one file may take to decode, in scan and show


@dataclass
class ScanStats:
    unchanged: int = 0
    classified: int = 0
    failed: int = 0
    silent: int = 0
    uncertain: int = 0                  # classified, top genre below the model's threshold
    uncertain_below: float = 0.0        # the model's threshold
    genres: Counter = field(default_factory=Counter)    # top genres of the others
    interrupted: bool = False
    moved: int = 0                      # rows that followed their moved or renamed files
    removed: int = 0                    # rows of files under the roots no longer on disk
    not_pruned: list[str] = field(default_factory=list)    # roots where nothing was found

    def count(self, result: TrackResult) -> None:
        if result.status == "ok":
            self.classified += 1
            if is_uncertain(result.probabilities[result.genre], self.uncertain_below):
                self.uncertain += 1
            else:
                self.genres[result.genre] += 1
        elif result.status == "silent":
            self.silent += 1
        else:                               # "failed" or "error" (transient)
            self.failed += 1


def plan(index: Index, roots: Sequence[str], model_id: str, exclude: Sequence[str] = (),
         force: bool = False, prune: bool = True) -> tuple[list[Candidate], ScanStats]:
    """Files to (re)classify, and the stats so far. Each file is known by its real path
    (crawl.real_path): one file, one row, whichever path reaches it. An unchanged file (same
    path, size, mtime_ns and model id) is never opened; a touched one (same size and
    fingerprint) is current. A new file with the fingerprint of a row whose file is gone
    takes that row (and its undo record): it was moved. Then, with prune, the rows of files
    under the roots that are no longer on disk are removed (see prune_roots)."""
    todo, stats, seen, folders = [], ScanStats(), set(), {}
    scanned = with_real([os.path.abspath(r) for r in roots])
    for cand in crawl(roots, exclude):
        if cand.error:
            todo.append(cand)
            continue
        path = real_path(cand.path, folders)
        if path in seen:
            continue
        seen.add(path)
        known = _known(index, cand.path, path)
        cand = replace(cand, path=path)
        moved = known is None and (known := _moved_here(index, cand, scanned)) is not None
        stats.moved += moved
        if force or known is None or known.model_id != model_id or known.status == "error":
            todo.append(cand)
        elif (known.size, known.mtime_ns) == (cand.size, cand.mtime_ns):
            stats.unchanged += not moved
        elif known.size == cand.size and known.fingerprint is not None and \
                known.fingerprint == fingerprint(path):            # a bare touch
            index.touched(known.id, cand.mtime_ns)
            stats.unchanged += 1
        else:
            todo.append(cand)
    if prune:
        stats.removed, stats.not_pruned = prune_roots(index, roots, seen)
    return todo, stats


def _known(index: Index, crawled: str, real: str) -> Known | None:
    """The row of the file at real; a row an older tagger stored through a symlink (crawled)
    becomes it, or is dropped if the file has its row already."""
    known = index.known(real)
    if crawled != real and (alias := index.known(crawled)) is not None:
        if known is None:
            index.move(alias.id, crawled, real, alias.mtime_ns)
            return index.known(real)
        index.drop([alias.id])
    return known


def _moved_here(index: Index, cand: Candidate, roots: Sequence[str]) -> Known | None:
    """The row of a file of this size and fingerprint that is gone from where the row says
    (under the scanned roots: a file elsewhere may only be offline), moved to cand.path;
    None if there is none. The new file is only read when there is such a row."""
    left = [(track_id, path, f) for track_id, path, f in index.of_size(cand.size)
            if under(path, roots) and gone(path) and not offline(path)]
    mine = fingerprint(cand.path) if left else None
    for track_id, path, f in left:
        if f == mine:
            index.move(track_id, path, cand.path, cand.mtime_ns)
            return index.known(cand.path)
    return None


def prune_roots(index: Index, roots: Sequence[str], seen: set[str]) -> tuple[int, list[str]]:
    """Remove the rows of files under the roots that are gone (seen: the real paths the
    crawl found). A root where the crawl found no file at all (a disk not mounted, a share
    offline) is left alone if the index has rows there: (removed, those roots)."""
    forms = {r: with_real([r]) for r in map(os.path.abspath, roots)}  # as given, and real
    found = [r for r, real in forms.items() if any(under(p, real) for p in seen)]
    empty = [r for r in forms if r not in found and index.prune([r], dry_run=True).removed]
    removed = index.prune(found, seen=seen, keep_offline=True).removed if found else []
    return len(removed), empty


class Loading:
    """A classifier loading in a thread of its own (importing torch and reading the checkpoint
    take seconds) while the decoder processes start on the first files: what they need, the
    model id and the excerpt settings (modelfile.excerpt_settings), is known before. The
    scan takes it where it takes a Classifier; result() waits for the load, and raises what
    it raised."""

    def __init__(self, load: Callable[[], Classifier], model_id: str,
                 excerpts: tuple[int, int, float]):
        self.model_id, self.excerpts = model_id, excerpts
        self._classifier: Classifier | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._load, args=(load,), daemon=True,
                                        name="tagger-load-model")
        self._thread.start()

    def _load(self, load: Callable[[], Classifier]) -> None:
        try:
            self._classifier = load()
        except BaseException as exc:        # noqa: BLE001 - re-raised by result()
            self._error = exc

    def result(self) -> Classifier:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._classifier is not None
        if (self._classifier.model_id, excerpts_of(self._classifier)) != (self.model_id,
                                                                          self.excerpts):
            raise UserError(f"the model file changed while it was loading (model id "
                            f"{self.model_id}); run the scan again")
        return self._classifier


def excerpts_of(classifier: Classifier | Loading) -> tuple[int, int, float]:
    """(sample rate, windows, seconds per window): what the decoders need of the model."""
    if isinstance(classifier, Loading):
        return classifier.excerpts
    s = classifier.settings
    return s.sample_rate, s.excerpt_windows, s.excerpt_seconds


def loaded(classifier: Classifier | Loading) -> Classifier:
    return classifier.result() if isinstance(classifier, Loading) else classifier


def job_for(classifier: Classifier | Loading) -> Callable[[Candidate], DecodeJob]:
    excerpts = excerpts_of(classifier)
    return lambda cand: DecodeJob(cand.path, *excerpts)


def silent(waveforms: Sequence[np.ndarray]) -> bool:
    """True if no sample of these waveforms rises above -80 dBFS (none at all: silent too)."""
    return max((float(np.max(np.abs(w))) for w in waveforms if len(w)), default=0.0) < SILENCE_PEAK


def classify_decoded(classifier: Classifier,
                     decoded: Sequence[tuple[Candidate, Excerpts]]) -> list[TrackResult]:
    """Silent tracks are recorded as such; the rest go through the model in one batch."""
    results, audible = [], []
    for cand, ex in decoded:
        if silent(ex.waveforms):
            results.append(TrackResult(cand.path, cand.size, cand.mtime_ns, classifier.model_id,
                                       "silent", error="silent (no sound above -80 dBFS)",
                                       duration=ex.duration, fingerprint=ex.fingerprint))
        else:
            audible.append((cand, ex))
    if audible:
        probs = classifier.classify([ex.waveforms for _, ex in audible])
        for (cand, ex), row in zip(audible, probs):
            results.append(TrackResult(
                cand.path, cand.size, cand.mtime_ns, classifier.model_id, "ok",
                {g: float(p) for g, p in zip(classifier.genres, row)}, duration=ex.duration,
                fingerprint=ex.fingerprint))
    return results


def classify_files(todo: Sequence[Candidate], classifier: Classifier | Loading, *, workers: int,
                   batch_size: int = 16, should_stop: Callable[[], bool] = lambda: False,
                   decode_timeout: float = DECODE_TIMEOUT,
                   function: Callable[[DecodeJob], Excerpts | Failure] = decode_job,
                   on_decoded: Callable[[str], None] = lambda path: None,
                   ) -> Iterator[list[TrackResult]]:
    """Decode `todo` in worker processes (no more than there are files; a decoder that hangs
    past decode_timeout costs its file) and classify it; yields the results a batch at a
    time, in completion order. on_decoded(path) is called as each file is decoded (or fails
    to be), before its batch goes through the model. When should_stop() turns true, what is
    already decoded is classified and yielded, and it returns. `function` is the decoder
    (tests give others). A Loading classifier is waited for when the first batch is
    decoded: until then the decoders work while it loads."""
    decoded: list[tuple[Candidate, Excerpts]] = []
    failures = [failure_result(c, classifier.model_id, Failure(c.error, transient=True))
                for c in todo if c.error]           # found by the crawl, but not readable
    for failure in failures:
        on_decoded(failure.path)
    todo = [c for c in todo if not c.error]
    workers = min(workers, len(todo))              # no idle decoder processes
    ready: Classifier | None = None

    def model() -> Classifier:
        nonlocal ready
        if ready is None:
            ready = loaded(classifier)
            ready.share_cpu_with(workers)
        return ready

    if not isinstance(classifier, Loading):
        model()
    with closing(DecodePool(workers, timeout=decode_timeout, function=function)) as pool:
        for cand, result in pool.imap(todo, job_for(classifier), should_stop):
            if isinstance(result, Failure):
                failures.append(failure_result(cand, classifier.model_id, result))
            else:
                decoded.append((cand, result))
            on_decoded(cand.path)
            if len(decoded) >= batch_size or len(failures) >= batch_size:
                yield failures + classify_decoded(model(), decoded)
                decoded, failures = [], []
    if decoded or failures:
        yield failures + classify_decoded(model(), decoded)


def run_scan(todo: Sequence[Candidate], classifier: Classifier | Loading, index: Index, *,
             workers: int, batch_size: int = 16,
             on_result: Callable[[TrackResult], None] = lambda r: None,
             should_stop: Callable[[], bool] = lambda: False, stats: ScanStats | None = None,
             decode_timeout: float = DECODE_TIMEOUT,
             on_decoded: Callable[[str], None] = lambda path: None) -> ScanStats:
    """Decode, classify and store `todo`; one transaction per batch (on_result(r) for each
    stored track; on_decoded as classify_files says). When should_stop() turns true, what
    is already decoded is classified and stored, and the scan returns. stats.uncertain_below
    is the model's threshold from the first batch on."""
    stats = stats or ScanStats()
    done = 0
    with closing(classify_files(todo, classifier, workers=workers, batch_size=batch_size,
                                should_stop=should_stop, decode_timeout=decode_timeout,
                                on_decoded=on_decoded)) as batches:
        for results in batches:
            if not done:
                model = loaded(classifier)
                stats.uncertain_below = model.uncertain_below
                index.note_model(model.model_id, model.uncertain_below)
            index.store(results)
            for r in results:
                stats.count(r)
                on_result(r)
            done += len(results)
    stats.interrupted = done < len(todo)
    return stats


def failure_result(cand: Candidate, model_id: str, failure: Failure) -> TrackResult:
    """A transient failure is stored as status "error", which the next scan retries."""
    return TrackResult(cand.path, cand.size, cand.mtime_ns, model_id,
                       "error" if failure.transient else "failed", error=failure.reason)
