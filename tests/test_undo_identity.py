"""Undo records and the writer lock belong to files, not to the paths that reach them: a file
seen through a symlink or a hard link gets back its own original genre, once."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils

from tagfixtures import genres_of, make_fixtures, snapshot
from conftest import run
from tagger import tags
from tagger.errors import DatabaseError
from tagger.index import SCHEMA_VERSION, Index, _migrate_1, _migrate_2


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    return make_fixtures(tmp_path_factory.mktemp("identity-fixtures"))


@pytest.fixture
def two_paths(originals, tmp_path) -> dict[str, Path]:
    """Music/ holds three tagged files; other/ reaches two of them again: a symlink to one,
    a hard link to another. Each path, with the fixture its file started as."""
    music, other = tmp_path / "Music", tmp_path / "other"
    music.mkdir()
    other.mkdir()
    for name in ("picture.flac", "cover.m4a", "v23.mp3"):
        shutil.copyfile(originals[name], music / name)
    (other / "link.flac").symlink_to(music / "picture.flac")
    os.link(music / "cover.m4a", other / "hard.m4a")
    return {str(music / "picture.flac"): originals["picture.flac"],
            str(music / "cover.m4a"): originals["cover.m4a"],
            str(music / "v23.mp3"): originals["v23.mp3"],
            str(other / "link.flac"): originals["picture.flac"],
            str(other / "hard.m4a"): originals["cover.m4a"]}


def test_two_paths_to_one_file_restore_its_true_original_once(two_paths, model_path, tmp_path):
    music, other, db = tmp_path / "Music", tmp_path / "other", tmp_path / "index.db"

    def scan():
        run("scan", music, other, "--db", db, "--model", model_path, "--workers", "0")

    scan()
    run("write-tags", "--db", db, "--overwrite", "--min-confidence", "0")
    scan()                                   # the files tagger changed are classified again
    run("write-tags", other, "--db", db, "--overwrite", "--min-confidence", "0", "--probabilities")
    result = run("restore-tags", "--db", db)
    # four files: the symlink is the file it points to; the hard link split off at the first write
    assert "Restored 4 files: 0 unchanged, 0 skipped." in result.stdout
    for path, original in two_paths.items():
        assert genres_of(Path(path)) == genres_of(original), path
        assert snapshot(Path(path)) == snapshot(original), path
    assert os.path.islink(other / "link.flac")
    assert "Restored 0 files" in run("restore-tags", "--db", db).stdout


def test_an_undo_record_follows_its_file_and_is_never_replaced(two_paths, tmp_path):
    music, other = tmp_path / "Music", tmp_path / "other"
    with Index(tmp_path / "i.db") as index:
        for path in (music / "picture.flac", other / "hard.m4a"):
            index.save_backup(str(path), tags.read(str(path)).backup())
        record = index.record_id(str(music / "picture.flac"))      # as write-tags does it:
        new = tags.write_fields(str(music / "picture.flac"), [("GENRE", "Rock")], custom_too=False,
                                before_replace=lambda st: index.note_written(
                                    str(music / "picture.flac"), (st.st_size, st.st_mtime_ns)))
        index.note_identity(record, new)        # the new inode, once the rename is done
        # through the symlink: the same file, whose record is kept as it was
        index.save_backup(str(other / "link.flac"), tags.read(str(other / "link.flac")).backup())
        assert index.written_version(str(other / "link.flac")) == index.written_version(
            str(music / "picture.flac")) is not None
        # the hard link's twin was never written, so it has a record of its own to save
        index.save_backup(str(music / "cover.m4a"), tags.read(str(music / "cover.m4a")).backup())
        saved = {p: [v for k, v in f["fields"]] for p, f in index.backups()}
    assert saved == {str(music / "picture.flac"): ["AC/DC"], str(other / "hard.m4a"): ["Jazz"],
                     str(music / "cover.m4a"): ["Jazz"]}


def test_a_version_2_index_keeps_its_records_and_the_first_one_wins(two_paths, tmp_path):
    """An index written by an older tagger may hold two records for one file (the second,
    through a symlink, holding tagger's own genre): the first one saved is the original."""
    music, other, path = tmp_path / "Music", tmp_path / "other", tmp_path / "old.db"
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    _migrate_1(db)
    _migrate_2(db)
    conn.execute("PRAGMA user_version = 2")
    original = tags.read(str(music / "picture.flac")).backup()
    for p, fields in ((music / "picture.flac", original), (music / "cover.m4a", tags.read(str(music / "cover.m4a")).backup())):
        conn.execute("INSERT INTO tag_backups (path, fields, saved_at) VALUES (?, ?, '2024-01-01')",
                     [str(p), json.dumps(fields)])
    conn.commit()
    tags.write_fields(str(music / "picture.flac"), [("GENRE", "Rock")], custom_too=False)
    conn.execute("INSERT INTO tag_backups (path, fields, saved_at) VALUES (?, ?, '2024-01-02')",
                 [str(other / "link.flac"), json.dumps(tags.read(str(music / "picture.flac")).backup())])
    conn.commit()
    conn.close()
    with Index(path) as index:
        assert index.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert sorted(p for p, _ in index.backups()) == [str(music / "cover.m4a"),
                                                         str(music / "picture.flac")]
    # these records lack the size and date of the file tagger wrote, which tells whether
    # another program changed it since: only --force restores it
    assert "changed since tagger wrote it: 1" in run("restore-tags", "--db", path).stdout
    result = run("restore-tags", "--db", path, "--force")
    assert "Restored 1 files: 0 unchanged, 0 skipped." in result.stdout
    assert genres_of(other / "link.flac") == ["AC/DC"]


# what a scan stores for a changed file, without the model (which only makes the test slower)
AS_SCANNED = ("import os, sys; from tagger.index import Index, TrackResult; st = os.stat(sys.argv[2]); "
              "Index(sys.argv[1]).store([TrackResult(sys.argv[2], st.st_size, st.st_mtime_ns, 'm', "
              "'ok', {'hiphop': 0.7, 'jazz': 0.3})])")


def test_a_bind_mount_is_the_same_file(originals, tmp_path):
    """Two real paths to one file (a bind mount): the record is found by the file's device
    and inode, which follow each write."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and mount namespaces (unshare -m) for a bind mount")
    music, bound, db = tmp_path / "Music", tmp_path / "bound", tmp_path / "index.db"
    music.mkdir()
    bound.mkdir()
    shutil.copyfile(originals["picture.flac"], music / "picture.flac")
    python = shlex.quote(sys.executable)
    scan = f"{python} -c {shlex.quote(AS_SCANNED)} {db}"
    write = f"{python} -m tagger write-tags --db {db} --overwrite"
    script = (f"mount --bind {music} {bound} || exit 99; set -e; {scan} {music}/picture.flac; "
              f"{scan} {bound}/picture.flac; {write}; {scan} {bound}/picture.flac; "
              f"{write} {bound} --probabilities; {python} -m tagger restore-tags --db {db}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode == 99:
        pytest.skip("bind mounts are not permitted here")
    assert proc.returncode == 0, proc.stderr
    assert "Restored 1 files: 0 unchanged, 0 skipped." in proc.stdout
    assert snapshot(music / "picture.flac") == snapshot(originals["picture.flac"])


@pytest.mark.parametrize("alias", ["folder", "file"])
def test_the_writer_lock_holds_through_a_symlink(tmp_path, alias):
    real = tmp_path / "real" / "index.db"
    Index(real).close()
    if alias == "folder":
        (tmp_path / "alias").symlink_to(tmp_path / "real")
        other = tmp_path / "alias" / "index.db"
    else:
        other = tmp_path / "alias.db"
        other.symlink_to(real)
    with Index(other) as a, Index(real) as b, a.writer_lock():
        with pytest.raises(DatabaseError, match="another tagger command"):
            with b.writer_lock():
                pass
    result = None
    with Index(real) as index, index.writer_lock():
        result = run("restore-tags", "--db", other, ok=1)
    assert "another tagger command (scan, write-tags or restore-tags) is writing" in result.stderr
