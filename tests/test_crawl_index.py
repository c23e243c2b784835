"""The crawl (what counts as a track) and the index (schema, upserts, locking)."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tagger.crawl import crawl
from tagger.errors import DatabaseError
from tagger.index import SCHEMA_VERSION, Index, TrackResult


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(found):
    return [os.path.relpath(c.path, start=found[0][1]) for c in found[0][0]] if found else []


def test_crawl_keeps_audio_and_skips_the_rest(tmp_path):
    for rel in ["a/1.mp3", "a/2.FLAC", "b/3.opus", "b/4.m4a", "c/5.wav", "c/6.aiff", "c/7.ogg",
                "notes.txt", "cover.jpg", ".hidden/8.mp3", "@eaDir/9.mp3", "a/.10.mp3"]:
        touch(tmp_path / rel)
    (tmp_path / "dir.mp3").mkdir()
    (tmp_path / "dangling.mp3").symlink_to(tmp_path / "missing.mp3")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    (tmp_path / "link.flac").symlink_to(tmp_path / "a" / "2.FLAC")
    found = [os.path.relpath(c.path, tmp_path) for c in crawl([tmp_path])]
    assert found == ["a/1.mp3", "a/2.FLAC", "b/3.opus", "b/4.m4a", "c/5.wav", "c/6.aiff",
                     "c/7.ogg", "link.flac"]


def test_crawl_roots_files_and_exclude(tmp_path):
    one = touch(tmp_path / "x" / "one.mp3", b"12345")
    touch(tmp_path / "x" / "live" / "two.mp3")
    touch(tmp_path / "x" / "three.wav")
    found = list(crawl([one, tmp_path / "x"], exclude=["live", "*.wav"]))
    assert [c.path for c in found] == [str(one)]          # no duplicate, excluded skipped
    assert found[0].size == 5 and found[0].mtime_ns == os.stat(one).st_mtime_ns


def test_crawl_non_utf8_names(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.mp3"
    with open(raw, "wb") as f:
        f.write(b"x")
    (found,) = crawl([tmp_path])
    assert os.fsencode(found.path) == raw


def result(path, genre="jazz", p=0.9, **kw):
    probs = {genre: p, "blues": round(1 - p, 6)} if genre else {}
    return TrackResult(path, kw.pop("size", 1), kw.pop("mtime_ns", 2), kw.pop("model_id", "m"),
                       "ok" if genre else "failed", probs, **kw)


def test_index_upsert_replaces_probabilities(tmp_path):
    with Index(tmp_path / "i.db") as ix:
        ix.store([result("/a.mp3", "jazz", 0.9)])
        ix.store([result("/a.mp3", "rock", 0.3, size=5)])
        (row,) = ix.tracks()
        assert row["genre"] == "blues" and row["probabilities"] == {"blues": 0.7, "rock": 0.3}
        assert ix.is_current("/a.mp3", 5, 2, "m") and not ix.is_current("/a.mp3", 1, 2, "m")
        assert not ix.is_current("/a.mp3", 5, 2, "other-model")
        ix.store([result("/a.mp3", None, error="broken", size=5)])
        (row,) = ix.tracks()
        assert row["genre"] is None and row["probabilities"] == {} and row["error"] == "broken"


def test_index_batch_is_atomic(tmp_path):
    with Index(tmp_path / "i.db") as ix:
        bad = result("/b.mp3")
        bad.size = None                                    # violates NOT NULL mid-batch
        with pytest.raises(sqlite3.IntegrityError):
            ix.store([result("/a.mp3"), bad])
        assert list(ix.tracks()) == []


def test_index_schema_version_and_newer_index(tmp_path):
    path = tmp_path / "i.db"
    Index(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseError, match="newer than this tagger"):
        Index(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "i.db"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(DatabaseError, match="cannot use the index"):
        Index(path)


def test_writer_lock_is_exclusive(tmp_path):
    with Index(tmp_path / "i.db") as a, Index(tmp_path / "i.db") as b:
        with a.writer_lock():
            with pytest.raises(DatabaseError, match="another tagger command"):
                with b.writer_lock():
                    pass
        with b.writer_lock():
            pass
