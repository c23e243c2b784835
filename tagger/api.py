"""The Python API: load a model and classify files, scan a library into the index. The CLI
is a thin layer over these (and over Index, write_tags and restore_tags); `import tagger`
gives them all without importing torch until a model is loaded.

    import tagger
    model = tagger.load_model()                     # the shipped default model
    print(model.classify_file("song.flac").genre)
    stats = tagger.scan([Path.home() / "Music"])    # what `tagger scan ~/Music` does
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tagger.basics import available_cores
from tagger.errors import UserError
from tagger.index import Index, Pruned, Status, TrackResult, existing_index
from tagger.modelfile import resolve_model

if TYPE_CHECKING:                   # torch is imported when a model is loaded, not before
    from tagger import scanner
    from tagger.classify import Classifier
    from tagger.crawl import Candidate
    from tagger.scanner import ScanStats
    from tagger.timeline import Timeline

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Prediction:
    """What a model says about one file. status "ok": genre is the most probable one and
    confidence its probability (uncertain when that is under the model's threshold);
    otherwise ("silent", "failed", "error") error says why there are no probabilities."""
    path: str
    status: Status
    genre: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)   # best first
    uncertain: bool = False
    duration: float | None = None   # seconds
    error: str | None = None
    model_id: str = ""
    uncertain_below: float = 0.0    # the model's threshold

    @classmethod
    def of(cls, result: TrackResult, uncertain_below: float) -> Prediction:
        row = result.as_row(uncertain_below)
        return cls(result.path, result.status, row["genre"], row["confidence"],
                   row["probabilities"], row["uncertain"], result.duration, result.error,
                   result.model_id, uncertain_below)

    def as_row(self) -> dict:
        """The dict that Index.tracks() yields for a stored track (for tagger.output)."""
        return {"path": self.path, "genre": self.genre, "confidence": self.confidence,
                "probabilities": self.probabilities, "model_id": self.model_id,
                "error": self.error, "status": self.status, "uncertain": self.uncertain}


class Model:
    """A loaded checkpoint on a device (see load_model)."""

    def __init__(self, classifier: Classifier, path: Path):
        self.classifier = classifier
        self.path = path

    @property
    def model_id(self) -> str:
        """The first 12 hex digits of the checkpoint file's SHA-256."""
        return self.classifier.model_id

    @property
    def genres(self) -> tuple[str, ...]:
        return tuple(self.classifier.genres)

    @property
    def uncertain_below(self) -> float:
        """Tracks whose top probability is under this are uncertain."""
        return self.classifier.uncertain_below

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, id {self.model_id}, {self.classifier.device})"

    def classify_file(self, path: PathLike) -> Prediction:
        """One file's prediction; a file that cannot be decoded gives status "failed" (or
        "error" when the reason is not its content) and the reason, and silence "silent"."""
        return next(self.classify_files([path]))

    def classify_files(self, paths: Iterable[PathLike], *, workers: int | None = None,
                       batch_size: int = 16) -> Iterator[Prediction]:
        """Predictions for many files, in the order given, each as soon as it and those
        before it are done; a folder stands for the audio files under it, found as `scan`
        finds them (see files_under). A file that is missing or cannot be decoded gives a
        Prediction that says why. Decoding runs in `workers` processes (default: one per
        core; 0 decodes in this process), batch_size tracks at a time through the model."""
        from tagger.scanner import classify_files
        candidates = files_under(paths)
        paths = [c.path for c in candidates]
        done: dict[str, Prediction] = {}
        shown = 0
        with closing(classify_files(list({c.path: c for c in candidates}.values()),
                                    self.classifier, batch_size=batch_size,
                                    workers=available_cores() if workers is None else workers)
                     ) as batches:
            for batch in batches:
                done.update((r.path, Prediction.of(r, self.uncertain_below)) for r in batch)
                while shown < len(paths) and paths[shown] in done:
                    yield done[paths[shown]]
                    shown += 1

    def timeline(self, path: PathLike, window: float = 10.0, hop: float = 5.0, *,
                 batch_size: int = 16, on_window: Callable[[float], None] | None = None
                 ) -> Timeline:
        """One file's genres over time: `window`-second windows every `hop` seconds over the
        whole track (the last one ends at the track's end; a track shorter than a window is
        one window), each classified as a track of its own. Reads the file once, holding
        `batch_size` windows at a time. on_window(seconds) as each batch is done. Raises
        DecodeError (path: reason) when the file cannot be decoded."""
        from tagger.timeline import timeline
        return timeline(self.classifier, path, window, hop, batch_size, on_window)


