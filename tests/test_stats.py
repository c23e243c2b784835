"""`tagger stats` and Index.stats: what the index holds, by state, genre and model; the
tracks another model scored and those whose files are gone."""

from __future__ import annotations

import json

import tagger
from conftest import run, write_track
from tagger.modelfile import file_model_id


def scanned(library, model_path, tmp_path):
    write_track(library / "d" / "quiet.wav", kind="silence")
    (library / "d" / "broken.mp3").write_bytes(b"not audio at all" * 100)
    db = tmp_path / "index.db"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    (library / "a" / "one.mp3").unlink()
    return db


def test_stats_counts_states_genres_models_and_missing_files(library, model_path, tmp_path):
    db = scanned(library, model_path, tmp_path)
    model_id = file_model_id(model_path)
    stats = json.loads(run("stats", "--db", db, "--model", model_path, "--format", "json").stdout)
    assert {k: stats[k] for k in ("tracks", "classified", "uncertain", "failed", "silent", "stale",
                                  "missing")} == {"tracks": 9, "classified": 7, "uncertain": 0,
                                                  "failed": 1, "silent": 1, "stale": 0, "missing": 1}
    assert sum(stats["genres"].values()) == 7 and stats["models"] == {model_id: 9}
    assert stats["model_id"] == model_id and stats["path"] == str(db)
    assert stats["size"] >= db.stat().st_size > 0
    # against the shipped default model, every track is stale (the next scan redoes them)
    assert json.loads(run("stats", "--db", db, "--format", "json").stdout)["stale"] == 9

    table = run("stats", "--db", db, "--model", model_path).stdout
    assert f"Index: {db} (" in table and "9 tracks: 7 classified (0 uncertain), 1 failed, 1 silent" in table
    assert "Missing on disk: 1" in table and "Stale" not in table
    assert "█" in table and model_id in table


def test_index_stats_from_python(library, model_path, tmp_path):
    db = scanned(library, model_path, tmp_path)
    with tagger.Index(db, read_only=True) as index:
        stats = index.stats("another")
    assert isinstance(stats, tagger.IndexStats)
    assert (stats.tracks, stats.stale, stats.missing) == (9, 9, 1)


def test_stats_of_no_index_is_one_error_line(tmp_path):
    result = run("stats", "--db", tmp_path / "none.db", ok=1)
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1


def test_stats_without_a_readable_model_still_counts(library, model_path, tmp_path, monkeypatch):
    db = scanned(library, model_path, tmp_path)
    monkeypatch.setenv("TAGGER_MODEL", str(tmp_path / "nowhere.pt"))
    result = run("stats", "--db", db, "--format", "json")
    assert json.loads(result.stdout)["tracks"] == 9 and json.loads(result.stdout)["stale"] == 0
    assert result.stderr.startswith("Stale tracks not counted: ") and "nowhere.pt" in result.stderr
