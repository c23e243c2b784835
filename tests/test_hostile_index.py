"""A hostile user's setups around the index and the undo records: a file moved away and another
put in its place (or a backup copy), a write killed just before its rename, write-tags and
restore-tags by a folder reached through a symlink, an index that is a device, has two hard
links or is another program's SQLite file, a recovery below a file, a read-only disk with a
pending WAL, and a file name that an M3U playlist cannot hold."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tagfixtures import genres_of, make_fixtures
from conftest import run
from tagger.index import Index, TrackResult


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    return make_fixtures(tmp_path_factory.mktemp("hostile-fixtures"))


def as_scanned(db: Path, *paths: Path) -> None:
    """What a scan stores for these files, without the model."""
    with Index(db) as index:
        index.store([TrackResult(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns, "m", "ok",
                                 {"hiphop": 0.7, "jazz": 0.3}) for p in paths])


def test_restore_never_puts_a_moved_files_genre_into_the_file_now_at_its_path(originals, tmp_path):
    music, db = tmp_path / "Music", tmp_path / "index.db"
    music.mkdir()
    a, b = music / "a.mp3", music / "b.mp3"
    shutil.copyfile(originals["v23.mp3"], a)          # genre AC/DC
    shutil.copyfile(originals["v1only.mp3"], b)       # genre Rock (ID3v1)
    as_scanned(db, a)
    run("write-tags", "--db", db, "--overwrite")
    assert genres_of(a) == ["Hip-Hop"]
    a.rename(music / "moved.mp3")                     # the user reorganises the folder
    b.rename(a)
    result = run("restore-tags", "--db", db)
    assert "moved or replaced" in result.stdout, result.stdout
    assert genres_of(a) == genres_of(originals["v1only.mp3"])   # b's own genre, untouched
    # a scan of the file now there, then write-tags: its own genre must not be lost either
    as_scanned(db, a)
    result = run("write-tags", "--db", db, "--overwrite")
    assert "moved or replaced" in result.stdout, result.stdout
    assert genres_of(a) == genres_of(originals["v1only.mp3"])
    (music / "moved.mp3").rename(a.with_name("x.mp3"))
    a.rename(b)
    a.with_name("x.mp3").rename(a)                    # moved back: its record still restores it
    run("restore-tags", "--db", db)
    assert genres_of(a) == genres_of(originals["v23.mp3"])


def test_restore_tags_by_the_real_folder_of_records_saved_through_a_symlink(originals, tmp_path):
    real, db = tmp_path / "real", tmp_path / "index.db"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    shutil.copyfile(originals["picture.flac"], real / "p.flac")
    as_scanned(db, tmp_path / "link" / "p.flac")
    run("write-tags", tmp_path / "link", "--db", db, "--overwrite")
    for root in (real, real / "p.flac", tmp_path / "link"):
        assert "Would restore 1 files" in run("restore-tags", root, "--db", db, "--dry-run").stdout, root
    run("restore-tags", real, "--db", db)
    assert genres_of(real / "p.flac") == genres_of(originals["picture.flac"])


@pytest.mark.parametrize("command", [["query"], ["write-tags"], ["restore-tags"], ["check"]])
def test_an_index_that_is_a_device_is_refused(command, tmp_path):
    result = run(*command, "--db", os.devnull, ok=1)
    assert result.stderr.startswith(f"Error: {os.devnull}: "), result.stderr
    assert "not a regular file" in result.stderr, result.stderr
    assert not os.path.exists(f"{os.devnull}-journal") and not os.path.exists(f"{os.devnull}-wal")


def test_recover_into_a_path_below_a_file_is_one_error_line(originals, tmp_path):
    db = tmp_path / "index.db"
    as_scanned(db, originals["v23.mp3"])
    result = run("check", "--db", db, "--recover", db / "new.db", ok=1)
    assert result.stderr.startswith(f"Error: {db / 'new.db'}: {db} is a file"), result.stderr
    assert result.stderr.count("\n") == 1


def test_a_read_only_disk_with_a_pending_wal_shows_its_rows(originals, tmp_path):
    """A scan killed before SQLite checkpointed its WAL, then the disk read-only (a snapshot,
    a backup medium) without the -shm file: the rows in the WAL are part of the index."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and mount namespaces for a read-only disk")
    folder, db = tmp_path / "ro", tmp_path / "ro" / "index.db"
    folder.mkdir()
    as_scanned(db, originals["v23.mp3"])
    code = ("import os, sys; from tagger.index import Index, TrackResult; i = Index(sys.argv[1]); "
            "i.db.execute('PRAGMA wal_autocheckpoint = 0'); "
            "i.store([TrackResult('/m/in-the-wal.mp3', 1, 1, 'm', 'ok', {'jazz': 1.0})]); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)
    assert os.path.getsize(f"{db}-wal") > 32
    Path(f"{db}-shm").unlink()
    tagger = f"{sys.executable} -m tagger"
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           f"set -e; mount --bind {folder} {folder}; mount -o remount,ro,bind {folder};"
                           f" {tagger} query --db {db} --format m3u; {tagger} check --db {db}"],
                          capture_output=True, text=True, timeout=120)
    if "mount" in proc.stderr and proc.returncode:
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    assert "/m/in-the-wal.mp3" in proc.stdout, proc.stdout
    assert "Readable: 2 tracks" in proc.stdout, proc.stdout
    assert sqlite3.connect(db).execute("SELECT count(*) FROM tracks").fetchone()[0] == 2


