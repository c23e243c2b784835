"""tagger on Ray Data (the [cluster] extra): `cluster-scan` and `merge`.

The same pieces as `scan`, unchanged: crawl (on the driver) -> decode in Ray actors, each
holding a one-worker DecodePool with its timeout, so that a decoder that crashes or hangs
costs its file, never a block or the run -> classify_decoded on an actor pool with other
resources than the decoders' (or Ray fuses the two steps into one operator) -> Parquet
under --out, one file per block, with the index's fields. merge folds such files into the
SQLite index through Index.store. The only module of tagger that imports ray (and pyarrow);
nothing imports it but the CLI's cluster-scan and merge, when they run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tagger.basics import AUDIO_EXTENSIONS
from tagger.crawl import Candidate, crawl, real_path
from tagger.errors import UserError
from tagger.index import Index, TrackResult
from tagger.pool import DecodeJob, DecodePool, Failure, decode_job
from tagger.scanner import DECODE_TIMEOUT, ScanStats, classify_decoded, failure_result

INSTALL = "cluster-scan needs Ray Data: pip install 'tagger[cluster]'"
FIELDS = ("path", "size", "mtime_ns", "model_id", "status", "genre", "confidence",
          "probabilities", "error", "duration", "fingerprint", "uncertain_below")


@dataclass
class ClusterStats(ScanStats):
    not_utf8: int = 0       # files left out: names that are not UTF-8 (Parquet cannot hold them)


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
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError(INSTALL.replace("cluster-scan", "merge")) from None
    return pyarrow


def listing(sources: Sequence[str | os.PathLike], exclude: Sequence[str] = ()
            ) -> tuple[list[Candidate], int]:
    """The files to classify, each once by its real path as `scan` stores it: a SOURCE is a
    folder or an audio file (crawled as `scan` crawls), or a text file that lists such paths
    one a line (blank lines and '#' comments skipped; relative to the list's folder); a
    listed path that is missing comes back with an error. Also how many files were left out
    because their names are not UTF-8 (Parquet's strings cannot hold them)."""
    found, seen, folders, not_utf8 = [], set(), {}, 0
    for source in map(os.path.abspath, map(os.fspath, sources)):
        roots = [source]
        if os.path.isfile(source) and os.path.splitext(source)[1].lower() not in AUDIO_EXTENSIONS:
            roots = _manifest(source)
        for root in roots:
            if not os.path.exists(root):
                found.append(Candidate(root, 0, 0, "no such file (listed in a manifest)"))
                continue
            for cand in crawl([root], exclude):
                path = cand.path if cand.error else real_path(cand.path, folders)
                if path in seen:
                    continue
                seen.add(path)
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    not_utf8 += 1
                    continue
                found.append(replace(cand, path=path))
    return found, not_utf8


def _manifest(path: str) -> list[str]:
    folder = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as a list of paths ({exc})") from None
    return [os.path.join(folder, line) for line in lines if line and not line.startswith("#")]


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
        cands = [Candidate(*row) for row in zip(*(batch.column(k).to_pylist() for k in
                                                  ("path", "size", "mtime_ns", "error")))]
        rows = [(c, Failure(c.error, transient=True)) for c in cands if c.error]
        rows += self.pool.imap([c for c in cands if not c.error],
                               lambda c: DecodeJob(c.path, *self.excerpts))
        out = {k: [] for k in ("path", "size", "mtime_ns", "reason", "transient", "duration",
                               "fingerprint", "audio", "windows")}
        for cand, result in rows:
            failed = isinstance(result, Failure)
            for key, value in (("path", cand.path), ("size", cand.size),
                               ("mtime_ns", cand.mtime_ns),
                               ("reason", result.reason if failed else None),
                               ("transient", result.transient if failed else False),
                               ("duration", None if failed else result.duration),
                               ("fingerprint", None if failed else result.fingerprint),
                               ("audio", None if failed else b"".join(
                                   np.asarray(w, np.float32).tobytes() for w in result.waveforms)),
                               ("windows", None if failed else [len(w) for w in result.waveforms])):
                out[key].append(value)
        return pa.table(out, schema=pa.schema([
            ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
            ("reason", pa.string()), ("transient", pa.bool_()), ("duration", pa.float64()),
            ("fingerprint", pa.string()), ("audio", pa.binary()), ("windows", pa.list_(pa.int64()))]))


def results_schema():
    import pyarrow as pa
    return pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
        ("model_id", pa.string()), ("status", pa.string()), ("genre", pa.string()),
        ("confidence", pa.float64()), ("probabilities", pa.map_(pa.string(), pa.float64())),
        ("error", pa.string()), ("duration", pa.float64()), ("fingerprint", pa.string()),
        ("uncertain_below", pa.float64())])


