"""The SQLite index: one row per track, and its per-genre probabilities in a long table.

Written through sqlite-utils. Each stored batch is one transaction, so an interrupted scan
leaves whole tracks or none. WAL mode lets `query` read while a scan writes; a lock file
beside the database keeps two scans from writing the same index at once. Commands that only
read open it read-only, so that an index on a read-only disk can still be queried.

Every SQLite error leaves this module as tagger's DatabaseError with the index's path and
a reason that says what to do: damaged (see tagger.indexcheck), full disk, read-only.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import sqlite_utils

from tagger.basics import DB_ENV_VAR as ENV_VAR, default_db_path
from tagger.errors import DatabaseError, UsageError, UserError
from tagger.fingerprint import fingerprint
from tagger.genres import GENRES, genre_key
from tagger.objects import is_uri

SCHEMA_VERSION = 6


def db_path(db: str | os.PathLike | None = None) -> Path:
    """The index file: db, else $TAGGER_DB, else the user's data folder's index.db."""
    return Path(db if db is not None else os.environ.get(ENV_VAR) or default_db_path())


def to_db_path(path: str) -> str | bytes:
    """Paths are stored as text; a name that is not valid UTF-8 (os.fsdecode gives it lone
    surrogates) is stored as its raw bytes, so that it round-trips exactly."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def from_db_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


# A track's state: classified, silent, undecodable (the file's content), or a transient
# error (permissions, I/O, a crashed decoder) that the next scan retries.
Status = Literal["ok", "silent", "failed", "error"]

# The orders of a listing (Index.tracks' sort).
Sort = Literal["path", "genre", "confidence", "scanned"]
SORTS: tuple[str, ...] = Sort.__args__


@dataclass
class TrackResult:
    """What a scan learned about one file: probabilities, or why there are none."""
    path: str
    size: int
    mtime_ns: int
    model_id: str
    status: Status
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    duration: float | None = None
    fingerprint: str | None = None      # tagger.fingerprint of the file that was decoded

    @property
    def genre(self) -> str | None:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    def as_row(self, uncertain_below: float = 0.0) -> dict:
        """The same dict that Index.tracks() yields, for a model of this threshold."""
        genre = self.genre
        confidence = self.probabilities[genre] if genre else None
        return {"path": self.path, "genre": genre, "confidence": confidence,
                "probabilities": dict(sorted(self.probabilities.items(), key=lambda kv: -kv[1])),
                "model_id": self.model_id, "error": self.error, "status": self.status,
                "uncertain": is_uncertain(confidence, uncertain_below)}


@dataclass(frozen=True)
class Known:
    """A track row as the scan's plan sees it."""
    id: int
    size: int
    mtime_ns: int
    model_id: str
    status: Status
    fingerprint: str | None


@dataclass
class Pruned:
    """What prune removed (or, in a dry run, would): the files' paths, and how many of them
    have an undo record, which is kept."""
    removed: list[str]
    undo_kept: int = 0


def under(path: str, roots: Sequence[str]) -> bool:
    """True if path is one of roots or inside one (roots absolute; none means all)."""
    return not roots or any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def with_real(roots: Sequence[str]) -> list[str]:
    """The roots and their real paths: a folder reached through a symlink is the same folder,
    whichever of its paths the index holds."""
    return list(dict.fromkeys([*roots, *map(os.path.realpath, roots)]))


