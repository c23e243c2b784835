"""The SQLite index: one row per track, and its per-genre probabilities in a long table.

Written through sqlite-utils. Each stored batch is one transaction, so an interrupted scan
leaves whole tracks or none. WAL mode lets `query` read while a scan writes; a lock file
beside the database keeps two scans from writing the same index at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import platformdirs
import sqlite_utils

from tagger.errors import DatabaseError
from tagger.genres import GENRES

SCHEMA_VERSION = 2
ENV_VAR = "TAGGER_DB"


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("tagger")) / "index.db"


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


@dataclass
class TrackResult:
    """What a scan learned about one file: probabilities, or why there are none."""
    path: str
    size: int
    mtime_ns: int
    model_id: str
    status: str          # "ok", "silent", "failed" (the file's content), "error" (transient)
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    duration: float | None = None

    @property
    def genre(self) -> str | None:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    def as_row(self) -> dict:
        """The same dict that Index.tracks() yields."""
        genre = self.genre
        return {"path": self.path, "genre": genre,
                "confidence": self.probabilities[genre] if genre else None,
                "probabilities": dict(sorted(self.probabilities.items(), key=lambda kv: -kv[1])),
                "model_id": self.model_id, "error": self.error, "status": self.status}


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


MIGRATIONS = [_migrate_1, _migrate_2]   # MIGRATIONS[i] takes the schema from version i to i + 1
assert len(MIGRATIONS) == SCHEMA_VERSION


class Index:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA busy_timeout = 30000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot use the index: {exc}", str(self.path)) from None
        except OSError as exc:
            raise DatabaseError(f"cannot create the index: {exc.strerror}", str(self.path)) from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and self.db.table_names():
            raise DatabaseError("not a tagger index (it holds other tables); pass another --db",
                                str(self.path))
        if version > SCHEMA_VERSION:
            raise DatabaseError(f"index schema version {version} is newer than this tagger "
                                f"understands ({SCHEMA_VERSION}); upgrade tagger", str(self.path))
        with self.db.atomic():
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](self.db)
                self.db.execute(f"PRAGMA user_version = {step + 1}")

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold an exclusive lock file for the length of a scan or a tag write (POSIX;
        elsewhere SQLite's own locking still keeps the file consistent)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        with open(f"{self.path}.lock", "w") as handle:
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

    def is_current(self, path: str, size: int, mtime_ns: int, model_id: str) -> bool:
        """True if the index already holds this exact file version for this model, and the
        last try did not end in a transient error (permissions, I/O, a crashed decoder)."""
        row = self.db.execute("SELECT size, mtime_ns, model_id, status FROM tracks WHERE path = ?",
                              [to_db_path(path)]).fetchone()
        return row is not None and row[:3] == (size, mtime_ns, model_id) and row[3] != "error"

    def store(self, results: Sequence[TrackResult]) -> None:
        """Upsert tracks and their probabilities, all in one transaction."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            with self.db.atomic():
                for r in results:
                    key = to_db_path(r.path)
                    genre = r.genre
                    self.db.execute(
                        "INSERT INTO tracks (path, size, mtime_ns, model_id, status, genre, confidence,"
                        " error, duration, scanned_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                        " ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,"
                        " model_id=excluded.model_id, status=excluded.status, genre=excluded.genre,"
                        " confidence=excluded.confidence, error=excluded.error,"
                        " duration=excluded.duration, scanned_at=excluded.scanned_at",
                        [key, r.size, r.mtime_ns, r.model_id, r.status, genre,
                         r.probabilities[genre] if genre else None, r.error, r.duration, now])
                    track_id = self.db.execute("SELECT id FROM tracks WHERE path = ?", [key]).fetchone()[0]
                    self.db.execute("DELETE FROM probabilities WHERE track_id = ?", [track_id])
                    self.db.conn.executemany(
                        "INSERT INTO probabilities (track_id, genre, probability) VALUES (?,?,?)",
                        [(track_id, g, float(p)) for g, p in r.probabilities.items()])
        except sqlite3.OperationalError as exc:
            raise DatabaseError(f"cannot write to the index: {exc}", str(self.path)) from None

    def genres(self) -> list[str]:
        """Every genre that has probabilities in the index, in the vocabulary's order."""
        found = {g for (g,) in self.db.execute("SELECT DISTINCT genre FROM probabilities")}
        return [g for g in GENRES if g in found] + sorted(found - set(GENRES))

    def tracks(self, genre: str | None = None, min_confidence: float | None = None,
               failed: bool = False, limit: int | None = None) -> Iterator[dict]:
        """Rows for listing: for a genre, most probable first; otherwise by path. Each dict has
        path, genre, confidence, probabilities {genre: p} (best first), model_id, error, status.

        genre alone: tracks whose top genre it is. genre and min_confidence: tracks whose
        probability for it is at least min_confidence, top genre or not.
        """
        columns = ("t.id, t.path, t.genre, t.confidence, t.model_id, t.error, t.status,"
                   " t.size, t.mtime_ns")
        where, params = [], []
        if genre is not None and min_confidence is not None:
            sql = (f"SELECT {columns} FROM probabilities p JOIN tracks t ON t.id = p.track_id"
                   " WHERE p.genre = ? AND p.probability >= ?")
            params += [genre, min_confidence]
            order = "p.probability DESC, t.path"
        else:
            sql = f"SELECT {columns} FROM tracks t WHERE 1"
            order = "t.path"
            if genre is not None:
                where.append("t.genre = ?")
                params.append(genre)
                order = "t.confidence DESC, t.path"
        if failed:
            where.append("t.status != 'ok'")
        sql += "".join(f" AND {w}" for w in where) + f" ORDER BY {order}"
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
            for track_id, path, top, confidence, model_id, error, status, size, mtime_ns in rows:
                yield {"path": from_db_path(path), "genre": top, "confidence": confidence,
                       "probabilities": probs[track_id], "model_id": model_id, "error": error,
                       "status": status, "size": size, "mtime_ns": mtime_ns}

    def file_version(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the file as the index last saw it, or None if not indexed."""
        row = self.db.execute("SELECT size, mtime_ns FROM tracks WHERE path = ?",
                              [to_db_path(path)]).fetchone()
        return tuple(row) if row else None

    def moved_on(self, path: str, old: tuple[int, int], new: tuple[int, int]) -> None:
        """After tagger rewrote a file's tags (not its audio): record its new size and mtime,
        so that the next scan does not classify it again, but only if the index was current
        for the old version of the file."""
        self._write("UPDATE tracks SET size = ?, mtime_ns = ? WHERE path = ? AND size = ?"
                    " AND mtime_ns = ?", [*new, to_db_path(path), *old])

    def save_backup(self, path: str, fields: dict) -> None:
        """Keep a file's original tag fields; a backup that exists already is never replaced,
        so that a restore goes back to the state before the first write."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write("INSERT OR IGNORE INTO tag_backups (path, fields, saved_at) VALUES (?,?,?)",
                    [to_db_path(path), json.dumps(fields, ensure_ascii=False), now])

    def note_written(self, path: str, version: tuple[int, int]) -> None:
        """The (size, mtime_ns) of the file that is about to replace the one at path."""
        self._write("UPDATE tag_backups SET written_size = ?, written_mtime_ns = ? WHERE path = ?",
                    [*version, to_db_path(path)])

    def written_version(self, path: str) -> tuple[int, int] | None:
        row = self.db.execute("SELECT written_size, written_mtime_ns FROM tag_backups WHERE path = ?",
                              [to_db_path(path)]).fetchone()
        return tuple(row) if row and row[0] is not None else None

    def drop_backup(self, path: str) -> None:
        self._write("DELETE FROM tag_backups WHERE path = ?", [to_db_path(path)])

    def backups(self) -> Iterator[tuple[str, dict]]:
        """(path, fields) of every saved backup, by path."""
        rows = self.db.execute("SELECT path, fields FROM tag_backups ORDER BY path").fetchall()
        for path, fields in rows:
            yield from_db_path(path), json.loads(fields)

    def _write(self, sql: str, params: list) -> None:
        try:
            with self.db.atomic():
                self.db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise DatabaseError(f"cannot write to the index: {exc}", str(self.path)) from None