class Classify:
    """A Ray actor: the model, loaded once; a batch of decoded files -> result rows, through
    scanner.classify_decoded (the silence rule and the rows `scan` stores)."""

    def __init__(self, model_path: str, device: str):
        from tagger.api import load_model
        self.classifier = load_model(model_path, device).classifier

    def __call__(self, batch):
        import pyarrow as pa
        from tagger.decode import Excerpts
        model_id = self.classifier.model_id
        failures, decoded = [], []
        for row in batch.to_pylist():
            cand = Candidate(row["path"], row["size"], row["mtime_ns"])
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
        return pa.Table.from_pylist([_row(r, threshold) for r in results],
                                    schema=results_schema())


def _row(r: TrackResult, uncertain_below: float) -> dict:
    genre = r.genre
    return {"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns, "model_id": r.model_id,
            "status": r.status, "genre": genre,
            "confidence": r.probabilities[genre] if genre else None,
            "probabilities": list(r.probabilities.items()), "error": r.error,
            "duration": r.duration, "fingerprint": r.fingerprint,
            "uncertain_below": uncertain_below}


def result_of(row: dict) -> TrackResult:
    return TrackResult(row["path"], row["size"], row["mtime_ns"], row["model_id"], row["status"],
                       dict(row["probabilities"] or []), row["error"], row["duration"],
                       row["fingerprint"])


def cluster_scan(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 model: str | os.PathLike | None = None, *, exclude: Sequence[str] = (),
                 decoders: int | None = None, batch_size: int = 16, device: str = "auto",
                 decode_timeout: float = DECODE_TIMEOUT, function: Callable = decode_job,
                 progress: bool = False) -> ClusterStats:
    """Classify every file that `sources` name (see listing) on Ray Data (the cluster that
    ray.init() finds, else a local one), writing the results as Parquet files under `out`
    (see results_schema; merge folds them into an index). `decoders` decode actors (default:
    Ray's CPUs less one, at least one), one model actor, batch_size tracks per model batch.
    Everything listed is classified: there is no plan against an index yet. `function` is
    the decoder (tests give others). Returns the stats of the run, as `scan` counts them,
    and how many files were left out for their names (see listing)."""
    ray = _ray()
    from tagger.api import _load, check_paths
    from tagger.modelfile import excerpt_settings, resolve_model
    from tagger.scanner import excerpts_of
    check_paths(sources, "no such file or folder")
    model_path, _ = resolve_model(None if model is None else Path(os.fspath(model)))
    excerpts = excerpt_settings(model_path) or excerpts_of(_load(model_path, "cpu").classifier)
    todo, not_utf8 = listing(sources, exclude)
    stats = ClusterStats(not_utf8=not_utf8)
    if not todo:
        return stats
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = ray.cluster_resources().get("GPU", 0) if device != "cpu" else 0
        decoders = decoders or max(1, cpus - 1)
        items = [{"path": c.path, "size": c.size, "mtime_ns": c.mtime_ns, "error": c.error}
                 for c in todo]
        results = (ray.data.from_items(items, override_num_blocks=max(1, min(
                       len(items) // batch_size + 1, 4 * decoders)))
                   .map_batches(Decoder, fn_constructor_args=(excerpts, decode_timeout, function),
                                batch_format="pyarrow", batch_size=batch_size,
                                compute=ray.data.ActorPoolStrategy(size=decoders), num_cpus=1)
                   .map_batches(Classify, fn_constructor_args=(str(model_path), device),
                                batch_format="pyarrow", batch_size=batch_size,
                                compute=ray.data.ActorPoolStrategy(size=1),
                                **({"num_gpus": 1} if gpus else {"num_cpus": 0.5}))
                   .materialize())
        os.makedirs(out, exist_ok=True)
        results.write_parquet(os.fspath(out), ray_remote_args={"num_cpus": 0.25})
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=4096):
            for row in batch.to_pylist():
                stats.uncertain_below = row["uncertain_below"]
                stats.count(result_of(row))
    finally:
        if started:
            ray.shutdown()
    return stats


def result_files(folder: str | os.PathLike) -> list[Path]:
    """The Parquet files under `folder` (a cluster-scan's --out), oldest first."""
    _pa()
    files = sorted(Path(folder).glob("*.parquet"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    if not files:
        raise UserError(f"{os.fspath(folder)}: no Parquet files here; give the --out folder "
                        "of a cluster-scan")
    return files


def read_results(files: Sequence[Path]) -> Iterator[list[dict]]:
    """The rows of cluster-scan's Parquet files, a few thousand at a time, file by file."""
    pa = _pa()
    for file in files:
        for batch in pa.parquet.ParquetFile(file).iter_batches(batch_size=2000,
                                                              columns=list(FIELDS)):
            yield batch.to_pylist()


def merge(folder: str | os.PathLike, db: str | os.PathLike | None = None) -> int:
    """Fold a cluster-scan's results into the index `db` through Index.store (a row of a
    later file replaces an earlier one's, as a rescan does); returns how many rows."""
    files = result_files(folder)            # before the index is made: nothing to merge
    done = 0
    with Index(db) as index, index.writer_lock():
        for rows in read_results(files):
            for model_id, threshold in {(r["model_id"], r["uncertain_below"]) for r in rows}:
                index.note_model(model_id, threshold)
            index.store([result_of(r) for r in rows])
            done += len(rows)
    return done
