"""`tagger check`: SQLite's integrity check of an index, what can still be read from it, and a
copy of that into a fresh index (undo records first). The checked index is only ever read.

Rows are read by rowid, in order; where a damaged page stops the read, the reader seeks past
it (doubling the step, then narrowing it down), so that only the rows on damaged pages are lost.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tagger.errors import DatabaseError, UserError
from tagger.index import (Index, check_existing, check_location, connect_read_only, foreign_tables, from_db_path,
                          identity, to_db_path)

TABLES = ("tag_backups", "tracks", "probabilities")     # the order of a recovery
BATCH = 500


@dataclass
class Report:
    version: int | None
    problems: list[str]                                  # integrity_check's lines; [] if ok
    readable: dict[str, int] = field(default_factory=dict)   # table -> rows that can be read

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(conn: sqlite3.Connection, table: str) -> Iterator[dict]:
    """Every row of table that can be read (as {column: value}), in rowid order; none if the
    index has no such table (or cannot say which tables it has)."""
    if table not in _tables(conn):
        return
    def select(after: int, limit: int) -> list:
        cursor = conn.execute(f"SELECT rowid AS tagger_rowid, * FROM {table} WHERE rowid > ? ORDER BY rowid "
                              "LIMIT ?", [after, limit])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def readable(after: int) -> bool:
        try:
            select(after, 1)
            return True
        except sqlite3.DatabaseError:
            return False

    last = -(2 ** 63)
    while True:
        try:
            rows = select(last, BATCH)
        except sqlite3.DatabaseError:
            try:
                rows = select(last, 1)               # up to the damaged page, one at a time
            except sqlite3.DatabaseError:
                last = _past_damage(readable, last)
                if last is None:
                    return
                continue
        if not rows:
            return
        for row in rows:
            last = row.pop("tagger_rowid")
            yield row


def _past_damage(readable, last: int) -> int | None:
    """The rowid to go on after, past the damage that stops a read after `last`."""
    step, bad = 1, last
    while not readable(bad + step):
        bad += step
        step *= 2
        if bad + step >= 2 ** 63:
            return None
    good = bad + step
    while good - bad > 1:                            # the first readable seek after the damage
        mid = (bad + good) // 2
        if readable(mid):
            good = mid
        else:
            bad = mid
    return good


def _open(path: Path) -> sqlite3.Connection:
    check_existing(path)
    try:
        return connect_read_only(path)
    except sqlite3.DatabaseError as exc:
        if not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_CORRUPT"):
            raise DatabaseError(f"cannot open the index: {exc}", str(path)) from None
    # its list of tables is damaged: the reads below say so, and find nothing
    return sqlite3.connect(f"{Path(os.path.abspath(path)).as_uri()}?mode=ro", uri=True)


def check(path: Path) -> Report:
    """Integrity check and readable row counts; nothing is written."""
    conn = _open(path)
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError:
            version = None
        if foreign_tables(_tables(conn)):
            raise DatabaseError("not a tagger index (it holds other tables); pass another --db",
                                str(path))
        try:
            problems = [line for (line,) in conn.execute("PRAGMA integrity_check(100)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        report = Report(version, [] if problems == ["ok"] else problems)
        for table in TABLES:
            report.readable[table] = sum(1 for _ in _rows(conn, table))
        return report
    finally:
        conn.close()


def _tables(conn: sqlite3.Connection) -> set[str]:
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        return set()


def recover(path: Path, new: Path) -> dict[str, int]:
    """Copy what can be read from the index at path into a new index: undo records and the
    models' thresholds, then tracks with their probabilities. A classified track whose probabilities are not all
    readable (they no longer sum to 1) is left out, so that the next scan classifies it again.
    Returns {"tag_backups": n, "tracks": n, "probabilities": n, "tracks_left_out": n}."""
    check_location(new)
    if new.exists() or new.is_symlink():
        raise UserError(f"{new}: exists already; pass a new file to recover into")
    conn = _open(path)
    try:
        with Index(new) as index:
            counts = _copy(conn, index)
    except BaseException:
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{new}{suffix}").unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    return counts


def _copy(conn: sqlite3.Connection, index: Index) -> dict[str, int]:
    db, counts = index.db, dict.fromkeys((*TABLES, "tracks_left_out"), 0)
    with db.atomic():
        for row in _rows(conn, "tag_backups"):
            if row.get("real_path") is None:          # an index from before undo records had it
                real, row["dev"], row["ino"] = identity(from_db_path(row["path"]))
                row["real_path"] = to_db_path(real)
            columns = ("path", "real_path", "dev", "ino", "fields", "saved_at", "written_size",
                       "written_mtime_ns", "written_fields")
            cursor = db.execute(f"INSERT OR IGNORE INTO tag_backups ({', '.join(columns)}) VALUES"
                                f" ({', '.join('?' * len(columns))})", [row.get(c) for c in columns])
            counts["tag_backups"] += cursor.rowcount
        for row in _rows(conn, "models"):
            db.execute("INSERT OR IGNORE INTO models (model_id, uncertain_below) VALUES (?, ?)",
                       [row["model_id"], row["uncertain_below"]])
    track_columns = [c.name for c in db["tracks"].columns]
    with db.atomic():
        for row in _rows(conn, "tracks"):
            cursor = db.execute(f"INSERT OR IGNORE INTO tracks ({', '.join(track_columns)}) VALUES"
                                f" ({', '.join('?' * len(track_columns))})",
                                [row.get(c) for c in track_columns])
            counts["tracks"] += cursor.rowcount
    ids = {track_id for (track_id,) in db.execute("SELECT id FROM tracks")}
    with db.atomic():
        for row in _rows(conn, "probabilities"):
            if row["track_id"] in ids:
                db.execute("INSERT OR IGNORE INTO probabilities (track_id, genre, probability)"
                           " VALUES (?,?,?)", [row["track_id"], row["genre"], row["probability"]])
        incomplete = [track_id for track_id, total in db.execute(
            "SELECT t.id, sum(p.probability) FROM tracks t LEFT JOIN probabilities p ON p.track_id = t.id"
            " WHERE t.status = 'ok' GROUP BY t.id")
                      if total is None or not math.isclose(total, 1.0, abs_tol=1e-3)]
        for track_id in incomplete:
            db.execute("DELETE FROM probabilities WHERE track_id = ?", [track_id])
            db.execute("DELETE FROM tracks WHERE id = ?", [track_id])
    counts["tracks"] -= len(incomplete)
    counts["tracks_left_out"] = len(incomplete)
    counts["probabilities"] = db.execute("SELECT count(*) FROM probabilities").fetchone()[0]
    return counts
