"""tagger on Ray Data (the [cluster] extra): `cluster-scan` and `merge`.

The same pieces as `scan`, unchanged: list (on the driver) -> plan against the results
already under --out (Arrow tables) -> decode in Ray actors, each holding a one-worker
DecodePool with its timeout, so that a decoder that crashes or hangs costs its file, never
a block or the run -> classify_decoded on a pool of model actors with other resources than
the decoders' (or Ray fuses the two steps into one operator) -> Parquet under --out,
written by the driver as results come, each file whole (a file is renamed into place, or
one object PUT), with the index's fields. merge folds such files into the SQLite index
through Index.store. The only module of tagger that imports ray; nothing imports it but
the CLI's cluster-scan and merge, when they run.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tagger import objects
from tagger.basics import AUDIO_EXTENSIONS
from tagger.crawl import Candidate, crawl, real_path
from tagger.errors import UserError
from tagger.index import Index, TrackResult
from tagger.pool import DecodeJob, DecodePool, Failure, decode_job
from tagger.scanner import DECODE_TIMEOUT, ScanStats, classify_decoded, failure_result

INSTALL = "cluster-scan needs Ray Data: pip install 'tagger[cluster]'"
FLUSH_ROWS, FLUSH_SECONDS = 2000, 60.0     # a results file at least this often


@dataclass
class ClusterStats(ScanStats):
    not_utf8: int = 0       # files left out: names that are not UTF-8 (Parquet cannot hold them)
    files: int = 0          # results files written by this run
    # what the run asked of the cluster (see _settings)
    cpus: float = 0.0
    gpus: int = 0
    decoders: int = 0
    models: int = 0
    model_cpus: float = 0.0
    batch_size: int = 0
    crowded: bool = False


def _ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


def _pa():
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError(INSTALL.replace("cluster-scan", "merge")) from None
    return pyarrow


def listing_schema():
    pa = _pa()
    return pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                      ("version", pa.string()), ("error", pa.string())])


# what merge and the run's counts read of a results file
FIELDS = ("path", "size", "mtime_ns", "version", "model_id", "status", "probabilities",
          "error", "duration", "fingerprint", "uncertain_below")


def results_schema():
    """A results file's columns: the index's, and the object's ETag or generation (version;
    null for a local file) and the model's threshold for "uncertain" (which merge records,
    as a scan does)."""
    pa = _pa()
    return pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
        ("version", pa.string()), ("model_id", pa.string()), ("status", pa.string()),
        ("genre", pa.string()), ("confidence", pa.float64()),
        ("probabilities", pa.map_(pa.string(), pa.float64())), ("error", pa.string()),
        ("duration", pa.float64()), ("fingerprint", pa.string()),
        ("uncertain_below", pa.float64())])


# -- what to classify ------------------------------------------------------------------------

def listing(sources: Sequence[str | os.PathLike], exclude: Sequence[str] = ()):
    """The files that `sources` name, as an Arrow table (listing_schema), each file once: a
    SOURCE is a local folder or audio file (crawled as `scan` crawls, each file by its real
    path), an s3:// or gs:// (any fsspec) prefix or object, a Parquet manifest (a `path`
    column; with `size` and `mtime_ns` columns too, those are taken as they are, with no
    look-up; `version` too if there is one), or a text manifest (one path or URI a line;
    blank lines and '#' comments skipped; relative paths from the list's folder). A listed
    file that is missing comes back with an error. Also how many local files were left out
    because their names are not UTF-8 (Arrow's strings cannot hold them)."""
    pa = _pa()
    rows: dict[str, tuple] = {}
    not_utf8, folders = 0, {}

    def local(root: str) -> None:
        nonlocal not_utf8
        if not os.path.lexists(root):
            rows.setdefault(root, (root, 0, 0, None, "no such file (listed in a manifest)"))
            return
        for cand in crawl([root], exclude):
            path = cand.path if cand.error else real_path(cand.path, folders)
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                not_utf8 += path not in rows
                continue
            rows.setdefault(path, (path, cand.size, cand.mtime_ns, None, cand.error))

    def remote(uri: str) -> None:
        for obj in objects.list_objects(uri, exclude):
            rows.setdefault(obj.path, (obj.path, obj.size, obj.mtime_ns, obj.version, None))

    def one(path: str) -> None:
        (remote if objects.is_uri(path) else local)(path)

    for source in map(os.fspath, sources):
        if source.lower().endswith(".parquet"):
            for row in _parquet_manifest(source):
                if "size" in row and "mtime_ns" in row:
                    rows.setdefault(row["path"], (row["path"], row["size"], row["mtime_ns"],
                                                  row.get("version"), None))
                else:
                    one(row["path"])
        elif objects.is_uri(source):
            remote(source)
        elif os.path.isfile(source) and \
                os.path.splitext(source)[1].lower() not in AUDIO_EXTENSIONS:
            for path in _text_manifest(source):
                one(path)
        else:
            local(os.path.abspath(source))
    columns = list(zip(*rows.values())) or [[]] * 5
    return pa.table(columns, schema=listing_schema()), not_utf8


def _text_manifest(path: str) -> list[str]:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as a list of paths ({exc})") from None
    return [line if objects.is_uri(line) else os.path.join(folder, line)
            for line in lines if line and not line.startswith("#")]


def _parquet_manifest(source: str) -> Iterator[dict]:
    pa = _pa()
    fs, path = _filesystem(source)
    folder = os.path.dirname(os.path.abspath(source)) if not objects.is_uri(source) else ""
    with fs.open(path, "rb") as f:
        try:
            file = pa.parquet.ParquetFile(f)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{source}: cannot read it as a Parquet manifest ({exc})") from None
        names = set(file.schema_arrow.names)
        if "path" not in names:
            raise UserError(f"{source}: a Parquet manifest needs a 'path' column (it has "
                            f"{', '.join(sorted(names)) or 'none'})")
        wanted = ["path", *(c for c in ("size", "mtime_ns", "version") if c in names)]
        if not {"size", "mtime_ns"} <= names:
            wanted = ["path"]
        for batch in file.iter_batches(batch_size=10_000, columns=wanted):
            for row in batch.to_pylist():
                if row["path"] and not objects.is_uri(row["path"]) and folder:
                    row["path"] = os.path.join(folder, row["path"])
                if row["path"]:
                    yield row


def previous_results(out: str | os.PathLike):
    """The last result of each file under `out` (a later file's row wins), as an Arrow table
    of path, size, mtime_ns, version, model_id, status; an empty table when there are none."""
    pa = _pa()
    fs, folder = _filesystem(out)
    columns = ["path", "size", "mtime_ns", "version", "model_id", "status"]
    tables = []
    for n, name in enumerate(_result_names(fs, folder)):
        with fs.open(name, "rb") as f, _unreadable(name):
            table = pa.parquet.read_table(f, columns=columns)
        tables.append(table.append_column("seq", pa.array(
            np.arange(len(table), dtype=np.int64) + (n << 32))))
    if not tables:
        return pa.table({c: [] for c in columns},
                        schema=pa.schema([results_schema().field(c) for c in columns]))
    table = pa.concat_tables(tables)
    last = table.group_by("path").aggregate([("seq", "max")]).rename_columns(["path", "seq"])
    return table.join(last, ["path", "seq"], join_type="inner").drop_columns(["seq"])


def plan(listed, previous, model_id: str, force: bool = False):
    """The rows of `listed` to classify: new, changed (size, mtime_ns or version), scored by
    another model, an `error` row before (transient: tried again, as `scan` does; a `failed`
    one is not), or listed with an error; everything with force. Arrow tables both."""
    pa = _pa()
    pc = pa.compute
    if force or len(previous) == 0:
        return listed
    prev = previous.rename_columns([c if c == "path" else f"prev_{c}"
                                    for c in previous.column_names])
    joined = listed.join(prev, "path", join_type="left outer")
    send = pc.or_kleene(pc.is_null(joined["prev_model_id"]), pc.is_valid(joined["error"]))
    for changed in (pc.not_equal(joined["prev_model_id"], model_id),
                    pc.equal(joined["prev_status"], "error"),
                    pc.not_equal(joined["prev_size"], joined["size"]),
                    pc.not_equal(joined["prev_mtime_ns"], joined["mtime_ns"]),
                    pc.not_equal(pc.fill_null(joined["prev_version"], ""),
                                 pc.fill_null(joined["version"], ""))):
        send = pc.or_kleene(send, changed)
    return joined.filter(pc.fill_null(send, True)).select(listed.column_names)


# -- the Ray actors --------------------------------------------------------------------------

class Decoder:
    """A Ray actor: decodes a batch of files in its own one-worker DecodePool (a crash or a
    hang costs one file: a "transient" failure row), kept from batch to batch (its worker
    ends when the actor does). Audio travels as float32 bytes with each excerpt window's
    length."""

    def __init__(self, excerpts: tuple[int, int, float], timeout: float,
                 function: Callable = decode_job):
        self.excerpts = excerpts
        self.pool = DecodePool(1, timeout=timeout, function=function, keep=True)

    def __call__(self, batch):
        import pyarrow as pa
        keys = ("path", "size", "mtime_ns", "version", "error")
        listed = [dict(zip(keys, row)) for row in zip(*(batch.column(k).to_pylist()
                                                         for k in keys))]
        rows = [(r, Failure(r["error"], transient=True)) for r in listed if r["error"]]
        rows += self.pool.imap([r for r in listed if not r["error"]],
                               lambda r: DecodeJob(r["path"], *self.excerpts))
        out = {k: [] for k in ("path", "size", "mtime_ns", "version", "reason", "transient",
                               "duration", "fingerprint", "audio", "windows")}
        for row, result in rows:
            failed = isinstance(result, Failure)
            for key in ("path", "size", "mtime_ns", "version"):
                out[key].append(row[key])
            out["reason"].append(result.reason if failed else None)
            out["transient"].append(result.transient if failed else False)
            out["duration"].append(None if failed else result.duration)
            out["fingerprint"].append(None if failed else result.fingerprint)
            out["audio"].append(None if failed else b"".join(
                np.asarray(w, np.float32).tobytes() for w in result.waveforms))
            out["windows"].append(None if failed else [len(w) for w in result.waveforms])
        return pa.table(out, schema=pa.schema([
            ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
            ("version", pa.string()), ("reason", pa.string()), ("transient", pa.bool_()),
            ("duration", pa.float64()), ("fingerprint", pa.string()), ("audio", pa.binary()),
            ("windows", pa.list_(pa.int64()))]))


class Classify:
    """A Ray actor: the model, loaded once from the checkpoint's bytes (the driver's file
    need not exist on the actor's node); a batch of decoded files -> result rows, through
    scanner.classify_decoded (the silence rule and the rows `scan` stores)."""

    def __init__(self, checkpoint: bytes, device: str):
        from tagger.api import load_model
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "model.pt")
            path.write_bytes(checkpoint)
            self.classifier = load_model(path, device).classifier

    def __call__(self, batch):
        import pyarrow as pa
        from tagger.decode import Excerpts
        model_id = self.classifier.model_id
        failures, decoded, versions = [], [], {}
        for row in batch.to_pylist():
            cand = Candidate(row["path"], row["size"], row["mtime_ns"])
            versions[cand.path] = row["version"]
            if row["reason"] is not None:
                failures.append(failure_result(cand, model_id,
                                               Failure(row["reason"], row["transient"])))
                continue
            audio = np.frombuffer(row["audio"], np.float32)
            waveforms = np.split(audio, np.cumsum(row["windows"])[:-1]) if row["windows"] else []
            decoded.append((cand, Excerpts(list(waveforms), row["duration"], 0, 0,
                                           fingerprint=row["fingerprint"])))
        results = failures + (classify_decoded(self.classifier, decoded) if decoded else [])
        threshold = self.classifier.uncertain_below
        return pa.Table.from_pylist([_row(r, versions[r.path], threshold) for r in results],
                                    schema=results_schema())


def _row(r: TrackResult, version: str | None, uncertain_below: float) -> dict:
    genre = r.genre
    return {"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns, "version": version,
            "model_id": r.model_id, "status": r.status, "genre": genre,
            "confidence": r.probabilities[genre] if genre else None,
            "probabilities": list(r.probabilities.items()), "error": r.error,
            "duration": r.duration, "fingerprint": r.fingerprint,
            "uncertain_below": uncertain_below}


def result_of(row: dict) -> TrackResult:
    return TrackResult(row["path"], row["size"], row["mtime_ns"], row["model_id"], row["status"],
                       dict(row["probabilities"] or []), row["error"], row["duration"],
                       row["fingerprint"])


# -- the run ---------------------------------------------------------------------------------

def cluster_scan(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 model: str | os.PathLike | None = None, *, exclude: Sequence[str] = (),
                 force: bool = False, decoders: int | None = None, models: int = 1,
                 batch_size: int | None = None, device: str = "auto",
                 decode_timeout: float = DECODE_TIMEOUT, function: Callable = decode_job,
                 progress: bool = False, on_start: Callable[[int], None] | None = None,
                 stats: ClusterStats | None = None) -> ClusterStats:
    """Classify what `sources` name (see listing) on Ray Data (the cluster that ray.init()
    finds, else a local one), writing results as Parquet files under `out` (a folder or an
    fsspec URI; see results_schema; merge folds them into an index). Only files that are
    new, changed or stale against the results already under `out` go (see plan), all with
    `force`. `decoders` decode actors (default: the CPUs that the model actors leave, at
    least one), `models` model actors (a GPU and a CPU each where the cluster has GPUs and
    device is not cpu, else half a CPU each), batch_size tracks per model batch (default 64
    on GPUs, else 16). `function` is the decoder (tests give others). on_start(n) is called
    with the number of files to classify, once `stats` says what the run asks of the
    cluster (see _settings). Results are written as they come, a file at least every
    FLUSH_ROWS rows or FLUSH_SECONDS seconds, so an interrupted run (KeyboardInterrupt;
    SIGTERM raises one too) keeps what was classified, and a rerun does the rest. Returns
    the stats, as `scan` counts them (`stats`, if given, is filled in as the run goes:
    what was done before an interruption)."""
    ray = _ray()
    from tagger.api import _load, check_paths
    from tagger.modelfile import excerpt_settings, resolve_model
    from tagger.scanner import excerpts_of
    check_paths([s for s in sources if not objects.is_uri(os.fspath(s))],
                "no such file or folder")
    model_path, model_id = resolve_model(None if model is None else Path(os.fspath(model)))
    excerpts = excerpt_settings(model_path) or excerpts_of(_load(model_path, "cpu").classifier)
    stats = stats if stats is not None else ClusterStats()
    listed, stats.not_utf8 = listing(sources, exclude)
    todo = plan(listed, previous_results(out), model_id, force)
    stats.unchanged = len(listed) - len(todo)
    if not len(todo):
        if on_start:
            on_start(0)
        return stats
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    writer = ResultWriter(out)
    try:
        _settings(ray, stats, device, decoders, models, batch_size)
        if on_start:
            on_start(len(todo))
        with _sigterm_interrupts():
            for batch in _pipeline(ray, todo, excerpts, model_path, stats, decode_timeout,
                                   function, progress):
                writer.add(batch)
                for row in batch.select(list(FIELDS)).to_pylist():
                    stats.uncertain_below = row["uncertain_below"]
                    stats.count(result_of(row))
    finally:
        try:
            writer.flush()
            stats.files = writer.files
        finally:
            if started:
                ray.shutdown()
    return stats


def _settings(ray, stats: ClusterStats, device: str, decoders: int | None, models: int,
              batch_size: int | None) -> None:
    """The run's actors and batch size, from what the cluster has, into `stats`. A model
    actor asks for a CPU beside its GPU (Ray Data would give it one anyway), half a CPU
    without; the decoders take the CPUs left, unless told otherwise. More than that is
    `crowded`: Ray may then start the model actors only when decoding is done, holding every
    decoded track in its object store meanwhile."""
    resources = ray.cluster_resources()
    stats.gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    if device == "cuda" and not stats.gpus:
        raise UserError("--device cuda: this Ray cluster has no GPUs; leave --device out, or "
                        "give the cluster GPU nodes")
    stats.cpus = resources.get("CPU", 1)
    stats.model_cpus = 1.0 if stats.gpus else 0.5
    room = int(stats.cpus - models * stats.model_cpus)
    stats.decoders, stats.models = decoders or max(1, room), models
    stats.crowded = stats.decoders > room
    stats.batch_size = batch_size or (64 if stats.gpus else 16)


def _pipeline(ray, todo, excerpts, model_path, stats: ClusterStats, decode_timeout, function,
              progress):
    """The result batches of decoding and classifying `todo` on Ray Data, as they come."""
    ray.data.DataContext.get_current().enable_progress_bars = progress
    batch_size = stats.batch_size
    # Blocks of at most 1,000 files, four a decoder at least: every decoder has work, and a
    # decoder's batch is at most a block (the model's batches gather several).
    block = max(1, min(1000, math.ceil(len(todo) / (4 * stats.decoders))))
    return (ray.data.from_arrow([todo.slice(i, block) for i in range(0, len(todo), block)])
            .map_batches(Decoder, fn_constructor_args=(excerpts, decode_timeout, function),
                         batch_format="pyarrow", batch_size=min(batch_size, block),
                         compute=ray.data.ActorPoolStrategy(size=stats.decoders), num_cpus=1)
            .map_batches(Classify, fn_constructor_args=(Path(model_path).read_bytes(),
                                                        "cuda" if stats.gpus else "cpu"),
                         batch_format="pyarrow", batch_size=batch_size,
                         compute=ray.data.ActorPoolStrategy(size=stats.models),
                         num_cpus=stats.model_cpus, num_gpus=1 if stats.gpus else None)
            .iter_batches(batch_format="pyarrow", batch_size=None))


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (`ray job stop`, kill) ends the run as Ctrl-C does, with a KeyboardInterrupt
    (ray.init's own handler would exit at once), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class ResultWriter:
    """Result rows -> Parquet files under `out`, named <run>-<n>.parquet so that names sort
    in the order written (a later run's after an earlier one's). Each file appears whole:
    a local one is written beside its name and renamed into place, an object is one PUT."""

    def __init__(self, out: str | os.PathLike):
        self.fs, self.folder = _filesystem(out)
        self.run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)
        self.pending, self.rows, self.files = [], 0, 0
        self.last = time.monotonic()

    def add(self, batch) -> None:
        """A pyarrow Table of result rows (results_schema)."""
        self.pending.append(batch)
        self.rows += len(batch)
        if self.rows >= FLUSH_ROWS or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.rows:
            return
        pa = _pa()
        table = pa.Table.from_batches([b for t in self.pending for b in t.to_batches()],
                                      schema=results_schema())
        name = f"{self.folder}/{self.run}-{self.files:06d}.parquet"
        self.fs.makedirs(self.folder, exist_ok=True)
        if _is_local(self.fs):
            part = f"{self.folder}/.{self.run}-{self.files:06d}.part"
            pa.parquet.write_table(table, part)
            os.replace(part, name)
        else:
            with self.fs.open(name, "wb") as f:
                pa.parquet.write_table(table, f)
        self.pending, self.rows, self.files = [], 0, self.files + 1


def _filesystem(where: str | os.PathLike):
    """(fsspec filesystem, path in it) for a local path or a URI."""
    where = os.fspath(where)
    if objects.is_uri(where):
        return objects.filesystem(where)
    from fsspec.implementations.local import LocalFileSystem
    return LocalFileSystem(), os.path.abspath(where)


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem
    return isinstance(fs, LocalFileSystem)


def _result_names(fs, folder: str) -> list[str]:
    """The results files in `folder`, in the order they were written (see ResultWriter)."""
    try:
        return sorted(fs.glob(f"{folder.rstrip('/')}/*.parquet"), key=lambda p: p.rsplit("/", 1)[-1])
    except FileNotFoundError:
        return []


# -- merge -----------------------------------------------------------------------------------

def read_results(out: str | os.PathLike) -> Iterator[list[dict]]:
    """The rows of a cluster-scan's results files, in the order written, a few thousand at
    a time; UserError when there are none."""
    pa = _pa()
    fs, folder = _filesystem(out)
    names = _result_names(fs, folder)
    if not names:
        raise UserError(f"{os.fspath(out)}: no Parquet files here; give the --out folder "
                        "of a cluster-scan")
    for name in names:
        with fs.open(name, "rb") as f, _unreadable(name):
            file = pa.parquet.ParquetFile(f)
            if not set(FIELDS) <= set(file.schema_arrow.names):
                raise ValueError("not a cluster-scan's results file")
            for batch in file.iter_batches(batch_size=2000, columns=list(FIELDS)):
                yield batch.to_pylist()


@contextmanager
def _unreadable(name: str) -> Iterator[None]:
    """A results file that cannot be read as one: a one-line UserError that names it."""
    pa = _pa()
    try:
        yield
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise UserError(f"{name}: cannot read it as a cluster-scan's results ({exc}); move it "
                        "out of the folder and run the command again") from None


def merge(out: str | os.PathLike, db: str | os.PathLike | None = None) -> int:
    """Fold a cluster-scan's results into the index `db` through Index.store (a row of a
    later file replaces an earlier one's, as a rescan does); returns how many rows."""
    rows_of = read_results(out)
    first = next(rows_of, [])               # before the index is made: nothing to merge
    done = 0
    with Index(db) as index, index.writer_lock():
        for rows in itertools.chain([first], rows_of):
            for model_id, threshold in {(r["model_id"], r["uncertain_below"]) for r in rows}:
                index.note_model(model_id, threshold)
            index.store([result_of(r) for r in rows])
            done += len(rows)
    return done