def files_under(paths: Iterable[PathLike]) -> list[Candidate]:
    """The files that `paths` name, in order: a folder's audio files as `scan` finds them
    (by extension; hidden and system folders skipped), a file as it is, whatever its
    extension; a missing one too, so that its prediction can say so."""
    from tagger.crawl import Candidate, crawl
    found = []
    for p in paths:
        p = os.path.abspath(p)
        found += list(crawl([p])) or ([] if os.path.isdir(p) else [Candidate(p, 0, 0)])
    return found


def load_model(path: PathLike | None = None, device: str = "auto") -> Model:
    """A tagger checkpoint, ready to classify: `path` is a checkpoint file, or the name of a
    shipped model ("default", "fast"); None is the shipped default. device: "auto" (CUDA,
    then MPS, then the CPU), "cpu", "cuda" or "mps"."""
    model_path, _ = resolve_model(None if path is None else Path(os.fspath(path)))
    return _load(model_path, device)


def _load(model_path: Path, device: str) -> Model:
    from tagger.checkpoint import load
    from tagger.classify import Classifier
    return Model(Classifier(load(model_path), device), model_path)


def check_paths(paths: Sequence[PathLike], missing: str) -> None:
    """A UserError naming the first path that cannot be reached."""
    for p in paths:
        try:
            os.stat(p)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise UserError(f"{os.fspath(p)}: name or path too long for the system") from None
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise UserError(f"{os.fspath(p)}: {missing}") from None
            raise UserError(f"{os.fspath(p)}: cannot read it ({e.strerror})") from None


def scan(paths: Sequence[PathLike], db: PathLike | None = None,
         model: Model | PathLike | None = None, *, exclude: Sequence[str] = (),
         force: bool = False, prune: bool = True, workers: int | None = None,
         batch_size: int = 16, device: str = "auto", on_start: Callable[[int], None] | None = None,
         on_result: Callable[[Prediction], None] | None = None,
         should_stop: Callable[[], bool] | None = None,
         on_decoded: Callable[[str], None] | None = None) -> ScanStats:
    """Classify every audio file under `paths` (folders or files) into the index `db`
    (default: $TAGGER_DB, else the user's data folder), as `tagger scan` does. A file
    unchanged since the index saw it (same path, size, modification time and model) is not
    opened, and the model is only loaded when there is something to classify. `model`: a
    Model, a checkpoint path or a shipped model's name (default: the shipped default).
    `exclude`: globs of names or full paths to skip. Files are stored by their real path
    (symlinks resolved); a file moved or renamed since (same size and fingerprint) keeps its
    row; with `prune`, the rows of files under `paths` that are no longer on disk are removed
    (see prune; not under a folder where nothing was found). on_start(n) is called with the
    number of files to classify; on_decoded(path) as each one is decoded (or fails to be), a
    track at a time (what a progress bar counts); on_result(prediction) with each file's
    Prediction once stored, a batch at a time. When
    should_stop() turns true, what is already decoded is classified and stored, and the
    returned stats say interrupted."""
    from tagger import scanner
    check_paths(paths, "no such file or folder")
    model_path, model_id = ((model.path, model.model_id) if isinstance(model, Model) else
                            resolve_model(None if model is None else Path(os.fspath(model))))
    with Index(db) as index, index.writer_lock():
        todo, stats = scanner.plan(index, [os.fspath(p) for p in paths], model_id, exclude,
                                   force, prune)
        if on_start:
            on_start(len(todo))
        if todo:
            scanner.run_scan(todo, _classifier(model, model_path, model_id, device), index,
                             workers=available_cores() if workers is None else workers,
                             batch_size=batch_size,
                             on_result=(lambda r: on_result(Prediction.of(r, stats.uncertain_below)))
                             if on_result else (lambda r: None),
                             should_stop=should_stop or (lambda: False), stats=stats,
                             on_decoded=on_decoded or (lambda path: None))
    return stats


