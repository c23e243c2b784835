"""A damaged, full, read-only or misplaced index: one "Error:" line that says what to do,
`tagger check` and its recovery, and read-only commands that still work on a read-only disk."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import chmod_works, run
from tagger.errors import DatabaseError
from tagger.index import Index, TrackResult


def one_error_line(result, start: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {start}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scanned(library, model_path, tmp_path) -> Path:
    db = tmp_path / "index.db"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    run("write-tags", "--db", db, "--overwrite", "--min-confidence", "0")
    return db


def page_size(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()


def damage_page(db: Path, page: int) -> None:
    """A few bytes over the head of one page (1-based), as a bad sector or a torn copy leaves."""
    with open(db, "r+b") as f:
        f.seek((page - 1) * page_size(db))
        f.write(b"\xde\xad\xbe\xef" * 4)


def root_page(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()[0]
    finally:
        conn.close()


DAMAGED = "the index is damaged"


@pytest.mark.parametrize("table,command", [
    ("probabilities", ["query"]), ("probabilities", ["write-tags", "--overwrite"]),
    ("tracks", ["query", "--format", "json"]), ("tracks", ["write-tags"]),
    ("probabilities", ["scan", "--force"]), ("tag_backups", ["restore-tags"]),
])
def test_a_damaged_page_is_one_error_line(scanned, library, model_path, table, command):
    damage_page(scanned, root_page(scanned, table))
    if command[0] == "scan":
        command = [*command, library, "--model", model_path, "--workers", "0"]
    line = one_error_line(run(*command, "--db", scanned, ok=None), f"{scanned}: {DAMAGED}")
    assert f"tagger check --db {scanned}" in line


def test_a_damaged_index_through_a_real_process(scanned):
    damage_page(scanned, root_page(scanned, "probabilities"))
    proc = subprocess.run([sys.executable, "-m", "tagger", "query", "--db", str(scanned)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"Error: {scanned}: {DAMAGED}") and proc.stderr.count("\n") == 1


def test_a_damaged_index_page_in_store_is_a_database_error(scanned, library):
    """A damaged index b-tree makes SQLite report constraint failures; they are damage too."""
    damage_page(scanned, root_page(scanned, "sqlite_autoindex_probabilities_1"))
    path = str(library / "a" / "one.mp3")
    with Index(scanned) as index, pytest.raises(DatabaseError, match=DAMAGED) as info:
        index.store([TrackResult(path, 1, 2, "m", "ok", {"jazz": 0.5, "rock": 0.5})])
    assert info.value.path == str(scanned)


def big_index(db: Path, n: int = 400) -> list[str]:
    paths = [f"/music/track-{i:04d}.mp3" for i in range(n)]
    with Index(db) as index:
        index.store([TrackResult(p, i, i, "m", "ok", {"jazz": 0.75, "rock": 0.25}, duration=3.0)
                     for i, p in enumerate(paths)])
        for p in paths[:5]:
            index.save_backup(p, {"fields": [["GENRE", f"old {p}"]], "tagged": True, "id3_version": None})
    return paths


def page_holding(db: Path, needle: bytes, kind: int) -> int:
    """The page (1-based) of the first b-tree page of this kind (0x0d: table leaf) with needle."""
    data, size = db.read_bytes(), page_size(db)
    start = 0
    while (at := data.find(needle, start)) >= 0:
        page = at // size
        if data[page * size] == kind:
            return page + 1
        start = at + 1
    raise AssertionError(f"{needle!r} not found")


def test_check_says_what_is_readable_and_recovers_it(tmp_path):
    db = tmp_path / "index.db"
    paths = big_index(db)
    healthy = run("check", "--db", db)
    assert "Integrity: ok" in healthy.stdout and "400 tracks" in healthy.stdout
    damage_page(db, page_holding(db, b"/music/track-0200.mp3", 0x0D))
    before = digest(db)
    result = run("check", "--db", db, ok=1)
    assert "Integrity: damaged" in result.stdout
    assert f"tagger check --db {db} --recover NEW.db" in one_error_line(result, f"{db}: {DAMAGED}")
    assert digest(db) == before

    new = tmp_path / "recovered.db"
    result = run("check", "--db", db, "--recover", new)
    assert digest(db) == before                                     # never modified
    assert "5 undo records" in result.stdout
    with Index(new) as index:
        rows = {r["path"]: r for r in index.tracks()}
        assert sorted(p for p, _ in index.backups()) == sorted(paths[:5])
    assert 300 < len(rows) < 400 and "/music/track-0200.mp3" not in rows
    assert all(r["probabilities"] == {"jazz": 0.75, "rock": 0.25} for r in rows.values())
    assert "Integrity: ok" in run("check", "--db", new).stdout
    again = run("check", "--db", db, "--recover", new, ok=1)
    assert again.stderr == f"Error: {new}: exists already; pass a new file to recover into\n"


# -- misplaced, full and read-only indexes ----------------------------------------------------

def test_tagger_db_pointing_at_a_folder(tmp_path, monkeypatch, library, model_path):
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("TAGGER_DB", str(folder))
    for command in (["query"], ["write-tags"], ["check"],
                    ["scan", library, "--model", model_path, "--workers", "0"]):
        line = one_error_line(run(*command, ok=None), f"{folder}: is a folder, not an index file")
        assert "$TAGGER_DB" in line, line
    assert list(folder.iterdir()) == []


def test_db_below_a_regular_file(tmp_path, library, model_path):
    song = tmp_path / "song.mp3"
    song.write_bytes(b"ID3")
    db = song / "index.db"
    for command in (["query"], ["restore-tags"],
                    ["scan", library, "--model", model_path, "--workers", "0"]):
        line = one_error_line(run(*command, "--db", db, ok=None),
                              f"{db}: {song} is a file, not a folder")
        assert "--db" in line


def _can_mount(tmp_path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    proc = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                          capture_output=True)
    probe.rmdir()
    return proc.returncode == 0


@pytest.fixture
def mounts(tmp_path):
    """Runs tagger in a private mount namespace after a setup script (root only)."""
    if not _can_mount(tmp_path):
        pytest.skip("needs root and mount namespaces (unshare -m) to make a full or read-only disk")

    def tagger(setup: str, *args) -> subprocess.CompletedProcess:
        command = " ".join(shlex.quote(str(a)) for a in (sys.executable, "-m", "tagger", *args))
        return subprocess.run(["unshare", "-m", "sh", "-c", f"set -e; {setup}; exec {command}"],
                              capture_output=True, text=True, timeout=120)
    return tagger


def test_a_full_disk_names_the_cause(scanned, library, model_path, mounts, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    setup = (f"mount -t tmpfs -o size=256k tmpfs {full}; cp {scanned} {full}/index.db; "
             f"dd if=/dev/zero of={full}/fill bs=4k 2>/dev/null || true")
    db = full / "index.db"
    listed = mounts(setup, "query", "--db", db, "--format", "csv")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 8                      # a header and 7 tracks
    for command in (["write-tags"], ["scan", library, "--model", model_path, "--workers", "0"]):
        proc = mounts(setup, *command, "--db", db)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"Error: {db}: "), proc.stderr
        assert "no space left" in proc.stderr, proc.stderr


def test_a_read_only_mount_can_be_queried_and_refuses_writes(scanned, library, model_path, mounts,
                                                            tmp_path):
    folder = scanned.parent
    setup = f"mount --bind {folder} {folder}; mount -o remount,ro,bind {folder}"
    listed = mounts(setup, "query", "--db", scanned, "--format", "csv")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 8
    assert "Integrity: ok" in mounts(setup, "check", "--db", scanned).stdout
    for command in (["restore-tags"], ["scan", library, "--model", model_path, "--workers", "0"]):
        proc = mounts(setup, *command, "--db", scanned)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"Error: {scanned}: "), proc.stderr
        assert "read-only" in proc.stderr, proc.stderr


@pytest.fixture
def read_only_file(scanned):
    """The index file itself read-only: chmod for a user, the immutable attribute for root
    (whom a chmod does not stop)."""
    if chmod_works():
        scanned.chmod(0o444)
        yield scanned
        scanned.chmod(0o644)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(scanned)],
                                                    capture_output=True).returncode:
        pytest.skip("running as root on a file system without chattr +i: cannot make the index read-only")
    try:
        yield scanned
    finally:
        subprocess.run(["chattr", "-i", str(scanned)], check=True)


def test_a_read_only_index_stops_a_scan_before_decoding(read_only_file, library, model_path,
                                                        monkeypatch):
    def decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr("tagger.scanner.run_scan", decoding)
    os.utime(library / "a" / "one.mp3", ns=(1, 1))               # one file to classify again
    result = run("scan", library, "--db", read_only_file, "--model", model_path, "--workers", "0",
                 ok=None)
    line = one_error_line(result, f"{read_only_file}: ")
    assert "read-only" in line
    assert len(run("query", "--db", read_only_file, "--format", "csv").stdout.splitlines()) == 8


def test_recover_reads_an_index_of_an_older_schema(tmp_path):
    import sqlite_utils
    from tagger.index import _migrate_1, _migrate_2
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    conn = sqlite3.connect(old)
    db = sqlite_utils.Database(conn)
    _migrate_1(db)
    _migrate_2(db)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO tracks (id, path, size, mtime_ns, model_id, status, genre, confidence)"
                 " VALUES (1, '/m/a.mp3', 1, 2, 'm', 'ok', 'jazz', 1.0)")
    conn.execute("INSERT INTO probabilities VALUES (1, 'jazz', 1.0)")
    conn.execute("INSERT INTO tag_backups (path, fields, saved_at) VALUES ('/m/a.mp3', '{}', 'x')")
    conn.commit()
    conn.close()
    before = digest(old)
    assert "1 undo records, 1 tracks with 1 probabilities" in run("check", "--db", old, "--recover", new).stdout
    assert digest(old) == before
    with Index(new) as index:
        assert [r["path"] for r in index.tracks()] == ["/m/a.mp3"]
        assert list(index.backups()) == [("/m/a.mp3", {})]


def test_check_of_an_index_whose_table_list_is_damaged(tmp_path):
    db, new = tmp_path / "index.db", tmp_path / "new.db"
    big_index(db, 50)
    with open(db, "r+b") as f:              # page 1 holds the list of tables, after the header
        f.seek(100)
        f.write(b"\xde\xad\xbe\xef" * 4)
    one_error_line(run("query", "--db", db, ok=None), f"{db}: {DAMAGED}")
    result = run("check", "--db", db, "--recover", new, ok=None)
    assert "Readable: 0 tracks, 0 probabilities, 0 undo records" in result.stdout
    assert "nothing can be read from the index" in one_error_line(result, f"{db}: ")
    assert not new.exists()
