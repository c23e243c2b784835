"""Uncertain tracks: a track whose top probability is below the threshold of the model that
scored it (ModelSettings.uncertain_below, kept per model in the index) is marked by query and
show, counted by scan, and left alone by write-tags unless asked. Probabilities stay as they are."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from conftest import make_checkpoint, run, write_track
from tagfixtures import genres_of
from tagger.genres import GENRES
from tagger.index import SCHEMA_VERSION, Index, TrackResult, _migrate_1, _migrate_2, _migrate_3

MODEL_ID = "0123456789ab"
PROBS = {g: 0.1 / 8 for g in GENRES} | {"hiphop": 0.6, "jazz": 0.3}


def query_json(db: Path, *args) -> list[dict]:
    return json.loads(run("query", "--db", db, "--format", "json", *args).stdout)


@pytest.fixture(scope="module")
def unsure_model(tmp_path_factory) -> Path:
    """A random model's top probability is far below 0.99: every track is uncertain."""
    return make_checkpoint(tmp_path_factory.mktemp("unsure") / "unsure.pt", uncertain_below=0.99)


def test_each_track_takes_the_threshold_of_the_model_that_scored_it(library, model_path,
                                                                     unsure_model, tmp_path):
    db = tmp_path / "index.db"
    first = run("scan", library / "a", library / "b", "--db", db, "--model", unsure_model,
                "--workers", "0")
    assert "4 classified, 0 unchanged, 0 failed, 0 silent." in first.stdout
    assert "4 uncertain (top genre below 99%). List them with: tagger query --uncertain" \
        in first.stdout
    assert "(uncertain)       4" in first.stdout          # in place of genres in the table
    second = run("scan", library / "c", "--db", db, "--model", model_path, "--workers", "0")
    assert "3 classified" in second.stdout and "uncertain" not in second.stdout
    rows = query_json(db)
    assert {Path(r["path"]).parent.name: r["uncertain"] for r in rows} == {
        "a": True, "b": True, "c": False}
    for row in rows:                          # the probabilities are stored as they are
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["confidence"] == max(row["probabilities"].values()) < 0.99
    unsure = query_json(db, "--uncertain")
    assert sorted(Path(r["path"]).name for r in unsure) == [
        "four.opus", "one.mp3", "three.ogg", "two.flac"]
    top = rows[0]["genre"]
    by_genre = query_json(db, "--genre", top)
    assert [r["path"] for r in by_genre if r["uncertain"]] == [
        r["path"] for r in by_genre if Path(r["path"]).parent.name != "c"]
    assert query_json(db, "--genre", top, "--uncertain") == [r for r in by_genre if r["uncertain"]]
    csv_lines = run("query", "--db", db, "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "path,genre,confidence,model_id,error," + ",".join(GENRES) + ",uncertain,match"
    assert sorted(line.split(",")[-2] for line in csv_lines[1:]) == ["false"] * 3 + ["true"] * 4
    m3u = run("query", "--db", db, "--uncertain", "--format", "m3u").stdout.splitlines()
    assert m3u[2::2] == [r["path"] for r in unsure]
    table = run("query", "--db", db, "--uncertain").stdout
    assert table.count("(uncertain)") == 4 and "five.m4a" not in table
    assert "(uncertain)" not in run("query", "--db", db, "--failed").stdout


def test_query_uncertain_and_failed_are_one_or_the_other(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    run("scan", library / "a", "--db", db, "--model", model_path, "--workers", "0")
    result = run("query", "--db", db, "--uncertain", "--failed", ok=2)      # a usage error
    assert "--failed and --uncertain exclude each other" in result.stderr


def test_show_marks_an_uncertain_track(library, model_path, unsure_model):
    track = library / "a" / "one.mp3"
    assert "  uncertain: " in run("show", track, "--model", unsure_model).stdout
    assert "  uncertain: " not in run("show", track, "--model", model_path).stdout
    row, = json.loads(run("show", track, "--model", unsure_model, "--format", "json").stdout)
    assert row["uncertain"] is True
    row, = json.loads(run("show", track, "--model", model_path, "--format", "json").stdout)
    assert row["uncertain"] is False


def scanned_files(tmp_path: Path, threshold: float | None) -> tuple[Path, list[Path]]:
    """Two files indexed as a scan of a model whose threshold is `threshold` (None: an index
    that does not know the model's threshold) would index them: top genre Hip-Hop at 0.6."""
    files = [write_track(tmp_path / "Music" / name, seconds=1.0) for name in ("a.flac", "b.mp3")]
    db = tmp_path / "index.db"
    with Index(db) as index:
        if threshold is not None:
            index.note_model(MODEL_ID, threshold)
        index.store([TrackResult(str(p), p.stat().st_size, p.stat().st_mtime_ns, MODEL_ID, "ok",
                                 dict(PROBS)) for p in files])
    return db, files


def test_write_tags_leaves_uncertain_tracks_unless_asked(tmp_path):
    db, files = scanned_files(tmp_path, 0.7)
    before = [f.read_bytes() for f in files]
    dry = run("write-tags", "--db", db, "--dry-run")
    assert "Would write genres to 0 files: 0 unchanged, 0 below 50% confidence, 2 uncertain, " \
           "not written, 0 skipped." in dry.stdout
    result = run("write-tags", "--db", db)
    assert "Wrote genres to 0 files: 0 unchanged, 0 below 50% confidence, 2 uncertain, " \
           "not written, 0 skipped." in result.stdout
    assert [f.read_bytes() for f in files] == before
    assert "--include-uncert" in run("write-tags", "--help").stdout   # rich cuts it at 80 columns
    result = run("write-tags", "--db", db, "--include-uncertain")
    assert "Wrote genres to 2 files" in result.stdout
    assert [genres_of(f) for f in files] == [["Hip-Hop"], ["Hip-Hop"]]


def test_a_track_tagged_before_it_became_uncertain_keeps_its_tags(tmp_path):
    db, files = scanned_files(tmp_path, 0.5)        # 0.6 is not below 0.5: written
    run("write-tags", "--db", db)
    written = [f.read_bytes() for f in files]
    with Index(db) as index:                        # the model's threshold as a rescan with a
        index.note_model(MODEL_ID, 0.65)            # recalibrated model would give it
    result = run("write-tags", "--db", db, "--overwrite", "--probabilities")
    assert "2 uncertain, not written" in result.stdout
    assert [f.read_bytes() for f in files] == written
    assert genres_of(files[0]) == ["Hip-Hop"]


def test_an_index_without_the_models_threshold_never_calls_a_track_uncertain(tmp_path):
    db, _ = scanned_files(tmp_path, None)
    assert [r["uncertain"] for r in query_json(db)] == [False, False]
    assert query_json(db, "--uncertain") == []
    assert "Wrote genres to 2 files" in run("write-tags", "--db", db).stdout


def version_3_index(path: Path) -> None:
    """An index as tagger wrote it before the models table: a track and an undo record."""
    conn = sqlite3.connect(path)
    db = sqlite_utils.Database(conn)
    for migrate in (_migrate_1, _migrate_2, _migrate_3):
        migrate(db)
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO tracks (id, path, size, mtime_ns, model_id, status, genre, confidence)"
                 " VALUES (1, '/m/a.mp3', 1, 2, 'm', 'ok', 'jazz', 0.3)")
    conn.executemany("INSERT INTO probabilities VALUES (1, ?, ?)",
                     [("jazz", 0.3), ("blues", 0.25), ("rock", 0.25), ("pop", 0.2)])
    conn.execute("INSERT INTO tag_backups (path, real_path, fields, saved_at)"
                 " VALUES ('/m/a.mp3', '/m/a.mp3', '{}', 'x')")
    conn.commit()
    conn.close()


def test_a_version_3_index_is_read_as_it_is_and_migrates_keeping_everything(tmp_path):
    path = tmp_path / "old.db"
    version_3_index(path)
    before = query_json(path)                       # read-only: not migrated
    assert before[0]["uncertain"] is False and before[0]["probabilities"]["jazz"] == 0.3
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3
    with Index(path) as index:
        assert index.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert index.db["models"].count == 0
        assert list(index.backups()) == [("/m/a.mp3", {})]
        assert index.file_version("/m/a.mp3") == (1, 2)
    assert query_json(path) == before


def test_a_recovered_index_keeps_the_models_thresholds(tmp_path):
    db, _ = scanned_files(tmp_path, 0.7)
    new = tmp_path / "new.db"
    run("check", "--db", db, "--recover", new)
    assert [r["uncertain"] for r in query_json(new)] == [True, True]
