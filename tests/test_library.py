"""The index follows the library: deleted files are pruned, moved and renamed files keep their
prediction and undo record, a bare touch is no change, and one file is one row whichever path
(symlink, Unicode form) reaches it. Real files, real scans with the small test model."""

from __future__ import annotations

import os
import shutil
import sqlite3
import unicodedata
from pathlib import Path

import pytest
import sqlite_utils

import tagger
from conftest import run, write_track
from tagger.index import MIGRATIONS
from tagger.tags import read as read_tags

ALL = ["a/one.mp3", "a/two.flac", "b/four.opus", "b/three.ogg", "c/five.m4a", "c/seven.aiff",
       "c/six.wav"]
TAG_ALL = tagger.TagOptions(min_confidence=0.0, include_uncertain=True, overwrite=True)


def indexed(db: Path) -> dict[str, dict]:
    with tagger.Index(db, read_only=True) as index:
        return {r["path"]: r for r in index.tracks()}


def scan_cli(model_path, db, *args):
    return run("scan", *args, "--db", db, "--model", model_path, "--workers", "0")


def test_scan_prunes_deleted_files_unless_no_prune(library, model_path, tmp_path):
    db, one = tmp_path / "i.db", library / "a" / "one.mp3"
    scan_cli(model_path, db, library)
    one.unlink()
    kept = scan_cli(model_path, db, library, "--no-prune")
    assert "removed" not in kept.stdout and str(one) in indexed(db)
    pruned = scan_cli(model_path, db, library)
    assert "1 removed: no longer on disk" in pruned.stdout
    assert sorted(indexed(db)) == [str(library / p) for p in ALL[1:]]


def test_scan_does_not_prune_a_root_where_it_found_nothing(library, model_path, tmp_path):
    """A folder that is suddenly empty is more likely a disk not mounted than a deleted
    library: its rows stay until `tagger prune` is asked for."""
    db = tmp_path / "i.db"
    tagger.scan([library], db, model_path, workers=0)
    library.rename(tmp_path / "unplugged")
    library.mkdir()
    result = scan_cli(model_path, db, library)
    assert f"Not pruned: no audio files found under {library}" in result.stdout
    assert len(indexed(db)) == 7
    assert "Removed 7 tracks: no longer on disk." in run("prune", library, "--db", db).stdout


def test_prune_command_and_api_keep_undo_records(library, model_path, tmp_path):
    db, one, six = tmp_path / "i.db", library / "a" / "one.mp3", library / "c" / "six.wav"
    tagger.scan([library], db, model_path, workers=0)
    assert tagger.write_tags([one], db, options=TAG_ALL).written == 1
    one.unlink()
    six.unlink()
    dry = run("prune", "--dry-run", "--db", db)
    assert f"{one}\n" in dry.stdout and f"{six}\n" in dry.stdout
    assert "Would remove 2 tracks: no longer on disk." in dry.stdout and len(indexed(db)) == 7
    assert "Removed 1 tracks: no longer on disk." in run("prune", library / "c", "--db", db).stdout
    assert str(six) not in indexed(db) and str(one) in indexed(db)
    result = run("prune", "--db", db)
    assert "Removed 1 tracks: no longer on disk." in result.stdout
    assert "Kept 1 undo record" in result.stdout
    with tagger.Index(db) as index:                 # the undo record of a file that is gone
        assert [p for p, _ in index.backups()] == [str(one)]
    assert tagger.prune([], db).removed == [] and len(indexed(db)) == 5