def gone(path: str) -> bool:
    """True if no file is at path any more (not: it cannot be looked at, nor an object's
    URI, which a cluster-scan stored: tagger does not look at object stores here)."""
    if is_uri(path):
        return False
    try:
        os.stat(path)
        return False
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def offline(path: str) -> bool:
    """True if the nearest folder above path that still exists is empty: what a disk or share
    that is not mounted leaves (its mount point). Its files are away, not gone, so a scan
    neither prunes them nor lets another file take their rows."""
    folder = os.path.dirname(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return True


@dataclass
class IndexStats:
    """What an index holds (Index.stats). Tracks are classified (some of them uncertain),
    failed (undecodable, or a transient error) or silent; stale ones were scored by another
    model than model_id; missing ones have no file at their path any more."""
    path: str
    size: int                   # bytes: the index file and its -wal journal
    tracks: int
    classified: int
    uncertain: int
    failed: int
    silent: int
    stale: int
    missing: int
    genres: dict[str, int]      # top genre -> classified tracks, not the uncertain; most first
    models: dict[str, int]      # model id -> tracks; most first
    model_id: str | None        # the model that stale is measured against


def is_uncertain(confidence: float | None, uncertain_below: float) -> bool:
    """A classified track whose top probability is below its model's threshold (0: never)."""
    return confidence is not None and confidence < uncertain_below


def _migrate_1(db: sqlite_utils.Database) -> None:
    db["tracks"].create({
        "id": int, "path": str, "size": int, "mtime_ns": int, "model_id": str, "status": str,
        "genre": str, "confidence": float, "error": str, "duration": float, "scanned_at": str,
    }, pk="id", not_null={"path", "size", "mtime_ns", "model_id", "status"})
    db["tracks"].create_index(["path"], unique=True)
    db["tracks"].create_index(["genre", "confidence"])
    db["probabilities"].create({"track_id": int, "genre": str, "probability": float},
                               pk=("track_id", "genre"), foreign_keys=[("track_id", "tracks", "id")])
    db["probabilities"].create_index(["genre", "probability"])


def _migrate_2(db: sqlite_utils.Database) -> None:
    """Undo data for write-tags: a file's genre and TAGGER_ fields as they were before tagger
    first changed them (JSON), by path; and the size and mtime of the file tagger last wrote
    there, noted just before it took the original's place."""
    db["tag_backups"].create({"path": str, "fields": str, "saved_at": str, "written_size": int,
                              "written_mtime_ns": int}, pk="path", not_null={"fields"})


def identity(path: str) -> tuple[str, int | None, int | None]:
    """A file's real path (symlinks resolved) and its (st_dev, st_ino), None if it is gone."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return real, None, None
    return real, st.st_dev, st.st_ino


def _migrate_3(db: sqlite_utils.Database) -> None:
    """Undo records belong to files, not paths: one per real path (symlinks resolved), with
    the device and inode of the file (which tagger updates at each write, since a write
    replaces the inode). An older index may hold two records for one file reached by two
    paths; the first one saved is its original, the later ones hold tagger's own genre."""
    db.execute("ALTER TABLE tag_backups RENAME TO tag_backups_v2")
    _create_backups(db)
    rows = db.execute("SELECT path, fields, saved_at, written_size, written_mtime_ns"
                      " FROM tag_backups_v2 ORDER BY rowid").fetchall()
    for path, *rest in rows:
        real, dev, ino = identity(from_db_path(path))
        if dev is not None and db.execute("SELECT 1 FROM tag_backups WHERE dev = ? AND ino = ?",
                                          [dev, ino]).fetchone():
            continue
        db.execute("INSERT OR IGNORE INTO tag_backups (path, real_path, dev, ino, fields, saved_at,"
                   " written_size, written_mtime_ns) VALUES (?,?,?,?,?,?,?,?)",
                   [path, to_db_path(real), dev, ino, *rest])
    db.execute("DROP TABLE tag_backups_v2")


def _create_backups(db: sqlite_utils.Database) -> None:
    db["tag_backups"].create({"id": int, "path": str, "real_path": str, "dev": int, "ino": int,
                              "fields": str, "saved_at": str, "written_size": int,
                              "written_mtime_ns": int},
                             pk="id", not_null={"path", "real_path", "fields"})
    db["tag_backups"].create_index(["real_path"], unique=True)
    db["tag_backups"].create_index(["dev", "ino"])


def _migrate_4(db: sqlite_utils.Database) -> None:
    """The models that scored tracks, with the threshold below which a track's top genre is
    uncertain (ModelSettings.uncertain_below). A model without a row has none (0)."""
    db["models"].create({"model_id": str, "uncertain_below": float}, pk="model_id",
                        not_null={"uncertain_below"})


def _migrate_5(db: sqlite_utils.Database) -> None:
    """Each track's content fingerprint (tagger.fingerprint), by which a moved file or a bare
    touch is recognised; older rows have none (NULL) until their file changes or is classified
    again. Candidates for a move are looked up by size."""
    db["tracks"].add_column("fingerprint", str)
    db["tracks"].create_index(["size"])


def _migrate_6(db: sqlite_utils.Database) -> None:
    """What tagger wrote into each file with an undo record: its genre and TAGGER_ fields
    (JSON pairs, as TagState.fields), so that restore-tags leaves a file that another program
    changed since. NULL in a record from an older tagger (see writetags.changed_since)."""
    db["tag_backups"].add_column("written_fields", str)


MIGRATIONS = [_migrate_1, _migrate_2, _migrate_3, _migrate_4, _migrate_5, _migrate_6]   # MIGRATIONS[i] takes the schema from version i to i + 1
assert len(MIGRATIONS) == SCHEMA_VERSION


SQLITE_MAGIC = b"SQLite format 3\x00"
TAGGER_TABLES = {"tracks", "probabilities", "tag_backups", "tag_backups_v2", "models"}


def foreign_tables(names: Sequence[str]) -> list[str]:
    """The tables that no tagger made: an index that holds any is another program's file
    (whose user_version, which apps number their schemas with too, says nothing)."""
    return sorted(n for n in names if n not in TAGGER_TABLES and not n.startswith("sqlite_"))


def check_location(path: Path) -> None:
    """A DatabaseError if path cannot be an index file: a folder, a device or a pipe (where
    SQLite would put its journal beside it, in /dev), or below a regular file."""
    if path.is_dir():
        raise DatabaseError(f"is a folder, not an index file; pass a file in it, such as "
                            f"{path / 'index.db'}", str(path))
    if path.exists() and not path.is_file():
        raise DatabaseError("is not a regular file (a device or a pipe); pass an --db file",
                            str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DatabaseError(f"{parent} is a file, not a folder; pass an --db path "
                                    "in a folder", str(path))
            return


def check_existing(path: Path) -> None:
    """check_location, and a UserError if no scan has made an index at path yet: for the
    commands that work from what a scan stored."""
    check_location(path)
    if not path.exists():
        raise UserError(f"{path}: no index there yet; run `tagger scan FOLDER` first")


def existing_index(db: str | os.PathLike | None = None, read_only: bool = False) -> Index:
    """The index a scan made at db (see db_path), for the work done from what it stored;
    read_only for readers (they work on a read-only disk too). No index there is an error."""
    path = db_path(db)
    check_existing(path)
    return Index(path, read_only=read_only)


def _check_single_name(path: Path) -> None:
    """A DatabaseError if the index file has other hard links: SQLite keeps the -wal journal
    beside the name it opened (and tagger its lock file), so writes through two names can
    damage the index."""
    try:
        links = os.stat(path).st_nlink
    except OSError:
        return
    if links > 1:
        raise DatabaseError(f"the index file has {links} hard links; writing through more than "
                            "one name can damage it (SQLite keeps its journal beside each name): "
                            "remove the other links, or pass a copy as --db", str(path))


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that changes nothing on disk. On a read-only disk, or a full
    one, where SQLite cannot make its -shm file, the file is opened as immutable, which
    ignores a -wal file: one that holds changes (a killed scan's) is read from a copy."""
    uri = Path(os.path.abspath(path)).as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        name = getattr(exc, "sqlite_errorname", "")
        if not name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR_SHM", "SQLITE_READONLY")):
            raise
    try:
        pending = os.path.getsize(f"{path}-wal") > 32        # more than the WAL's header
    except OSError:
        pending = False
    if pending:
        return _copy_with_wal(path)
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=30)


def _copy_with_wal(path: Path) -> sqlite3.Connection:
    """The index with the changes in its -wal file, in memory: SQLite reads a WAL only where
    it can write the -shm file beside it, so the two files are copied to a temporary folder."""
    try:
        with tempfile.TemporaryDirectory(prefix="tagger-") as folder:
            copy = os.path.join(folder, "index.db")
            shutil.copyfile(path, copy)
            shutil.copyfile(f"{path}-wal", f"{copy}-wal")
            disk, memory = sqlite3.connect(copy), sqlite3.connect(":memory:")
            try:
                disk.backup(memory)
            finally:
                disk.close()
            return memory
    except OSError as exc:
        raise DatabaseError(f"cannot read the changes in {path}-wal: SQLite needs to write its "
                            f"-shm file beside it, and a copy failed ({exc.strerror}); make the "
                            "folder writable, or free some space", str(path)) from None


def _disk_trouble(path: Path) -> tuple[str, str] | None:
    """(cause, fix) when SQLite cannot create or grow a file beside the index, if the disk
    tells why: a read-only file system, a full disk, a folder we may not write to."""
    folder = os.path.dirname(os.path.realpath(path))
    try:
        fs = os.statvfs(folder)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return ("it is on a read-only file system",
                "pass an --db on a writable disk (query and check still work)")
    if fs.f_bavail * fs.f_frsize < 1 << 20:
        return "no space left on its disk", "free some space, or pass another --db"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} is read-only", "make it writable, or pass another --db"
    return None


def _sqlite_errors(method):
    """Turn the sqlite3 errors of an Index method (or generator) into tagger's DatabaseError."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None
        return generator

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
    return wrapper


class Index:
    """The SQLite index at `path` (see db_path; default $TAGGER_DB, else the user's data
    folder). read_only: for readers (never migrates, never writes; works on a read-only
    disk); otherwise the index is created, migrated, and must be writable. Use it as a
    context manager, or close() it."""

    def __init__(self, path: str | os.PathLike | None = None, read_only: bool = False):
        self.path = db_path(path)
        self.read_only = read_only
        check_location(self.path)
        if not read_only:
            _check_single_name(self.path)
        self.db = None
        try:
            if read_only:
                conn = connect_read_only(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA busy_timeout = 30000")
            self._refuse_foreign()      # before WAL mode, which another program's file would keep
            if not read_only:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            if not read_only:
                self._check_writable()
        except (sqlite3.DatabaseError, DatabaseError) as exc:
            error = exc if isinstance(exc, DatabaseError) else self._error(exc)
            if self.db is not None:
                self.db.conn.close()
            raise error from None
        except OSError as exc:
            raise DatabaseError(f"cannot create the index: {exc.strerror}", str(self.path)) from None

    def _error(self, exc: sqlite3.DatabaseError) -> Exception:
        """The DatabaseError that says what went wrong and what to do; a constraint failure
        in a healthy index (a bug, not the user's) comes back as it was."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        path = str(self.path)
        damaged = name.startswith("SQLITE_CORRUPT") or (name == "SQLITE_NOTADB" and self._is_sqlite())
        if isinstance(exc, sqlite3.IntegrityError):
            if not self._damaged():
                return exc
            damaged = True
        if damaged:
            return DatabaseError(f"the index is damaged ({exc}); `tagger check --db {path}` says "
                                 "what can still be read and copies it into a new index", path)
        if name.startswith(("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
            trouble = _disk_trouble(self.path)
            if trouble is None and name.startswith("SQLITE_READONLY"):
                trouble = ("the index file is read-only", "make it writable, or pass another --db")
            if trouble:
                return DatabaseError(f"cannot use the index ({exc}): {trouble[0]}; {trouble[1]}", path)
        if name == "SQLITE_NOTADB":
            return DatabaseError(f"cannot use the index: {exc} (not a SQLite file); pass another "
                                 "--db", path)
        return DatabaseError(f"cannot use the index: {exc}", path)

    def _is_sqlite(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                return f.read(16) == SQLITE_MAGIC
        except OSError:
            return False

    def _damaged(self) -> bool:
        try:
            return self.db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok"
        except sqlite3.DatabaseError:
            return True

    def _refuse_foreign(self) -> None:
        if foreign_tables(self.db.table_names()):
            raise DatabaseError("not a tagger index (it holds other tables); pass another --db",
                                str(self.path))

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DatabaseError(f"index schema version {version} is newer than this tagger "
                                f"understands ({SCHEMA_VERSION}); upgrade tagger", str(self.path))
        if self.read_only:
            if version == 0:
                raise DatabaseError("holds no tracks yet; run `tagger scan FOLDER` first",
                                    str(self.path))
            return
        with self.db.atomic():
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](self.db)
                self.db.execute(f"PRAGMA user_version = {step + 1}")

    def _check_writable(self) -> None:
        """Fail now, not after a scan has decoded for an hour: a write, rolled back."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold an exclusive lock file for the length of a scan or a tag write (POSIX;
        elsewhere SQLite's own locking still keeps the file consistent). The lock file is
        named after the real file, so that a symlink to the index shares its lock."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        lock = f"{os.path.realpath(self.path)}.lock"
        try:
            handle = open(lock, "w")
        except OSError as exc:
            cause, fix = _disk_trouble(self.path) or (exc.strerror, "pass another --db")
            raise DatabaseError(f"cannot create the lock file {lock}: {cause}; {fix}",
                                str(self.path)) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DatabaseError("another tagger command (scan, write-tags or restore-tags) is "
                                    "writing to this index; wait for it to finish, or pass "
                                    "another --db", str(self.path)) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @_sqlite_errors
    def is_current(self, path: str, size: int, mtime_ns: int, model_id: str) -> bool:
        """True if the index already holds this exact file version for this model, and the
        last try did not end in a transient error (permissions, I/O, a crashed decoder)."""
        row = self.db.execute("SELECT size, mtime_ns, model_id, status FROM tracks WHERE path = ?",
                              [to_db_path(path)]).fetchone()
        return row is not None and row[:3] == (size, mtime_ns, model_id) and row[3] != "error"

    @_sqlite_errors
    def store(self, results: Sequence[TrackResult]) -> None:
        """Upsert tracks and their probabilities, all in one transaction."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.db.atomic():
            for r in results:
                key = to_db_path(r.path)
                genre = r.genre
                self.db.execute(
                    "INSERT INTO tracks (path, size, mtime_ns, model_id, status, genre, confidence,"
                    " error, duration, scanned_at, fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,"
                    " model_id=excluded.model_id, status=excluded.status, genre=excluded.genre,"
                    " confidence=excluded.confidence, error=excluded.error,"
                    " duration=excluded.duration, scanned_at=excluded.scanned_at,"
                    " fingerprint=excluded.fingerprint",
                    [key, r.size, r.mtime_ns, r.model_id, r.status, genre,
                     r.probabilities[genre] if genre else None, r.error, r.duration, now,
                     r.fingerprint])
                track_id = self.db.execute("SELECT id FROM tracks WHERE path = ?", [key]).fetchone()[0]
                self.db.execute("DELETE FROM probabilities WHERE track_id = ?", [track_id])
                self.db.conn.executemany(
                    "INSERT INTO probabilities (track_id, genre, probability) VALUES (?,?,?)",
                    [(track_id, g, float(p)) for g, p in r.probabilities.items()])

    @_sqlite_errors
    def note_model(self, model_id: str, uncertain_below: float) -> None:
        """The threshold of the model that scores (or scored) tracks as model_id."""
        self._write("INSERT INTO models (model_id, uncertain_below) VALUES (?, ?) ON CONFLICT"
                    "(model_id) DO UPDATE SET uncertain_below = excluded.uncertain_below",
                    [model_id, uncertain_below])

    @_sqlite_errors
    def genres(self) -> list[str]:
        """Every genre that has probabilities in the index, in the vocabulary's order."""
        found = {g for (g,) in self.db.execute("SELECT DISTINCT genre FROM probabilities")}
        return [g for g in GENRES if g in found] + sorted(found - set(GENRES))

    @_sqlite_errors
    def tracks(self, genre: str | None = None, min_confidence: float | None = None,
               failed: bool = False, limit: int | None = None,
               uncertain: bool = False, roots: Sequence[str] = (),
               sort: Sort | None = None, paths: Sequence[str] = ()) -> Iterator[dict]:
        """Rows for listing. Each dict has path, genre, confidence, probabilities {genre: p}
        (best first), model_id, error, status, uncertain (its top probability is below its
        model's threshold, uncertain_below), match (the probability of `genre`; None without
        one), size, mtime_ns, duration (seconds, None if unknown) and scanned_at.

        genre alone: tracks whose top genre it is. genre and min_confidence: tracks whose
        probability for it is at least min_confidence, top genre or not. uncertain: only
        the uncertain ones. roots (absolute paths, taken as they are): only these files and
        what is under these folders. paths: only the files stored at these exact paths (as
        stored: real paths; a few hundred at a time).

        sort: "path"; "genre" (top genre, then most confident first); "confidence" (match
        with a genre, else the top probability, highest first); "scanned" (latest first).
        Tracks without one (failed) come last in those two. The default: "confidence" for a
        genre, else "path".
        """
        if sort is not None and sort not in SORTS:
            raise UsageError(f"--sort {sort}: choose one of {', '.join(SORTS)}")
        threshold = self._threshold()
        where, params = [], []
        if genre is not None and min_confidence is not None:
            source, score = "probabilities p JOIN tracks t ON t.id = p.track_id", "p.probability"
            where.append("p.genre = ? AND p.probability >= ?")
            params += [genre, min_confidence]
        else:
            source, score = "tracks t", "t.confidence"
            if genre is not None:
                where.append("t.genre = ?")
                params.append(genre)
        columns = ("t.id, t.path, t.genre, t.confidence, t.model_id, t.error, t.status,"
                   f" t.size, t.mtime_ns, {threshold}, t.duration, t.scanned_at,"
                   f" {score if genre is not None else 'NULL'}")
        if failed:
            where.append("t.status != 'ok'")
        if uncertain:
            where.append(f"t.status = 'ok' AND t.confidence < {threshold}")
        if paths:
            where.append(f"t.path IN ({','.join('?' * len(paths))})")
            params += [to_db_path(p) for p in paths]
        if roots:           # compared as bytes: a name stored as raw bytes is one too
            where.append("(" + " OR ".join(["CAST(t.path AS BLOB) = ? OR substr(CAST(t.path AS"
                                            " BLOB), 1, ?) = ?"] * len(roots)) + ")")
            for root in roots:
                prefix = os.fsencode(root.rstrip(os.sep) + os.sep)
                params += [os.fsencode(root), len(prefix), prefix]
        order = {"path": "t.path",
                 "genre": f"t.genre IS NULL, t.genre, {score} DESC, t.path",
                 "confidence": f"{score} IS NULL, {score} DESC, t.path",
                 "scanned": "t.scanned_at DESC, t.path"}[sort or ("path" if genre is None else "confidence")]
        sql = f"SELECT {columns} FROM {source} WHERE 1{''.join(f' AND {w}' for w in where)} ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        cursor = self.db.execute(sql, params)
        while rows := cursor.fetchmany(500):
            probs: dict[int, dict[str, float]] = {row[0]: {} for row in rows}
            marks = ",".join("?" * len(probs))
            for track_id, g, p in self.db.execute(
                    f"SELECT track_id, genre, probability FROM probabilities WHERE track_id IN ({marks})"
                    " ORDER BY track_id, probability DESC", list(probs)):
                probs[track_id][g] = p
            for (track_id, path, top, confidence, model_id, error, status, size, mtime_ns,
                 below, duration, scanned_at, match) in rows:
                yield {"path": from_db_path(path), "genre": top, "confidence": confidence,
                       "probabilities": probs[track_id], "model_id": model_id, "error": error,
                       "status": status, "size": size, "mtime_ns": mtime_ns,
                       "uncertain": status == "ok" and is_uncertain(confidence, below),
                       "uncertain_below": below, "match": match, "duration": duration,
                       "scanned_at": scanned_at}

    def _threshold(self) -> str:
        """SQL for the uncertainty threshold of a track t's model (an index not migrated yet,
        opened read-only, knows none: 0)."""
        return ("coalesce((SELECT m.uncertain_below FROM models m WHERE m.model_id ="
                " t.model_id), 0)" if self.db["models"].exists() else "0")

    @_sqlite_errors
    def stats(self, model_id: str | None = None) -> IndexStats:
        """Counts of what the index holds; stale: tracks scored by another model than
        model_id (none when it is None). Looks for every track's file on disk."""
        status = dict(self.db.execute("SELECT status, count(*) FROM tracks GROUP BY status").fetchall())
        certain = f"t.status = 'ok' AND NOT t.confidence < {self._threshold()}"
        genres = dict(self.db.execute(f"SELECT t.genre, count(*) AS n FROM tracks t WHERE {certain}"
                                      " GROUP BY t.genre ORDER BY n DESC, t.genre").fetchall())
        models = dict(self.db.execute("SELECT model_id, count(*) AS n FROM tracks GROUP BY model_id"
                                      " ORDER BY n DESC, model_id").fetchall())
        missing = sum(gone(from_db_path(p)) for (p,) in self.db.execute("SELECT path FROM tracks"))
        size = sum(os.path.getsize(f) for f in (self.path, f"{self.path}-wal") if os.path.exists(f))
        classified = status.get("ok", 0)
        return IndexStats(str(self.path), size, sum(status.values()), classified,
                          classified - sum(genres.values()),
                          status.get("failed", 0) + status.get("error", 0), status.get("silent", 0),
                          sum(n for m, n in models.items() if m != model_id) if model_id else 0,
                          missing, genres, models, model_id)

    def query(self, genre: str | None = None, min_confidence: float | None = None,
              failed: bool = False, uncertain: bool = False,
              limit: int | None = None, paths: Sequence[str | os.PathLike] = (),
              sort: Sort | None = None) -> Iterator[dict]:
        """tracks(), for what a user typed (as `tagger query` takes it): genre by any
        spelling ('Hip-Hop', 'hip hop'); paths relative or absolute, a folder reached through
        a symlink being the same folder. Flags that cannot go together (failed with a genre,
        a min_confidence or uncertain; min_confidence without a genre), a limit below 1 or
        an unknown sort raise UsageError; an unknown genre UserError."""
        for flag, given in (("--genre", genre is not None), ("--min-confidence", min_confidence
                            is not None), ("--uncertain", uncertain)):
            if failed and given:
                raise UsageError(f"--failed and {flag} exclude each other (a failed track has no "
                                 "genre); pass one of them")
        if min_confidence is not None and genre is None:
            raise UsageError("--min-confidence needs --genre")
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            raise UsageError(f"--min-confidence {min_confidence} is not between 0 and 1")
        if limit is not None and limit < 1:
            raise UsageError(f"--limit {limit}: give 1 or more (leave it out for every track)")
        if sort is not None and sort not in SORTS:
            raise UsageError(f"--sort {sort}: choose one of {', '.join(SORTS)}")
        roots = with_real([os.path.abspath(os.fspath(p)) for p in paths])
        return self.tracks(genre=genre_key(genre), min_confidence=min_confidence, failed=failed,
                           limit=limit, uncertain=uncertain, roots=roots, sort=sort)

    @_sqlite_errors
    def file_version(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the file as the index last saw it, or None if not indexed."""
        row = self.db.execute("SELECT size, mtime_ns FROM tracks WHERE path = ?",
                              [to_db_path(path)]).fetchone()
        return tuple(row) if row else None

    @_sqlite_errors
    def moved_on(self, path: str, old: tuple[int, int], new: tuple[int, int]) -> None:
        """After tagger rewrote a file's tags (not its audio), or a touch changed only its
        mtime: record its new size, mtime and fingerprint, so that the next scan does not
        classify it again, but only if the index was current for the old version of the file."""
        self._write("UPDATE tracks SET size = ?, mtime_ns = ?, fingerprint = ? WHERE path = ?"
                    " AND size = ? AND mtime_ns = ?",
                    [*new, fingerprint(path), to_db_path(path), *old])

    @_sqlite_errors
    def same_content(self, path: str, st: os.stat_result) -> bool:
        """True if the file at path (stat st) has the size and fingerprint the index holds
        for it: a file whose mtime alone changed (a bare touch) is the one classified."""
        row = self.db.execute("SELECT size, fingerprint FROM tracks WHERE path = ?",
                              [to_db_path(path)]).fetchone()
        return (row is not None and row[1] is not None and row[0] == st.st_size
                and fingerprint(path) == row[1])

    # The index follows the library: rows follow moved files (move), a touch moves a
    # row on (touched), and prune drops the rows of files no longer on disk.

    @_sqlite_errors
    def known(self, path: str) -> Known | None:
        """What the index holds about the file at path, or None."""
        row = self.db.execute("SELECT id, size, mtime_ns, model_id, status, fingerprint FROM tracks"
                              " WHERE path = ?", [to_db_path(path)]).fetchone()
        return Known(*row) if row else None

    @_sqlite_errors
    def of_size(self, size: int) -> list[tuple[int, str, str]]:
        """(id, path, fingerprint) of the fingerprinted rows of files of this size."""
        return [(i, from_db_path(p), f) for i, p, f in self.db.execute(
            "SELECT id, path, fingerprint FROM tracks WHERE size = ? AND fingerprint IS NOT NULL",
            [size])]

    @_sqlite_errors
    def touched(self, track_id: int, mtime_ns: int) -> None:
        self._write("UPDATE tracks SET mtime_ns = ? WHERE id = ?", [mtime_ns, track_id])

    @_sqlite_errors
    def move(self, track_id: int, old: str, new: str, mtime_ns: int) -> None:
        """The row of a file moved (or renamed) from old to new keeps its prediction; so does
        its undo record, unless the new path has one of its own."""
        try:
            st = os.stat(new)
            dev, ino = st.st_dev, st.st_ino
        except OSError:
            dev = ino = None
        key = to_db_path(new)
        with self.db.atomic():
            self.db.execute("UPDATE tracks SET path = ?, mtime_ns = ? WHERE id = ?",
                            [key, mtime_ns, track_id])
            mine = self.db.execute("SELECT 1 FROM tag_backups WHERE real_path = ?", [key])
            if not mine.fetchone():
                olds = list(dict.fromkeys(to_db_path(p) for p in (old, os.path.realpath(old))))
                self.db.execute("UPDATE tag_backups SET path = ?, real_path = ?, dev = ?, ino = ?"
                                f" WHERE real_path IN ({','.join('?' * len(olds))})",
                                [key, key, dev, ino, *olds])

    @_sqlite_errors
    def drop(self, track_ids: Sequence[int]) -> None:
        """Forget these tracks (their undo records stay: see prune)."""
        with self.db.atomic():
            for track_id in track_ids:
                self.db.execute("DELETE FROM probabilities WHERE track_id = ?", [track_id])
                self.db.execute("DELETE FROM tracks WHERE id = ?", [track_id])

    @_sqlite_errors
    def prune(self, roots: Sequence[str] = (), *, seen: Collection[str] = frozenset(),
              dry_run: bool = False, keep_offline: bool = False) -> Pruned:
        """Remove the rows of files under roots (absolute; none: the whole index) that are no
        longer on disk; `seen` holds paths known to exist (a scan's crawl), not looked at
        again. A file that cannot be looked at (a folder without permission) is kept, and with
        keep_offline (a scan's pruning) one under an empty folder, likely a disk not mounted.

        Undo records are never removed: a file that is gone keeps its record, so that
        restore-tags can still put its tags back if the file (a backup copy) returns;
        Pruned.undo_kept counts those of the removed files."""
        roots = with_real(roots)
        rows = [(track_id, path) for track_id, path in
                ((i, from_db_path(p)) for i, p in self.db.execute("SELECT id, path FROM tracks"))
                if under(path, roots) and path not in seen and gone(path)
                and not (keep_offline and offline(path))]
        if not dry_run:
            self.drop([track_id for track_id, _ in rows])
        paths = sorted(path for _, path in rows)
        kept = sum(1 for path in paths if self.db.execute(
            "SELECT 1 FROM tag_backups WHERE real_path IN (?, ?)",
            [to_db_path(path), to_db_path(os.path.realpath(path))]).fetchone())
        return Pruned(paths, kept)

    # Undo records belong to files: a file reached by several paths (symlinks, a bind mount)
    # has one, found by its real path, or by the device and inode of the file tagger last
    # wrote there if that file is still what tagger wrote (inodes are reused once freed).

    _RECORD = "SELECT id, written_size, written_mtime_ns, written_fields, fields FROM tag_backups"

    def _record(self, path: str) -> tuple | None:
        """(id, written_size, written_mtime_ns, written_fields, fields) of the record of the
        file at path, or None."""
        row = self.db.execute(f"{self._RECORD} WHERE real_path = ?",
                              [to_db_path(os.path.realpath(path))]).fetchone()
        if row is not None:
            return row
        try:
            st = os.stat(path)
        except OSError:
            return None
        return self.db.execute(
            f"{self._RECORD} WHERE dev = ? AND ino = ?"
            " AND written_size = ? AND written_mtime_ns = ? ORDER BY id",
            [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]).fetchone()

    @_sqlite_errors
    def replaced(self, path: str) -> dict | None:
        """The saved fields of the record at path's real path if it may belong to another
        file: the file there now is neither the one tagger last wrote (its inode; not the
        device, whose number a removable disk may change at each mount) nor of the size and
        mtime tagger noted just before its last rename, so the file tagger wrote was moved
        away or replaced since. None if the record is the file's, or there is none."""
        row = self.db.execute("SELECT ino, written_size, written_mtime_ns, fields FROM tag_backups"
                              " WHERE real_path = ?",
                              [to_db_path(os.path.realpath(path))]).fetchone()
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (row is not None and row[0] is not None and st.st_ino != row[0]
                and (st.st_size, st.st_mtime_ns) != tuple(row[1:3])):
            return json.loads(row[3])
        return None

    @_sqlite_errors
    def save_backup(self, path: str, fields: dict) -> bool:
        """Keep a file's original tag fields; a record that exists already for the file is
        never replaced, so that a restore goes back to the state before the first write.
        True if a record was made now."""
        if self._record(path) is not None:
            return False
        real, dev, ino = identity(path)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write("INSERT INTO tag_backups (path, real_path, dev, ino, fields, saved_at)"
                    " VALUES (?,?,?,?,?,?)", [to_db_path(path), to_db_path(real), dev, ino,
                                              json.dumps(fields, ensure_ascii=False), now])
        return True

    @_sqlite_errors
    def note_written(self, path: str, version: tuple[int, int]) -> None:
        """The (size, mtime_ns) of the file that is about to replace the one at path (its
        inode is noted once it has: note_identity)."""
        if (record := self._record(path)) is not None:
            self._write("UPDATE tag_backups SET written_size = ?, written_mtime_ns = ? WHERE id = ?",
                        [*version, record[0]])

    @_sqlite_errors
    def written_fields(self, path: str) -> list[tuple[str, str]] | None:
        """The genre and TAGGER_ fields tagger last wrote into the file at path, or None if
        it has no record or its record is from a tagger that did not keep them."""
        record = self._record(path)
        return [tuple(kv) for kv in json.loads(record[3])] if record and record[3] else None

    @_sqlite_errors
    def saved(self, path: str) -> dict | None:
        """The undo record of the file at path (TagState.backup(), and "added": the genre
        values that write-tags --append put beside the file's own), or None."""
        record = self._record(path)
        return json.loads(record[4]) if record else None

    @_sqlite_errors
    def rebase(self, path: str, fields: dict) -> None:
        """Make the file's current fields its record's original: another program changed
        them since tagger wrote it, and a restore must give back that program's edit."""
        if (record := self._record(path)) is not None:
            self._write("UPDATE tag_backups SET fields = ? WHERE id = ?",
                        [json.dumps(fields, ensure_ascii=False), record[0]])

    @_sqlite_errors
    def record_id(self, path: str) -> int | None:
        return record[0] if (record := self._record(path)) is not None else None

    @_sqlite_errors
    def note_identity(self, record_id: int | None, st: os.stat_result,
                      fields: Sequence[tuple[str, str]] | None = None,
                      added: Sequence[str] | None = None) -> None:
        """The device and inode of the file that has just replaced the record's file, and
        the genre and TAGGER_ fields that write-tags put in it (None: a restore, after which
        the record goes), with the genre values of those that are tagger's beside the
        file's own (write-tags --append; None: the genre field is tagger's or the file's).
        Noted after the rename: a kill before it leaves the fields of the file still there."""
        if record_id is None:
            return
        self._write("UPDATE tag_backups SET dev = ?, ino = ? WHERE id = ?",
                    [st.st_dev, st.st_ino, record_id])
        if fields is None:
            return
        saved = json.loads(self.db.execute("SELECT fields FROM tag_backups WHERE id = ?",
                                           [record_id]).fetchone()[0])
        saved.pop("added", None)
        if added is not None:
            saved["added"] = list(added)
        with self.db.atomic():
            self.db.execute("UPDATE tag_backups SET written_fields = ?, fields = ? WHERE id = ?",
                            [json.dumps([list(kv) for kv in fields], ensure_ascii=False),
                             json.dumps(saved, ensure_ascii=False), record_id])

    @_sqlite_errors
    def drop_record(self, record_id: int | None) -> None:
        if record_id is not None:
            self._write("DELETE FROM tag_backups WHERE id = ?", [record_id])

    @_sqlite_errors
    def written_version(self, path: str) -> tuple[int, int] | None:
        record = self._record(path)
        return tuple(record[1:3]) if record and record[1] is not None else None

    @_sqlite_errors
    def backups(self) -> Iterator[tuple[str, dict]]:
        """(path, fields) of every saved record, one per file, by path: the path it was saved
        through, or the file's real path if that path now leads to another file."""
        rows = self.db.execute("SELECT path, real_path, fields FROM tag_backups ORDER BY path").fetchall()
        for path, real, fields in rows:
            path, real = from_db_path(path), from_db_path(real)
            yield path if os.path.realpath(path) == real else real, json.loads(fields)

    def _write(self, sql: str, params: list) -> None:
        with self.db.atomic():
            self.db.execute(sql, params)