def _classifier(model: Model | PathLike | None, path: Path, model_id: str, device: str
                ) -> Classifier | scanner.Loading:
    """The scan's classifier: a Model's own, or the checkpoint at path, loading while the
    decoders start (loaded first when its excerpt settings cannot be read without torch)."""
    from tagger import scanner
    from tagger.modelfile import excerpt_settings
    if isinstance(model, Model):
        return model.classifier
    excerpts = excerpt_settings(path)
    if excerpts is None:
        return _load(path, device).classifier
    return scanner.Loading(lambda: _load(path, device).classifier, model_id, excerpts)


def prune(paths: Sequence[PathLike] = (), db: PathLike | None = None, *,
          dry_run: bool = False) -> Pruned:
    """Remove from the index `db` the tracks under `paths` (default: all) whose files are no
    longer on disk, as `tagger prune` does, without scanning; a path may itself be gone.
    Undo records are kept (restore-tags puts the tags back if a file returns). Returns the
    removed paths (in a dry run, those that would be) and how many of them have an undo
    record."""
    roots = [os.path.abspath(p) for p in paths]
    if dry_run:                     # only reads: works beside a scan and on a read-only disk
        with existing_index(db, read_only=True) as index:
            return index.prune(roots, dry_run=True)
    with existing_index(db) as index, index.writer_lock():
        return index.prune(roots)


def stored(paths: Sequence[PathLike], db: PathLike | None = None) -> dict[str, Prediction]:
    """What the index `db` holds for each of these files (see `scan`), by the path given; a
    file is found by its real path, as `scan` stores it. A file it holds nothing for is left
    out. Check the prediction's model_id: a file may have been scanned with another model."""
    from tagger.crawl import real_path
    wanted: dict[str, list[str]] = {}
    for p in paths:
        wanted.setdefault(real_path(os.path.abspath(p)), []).append(os.fspath(p))
    found: dict[str, Prediction] = {}
    reals = list(wanted)
    with existing_index(db, read_only=True) as index:
        for start in range(0, len(reals), 500):
            for row in index.tracks(paths=reals[start:start + 500]):
                for given in wanted[row["path"]]:
                    found[given] = Prediction(
                        given, row["status"], row["genre"], row["confidence"],
                        row["probabilities"], row["uncertain"], row["duration"], row["error"],
                        row["model_id"], row["uncertain_below"])
    return {os.fspath(p): found[os.fspath(p)] for p in paths if os.fspath(p) in found}


def retagged(files: dict[PathLike, tuple[int, int]], db: PathLike | None = None) -> None:
    """Tell the index `db` that another program (a tag editor, beets) rewrote the tags, not
    the audio, of these files, each of which was (size, mtime_ns) before: their predictions
    follow them, so that the next scan does not classify them again. A file whose row is not
    of that version (or that has none) is left as it is."""
    from tagger.crawl import real_path
    with existing_index(db) as index, index.writer_lock():
        for path, before in files.items():
            real = real_path(os.path.abspath(path))
            try:
                st = os.stat(real)
            except OSError:
                continue
            index.moved_on(real, tuple(before), (st.st_size, st.st_mtime_ns))