def test_a_moved_file_keeps_its_prediction_and_undo_record(library, model_path, tmp_path):
    db, flac = tmp_path / "i.db", library / "a" / "two.flac"
    tagger.scan([library], db, model_path, workers=0)
    assert tagger.write_tags([flac], db, options=TAG_ALL).written == 1
    before = indexed(db)[str(flac)]
    moved = library / "b" / "renamed.flac"
    os.rename(flac, moved)
    copy = library / "c" / "copy.wav"
    shutil.copy2(library / "c" / "six.wav", copy)             # a copy is a new file
    stats = tagger.scan([library], db, model_path, workers=0)
    assert (stats.classified, stats.moved, stats.removed, stats.unchanged) == (1, 1, 0, 6)
    rows = indexed(db)
    assert str(flac) not in rows and len(rows) == 8
    assert rows[str(moved)]["probabilities"] == before["probabilities"]
    assert rows[str(moved)]["model_id"] == before["model_id"]
    restored = tagger.restore_tags([library], db)              # the undo record followed
    assert restored.written == 1 and read_tags(str(moved)).genres == []
    os.rename(moved, flac)
    assert "1 moved or renamed: kept their predictions" in scan_cli(model_path, db, library).stdout


def test_a_bare_touch_is_no_change(library, model_path, tmp_path):
    db, one, six = tmp_path / "i.db", library / "a" / "one.mp3", library / "c" / "six.wav"
    tagger.scan([library], db, model_path, workers=0)
    for path in (one, six):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    # write-tags before any rescan: the content is what was classified
    written = run("write-tags", one, "--db", db, "--overwrite", "--min-confidence", "0",
                  "--include-uncertain")
    assert "Wrote genres to 1 files" in written.stdout and "changed since" not in written.stdout
    stats = tagger.scan([library], db, model_path, workers=0)
    assert (stats.classified, stats.unchanged) == (0, 7)
    assert indexed(db)[str(six)]["mtime_ns"] == six.stat().st_mtime_ns
    # the same size with other bytes is a change
    data = bytearray(six.read_bytes())
    data[len(data) // 2] ^= 0xFF
    six.write_bytes(bytes(data))
    stats = tagger.scan([library], db, model_path, workers=0)
    assert (stats.classified, stats.unchanged) == (1, 6)


def test_one_file_is_one_row_through_symlinks(library, model_path, tmp_path):
    db, link = tmp_path / "i.db", tmp_path / "link"
    link.symlink_to(library)
    tagger.scan([library], db, model_path, workers=0)
    stats = tagger.scan([link], db, model_path, workers=0)
    assert (stats.classified, stats.unchanged) == (0, 7)
    (tmp_path / "alias.flac").symlink_to(library / "a" / "two.flac")
    assert tagger.scan([tmp_path / "alias.flac"], db, model_path, workers=0).unchanged == 1
    assert sorted(indexed(db)) == [str(library / p) for p in ALL]
    # a row stored through the symlink by an older tagger becomes the file's one row
    real = indexed(db)[str(library / "a" / "one.mp3")]
    with tagger.Index(db) as index:
        index.db.execute("UPDATE tracks SET path = ? WHERE path = ?",
                         [str(link / "a" / "one.mp3"), real["path"]])
        index.db.conn.commit()
    stats = tagger.scan([link], db, model_path, workers=0)
    assert (stats.classified, stats.unchanged) == (0, 7)
    assert sorted(indexed(db)) == [str(library / p) for p in ALL]


def test_two_unicode_forms_of_one_file_are_one_row(model_path, tmp_path):
    """macOS gives one file under its NFC and NFD names; here a hard link stands for that.
    Two files whose names differ only in form (Linux keeps both) stay two rows."""
    db, same, two = tmp_path / "i.db", tmp_path / "same", tmp_path / "two"
    nfc, nfd = unicodedata.normalize("NFC", "café.wav"), unicodedata.normalize("NFD", "café.wav")
    write_track(same / nfd, seconds=1.5)
    os.link(same / nfd, same / nfc)
    write_track(two / nfd, seconds=1.5)
    write_track(two / nfc, seconds=1.5, kind="noise")
    tagger.scan([same, two], db, model_path, workers=0)
    assert sorted(indexed(db)) == sorted([str(same / nfc), str(two / nfc), str(two / nfd)])


def test_an_index_of_version_4_is_fingerprinted_as_files_change(library, model_path, tmp_path):
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    tagger.scan([library], new, model_path, workers=0)
    conn = sqlite3.connect(old)
    for migrate in MIGRATIONS[:4]:
        migrate(sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 4")
    conn.execute("ATTACH DATABASE ? AS new", [str(new)])
    columns = "id, path, size, mtime_ns, model_id, status, genre, confidence, error, duration, scanned_at"
    conn.execute(f"INSERT INTO tracks ({columns}) SELECT {columns} FROM new.tracks")
    conn.execute("INSERT INTO probabilities SELECT * FROM new.probabilities")
    conn.commit()
    conn.close()
    stats = tagger.scan([library], old, model_path, workers=0)        # migrates; stays instant
    assert (stats.classified, stats.unchanged) == (0, 7)
    with tagger.Index(old) as index:
        assert index.db.execute("SELECT count(*) FROM tracks WHERE fingerprint IS NULL"
                                ).fetchone()[0] == 7                    # none read
    six = library / "c" / "six.wav"
    os.utime(six, ns=(1, 1))            # an old row cannot tell a touch: classified again
    assert tagger.scan([library], old, model_path, workers=0).classified == 1
    with tagger.Index(old) as index:
        assert index.db.execute("SELECT fingerprint FROM tracks WHERE path = ?",
                                [str(six)]).fetchone()[0] is not None


def test_a_copy_never_takes_the_row_of_a_file_outside_the_scanned_folders(library, model_path,
                                                                          tmp_path):
    """A disk that is away (renamed here) is not a move: a copy of one of its files scanned
    elsewhere is a file of its own, and the undo record stays with the original."""
    db, nas, local = tmp_path / "i.db", tmp_path / "nas", tmp_path / "local"
    shutil.copytree(library / "a", nas)
    tagger.scan([nas], db, model_path, workers=0)
    tagger.write_tags([nas], db, options=TAG_ALL)
    local.mkdir()
    shutil.copy2(nas / "one.mp3", local / "one.mp3")
    nas.rename(tmp_path / "unmounted")
    stats = tagger.scan([local], db, model_path, workers=0)
    assert (stats.moved, stats.classified) == (0, 1)
    (tmp_path / "unmounted").rename(nas)
    with tagger.Index(db, read_only=True) as index:
        assert {path for path, _ in index.backups()} == {str(nas / "one.mp3"), str(nas / "two.flac")}
    assert tagger.restore_tags([nas], db).written == 2


def test_a_scan_keeps_the_rows_under_an_empty_mount_point_inside_its_folder(library, model_path,
                                                                            tmp_path):
    db, away = tmp_path / "i.db", tmp_path / "away"
    tagger.scan([library], db, model_path, workers=0)
    (library / "b").rename(away)          # the disk mounted at library/b is not mounted:
    (library / "b").mkdir()               # its mount point is an empty folder
    stats = tagger.scan([library], db, model_path, workers=0)
    assert stats.removed == 0 and len(indexed(db)) == 7
    (library / "b").rmdir()               # the folder itself deleted: its files are gone
    assert tagger.scan([library], db, model_path, workers=0).removed == 2


def test_a_prune_dry_run_only_reads(library, model_path, tmp_path):
    db = tmp_path / "i.db"
    tagger.scan([library], db, model_path, workers=0)
    (library / "a" / "one.mp3").unlink()
    with tagger.Index(db) as index, index.writer_lock():       # a scan is writing meanwhile
        assert tagger.prune([], db, dry_run=True).removed == [str(library / "a" / "one.mp3")]
        with pytest.raises(tagger.DatabaseError):
            tagger.prune([], db)
    with pytest.raises(tagger.UserError, match="--sort Path"):
        list(tagger.Index(db, read_only=True).tracks(sort="Path"))