@pytest.mark.parametrize("user_version", [0, 1, 70])      # apps number their schemas too
@pytest.mark.parametrize("command", [["write-tags"], ["restore-tags"], ["query"], ["check"]])
def test_another_programs_database_is_never_written_to(command, user_version, tmp_path):
    other = tmp_path / "places.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE bookmarks (url TEXT)")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    result = run(*command, "--db", other, ok=None)
    assert other.read_bytes() == before, result.output       # its journal mode too
    assert not Path(f"{other}-wal").exists()
    assert result.exit_code == 1 and "not a tagger index" in result.stderr, result.output


def test_check_of_another_programs_database_says_so(tmp_path):
    other = tmp_path / "places.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE bookmarks (url TEXT)")
    conn.commit()
    conn.close()
    result = run("check", "--db", other, "--recover", tmp_path / "new.db", ok=1)
    assert result.stderr.startswith(f"Error: {other}: not a tagger index"), result.stderr
    assert not (tmp_path / "new.db").exists()


def test_write_tags_by_a_symlink_to_a_folder_indexed_by_its_real_path(originals, tmp_path):
    real, db = tmp_path / "real", tmp_path / "index.db"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    shutil.copyfile(originals["picture.flac"], real / "p.flac")
    as_scanned(db, real / "p.flac")            # a scan of the real folder
    result = run("write-tags", tmp_path / "link", "--db", db, "--overwrite")
    assert "Wrote genres to 1 files" in result.stdout, result.output
    assert genres_of(real / "p.flac") == ["Hip-Hop"]


def test_an_index_with_two_hard_links_is_not_written_through_either(tmp_path):
    """SQLite keeps the -wal journal beside the name it opened, so two names for one index
    file mean two journals (a killed scan's rows replayed over later ones), and tagger's lock
    file beside each name would let two writers run at once."""
    real = tmp_path / "index.db"
    as_scanned(real)
    os.link(real, tmp_path / "second.db")
    for name in ("index.db", "second.db"):
        result = run("restore-tags", "--db", tmp_path / name, ok=1)
        assert result.stderr.startswith(f"Error: {tmp_path / name}: "), result.stderr
        assert "hard link" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert run("query", "--db", tmp_path / "second.db", "--format", "csv").stdout.startswith("path,")


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


def _killed(*args):
    raise Killed


@pytest.mark.parametrize("first_write", [True, False])
def test_a_write_killed_just_before_its_rename_leaves_the_file_restorable(originals, tmp_path,
                                                                          monkeypatch, first_write):
    """The record notes the copy's size and mtime just before the rename; a kill between the
    two leaves the original in place, which is still the record's file, not another one."""
    db, path = tmp_path / "index.db", tmp_path / "a.mp3"
    shutil.copyfile(originals["v23.mp3"], path)
    as_scanned(db, path)
    if not first_write:
        run("write-tags", "--db", db, "--overwrite")
        as_scanned(db, path)
    with monkeypatch.context() as patch:
        patch.setattr("tagger.tags.os.replace", _killed)
        with pytest.raises(Killed):
            run("write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.1")
    result = run("write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.1")
    assert "Wrote genres to 1 files" in result.stdout, result.stdout
    assert "Restored 1 files" in run("restore-tags", "--db", db).stdout
    assert genres_of(path) == genres_of(originals["v23.mp3"])


def test_an_m3u_never_splits_a_file_name_with_a_line_break(tmp_path):
    """A playlist line is a path: a name with a line break would become two entries, the
    second one a relative path that a player resolves beside the playlist (another file)."""
    db = tmp_path / "index.db"
    with Index(db) as index:
        index.store([TrackResult(p, 1, 1, "m", "ok", {"jazz": 1.0})
                     for p in ("/m/new\nline.mp3", "/m/cr\rname.mp3", "/m/plain.mp3")])
    result = run("query", "--db", db, "--format", "m3u")
    assert result.stdout == "#EXTM3U\n#EXTINF:-1,plain\n/m/plain.mp3\n", result.stdout
    assert "2 files" in result.stderr and "line break" in result.stderr, result.stderr
    as_scanned(tmp_path / "plain.db", tmp_path / "index.db")
    result = run("query", "--db", tmp_path / "plain.db", "--format", "m3u")
    assert result.stdout.count("\n") == 3 and result.stderr == "", result.output


def test_a_file_put_back_from_a_backup_copy_is_not_another_file(originals, tmp_path):
    """write-tags, then the user copies the untouched original back over the file (a new
    inode, a new mtime): it holds what the record holds, so restore has nothing to do and
    write-tags may write it again."""
    db, path = tmp_path / "index.db", tmp_path / "a.mp3"
    shutil.copyfile(originals["v23.mp3"], path)
    as_scanned(db, path)
    run("write-tags", "--db", db, "--overwrite")
    path.unlink()
    shutil.copyfile(originals["v23.mp3"], path)
    assert "Restored 0 files: 1 unchanged, 0 skipped." in run("restore-tags", "--db", db).stdout
    as_scanned(db, path)
    assert "Wrote genres to 1 files" in run("write-tags", "--db", db, "--overwrite").stdout
    run("restore-tags", "--db", db)
    assert genres_of(path) == genres_of(originals["v23.mp3"])
