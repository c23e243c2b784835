"""The config file (~/.config/tagger/config.toml, --config, $TAGGER_CONFIG): the user's genre
words, which write-tags writes and restore-tags takes back; defaults for model, db, workers,
min_confidence and top_k, below flags and environment variables; `tagger config`; one-line
errors. conftest points XDG_CONFIG_HOME at a fresh folder, so no test reads the user's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import make_checkpoint, run, write_track
from tagfixtures import genres_of, snapshot
from test_tags import db, lib, originals  # noqa: F401
from tagger import config
from tagger.genres import DISPLAY_NAMES, GENRES
from tagger.modelfile import file_model_id


def user_config(text: str) -> Path:
    """The default config file, as a user would write it."""
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "tagger" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def shown(*args, **kw) -> dict:
    return json.loads(run("config", "--format", "json", *args, **kw).stdout)


# -- the genre words ---------------------------------------------------------------------------

def test_write_tags_writes_the_users_words_and_restore_takes_them_back(lib, originals, db):
    user_config('[genres]\nhiphop = "Hip Hop"\njazz = ["Jazz", "Jazz Fusion"]\n')
    run("write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.25")
    words = ["Hip Hop", "Jazz", "Jazz Fusion"]
    for name in ("plain.mp3", "plain.flac", "tagged.ogg", "tagged.opus", "cover.m4a", "v23.mp3"):
        assert genres_of(lib / name) in (words, ["/".join(words)]), name    # v2.3 joins with /
    assert "Wrote genres to 0 files: 16 unchanged" in run(
        "write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.25").stdout

    run("restore-tags", "--db", db)
    for name, original in originals.items():
        assert snapshot(lib / name) == snapshot(original), name


def test_new_words_replace_old_ones_and_restore_still_gives_the_original(lib, originals, db):
    user_config('[genres]\nhiphop = ["Rap", "Hip Hop"]\n')
    run("write-tags", "--db", db, "--overwrite")
    assert genres_of(lib / "plain.flac") == ["Rap", "Hip Hop"]
    user_config('[genres]\nhiphop = "Hip-Hop/Rap"\n')
    run("write-tags", "--db", db, "--overwrite")
    assert genres_of(lib / "plain.flac") == ["Hip-Hop/Rap"]
    run("restore-tags", "--db", db)
    for name, original in originals.items():
        assert snapshot(lib / name) == snapshot(original), name


def test_without_a_config_file_the_display_names_are_written(lib, db):
    run("write-tags", "--db", db, "--overwrite")
    assert genres_of(lib / "plain.flac") == ["Hip-Hop"]
    assert shown()["config_file"]["found"] is False


def test_genre_words_for_the_plugin_and_the_report(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[genres]\nrock = ["Rock", "Rock & Roll"]\nhiphop = "  Hip Hop "\n')
    loaded = config.load(path)
    assert loaded.genre_words("rock") == ["Rock", "Rock & Roll"]
    assert loaded.genre_words("hiphop") == ["Hip Hop"]
    assert loaded.genre_words("jazz") == ["Jazz"]
    assert set(loaded.genre_names) == set(GENRES)
    assert config.load(tmp_path / "none.toml", required=False).genre_names == {
        g: [DISPLAY_NAMES[g]] for g in GENRES}
    assert config.genre_words("classical") == ["Classical"]     # the default file: none here


def test_tagger_config_shows_the_genre_map(tmp_path):
    user_config('[genres]\nrock = ["Rock", "Rock & Roll"]\n')
    genres = shown()["genres"]
    assert genres["rock"] == ["Rock", "Rock & Roll"] and genres["jazz"] == ["Jazz"]
    table = run("config").stdout
    assert "Rock; Rock & Roll" in table and "Hip-Hop" in table
    assert run("config", "--quiet").stdout == table          # what was asked for, quiet or not


# -- defaults and where each came from ---------------------------------------------------------

def test_db_precedence_flag_env_config_default(tmp_path, monkeypatch):
    monkeypatch.delenv("TAGGER_DB")
    settings = shown()["settings"]
    assert settings["db"]["from"] == "default"
    assert settings["db"]["value"].endswith("index.db")

    path = user_config('[defaults]\ndb = "from-config.db"\n')      # relative: to the file
    settings = shown()["settings"]
    assert settings["db"] == {"value": str(path.parent / "from-config.db"), "from": str(path)}

    monkeypatch.setenv("TAGGER_DB", str(tmp_path / "env.db"))
    assert shown()["settings"]["db"] == {"value": str(tmp_path / "env.db"), "from": "$TAGGER_DB"}


def test_the_config_db_and_model_are_used_below_flags_and_env(tmp_path, monkeypatch, model_path):
    monkeypatch.delenv("TAGGER_DB")
    track = write_track(tmp_path / "Music" / "a.flac", seconds=1.5)
    path = user_config(f'[defaults]\ndb = "{tmp_path / "config.db"}"\nmodel = "{model_path}"\n'
                       "workers = 0\n")
    settings = shown()["settings"]
    assert settings["model"] == {"value": str(model_path), "from": str(path)}
    assert settings["workers"] == {"value": 0, "from": str(path)}
    run("scan", track.parent)
    assert (tmp_path / "config.db").exists()
    row, = json.loads(run("query", "--db", tmp_path / "config.db", "--format", "json").stdout)
    assert row["model_id"] == file_model_id(model_path)

    monkeypatch.setenv("TAGGER_DB", str(tmp_path / "env.db"))          # env over config
    run("scan", track.parent)
    assert (tmp_path / "env.db").exists()
    run("scan", track.parent, "--db", tmp_path / "flag.db")            # flag over env
    assert (tmp_path / "flag.db").exists()

    other = tmp_path / "other.pt"                                       # env over config
    make_checkpoint(other, seed=1)
    monkeypatch.setenv("TAGGER_MODEL", str(other))
    assert shown()["settings"]["model"] == {"value": str(other), "from": "$TAGGER_MODEL"}
    run("scan", track.parent, "--db", tmp_path / "flag.db")
    row, = json.loads(run("query", "--db", tmp_path / "flag.db", "--format", "json").stdout)
    assert row["model_id"] == file_model_id(other)


def test_workers_and_write_tags_defaults_show_in_help_and_apply(lib, db):
    user_config("[defaults]\nworkers = 3\nmin_confidence = 0.25\ntop_k = 2\n")
    assert "[default: 3]" in run("scan", "--help").stdout.replace("\n", " ")
    settings = shown()["settings"]
    assert settings["top_k"]["value"] == 2 and settings["min_confidence"]["value"] == 0.25
    run("write-tags", "--db", db, "--overwrite")                        # config: two genres
    assert genres_of(lib / "plain.flac") == ["Hip-Hop", "Jazz"]
    run("write-tags", "--db", db, "--overwrite", "--top-k", "1")        # the flag wins
    assert genres_of(lib / "plain.flac") == ["Hip-Hop"]


def test_config_option_and_env_var_name_the_file(tmp_path, monkeypatch):
    user_config("[defaults]\ntop_k = 2\n")
    mine = tmp_path / "mine.toml"
    mine.write_text("[defaults]\ntop_k = 3\n")
    theirs = tmp_path / "theirs.toml"
    theirs.write_text("[defaults]\ntop_k = 4\n")
    assert shown()["settings"]["top_k"]["value"] == 2
    monkeypatch.setenv("TAGGER_CONFIG", str(theirs))
    data = shown()
    assert data["settings"]["top_k"]["value"] == 4
    assert data["config_file"] == {"path": str(theirs), "from": "$TAGGER_CONFIG", "found": True}
    data = json.loads(run("--config", mine, "config", "--format", "json").stdout)
    assert data["settings"]["top_k"] == {"value": 3, "from": str(mine)}
    assert data["config_file"]["from"] == "--config"


def test_defaults_are_todays_without_a_file(monkeypatch):
    monkeypatch.delenv("TAGGER_DB")
    settings = shown()["settings"]
    assert {name: s["from"] for name, s in settings.items()} == dict.fromkeys(
        ["db", "model", "workers", "min_confidence", "top_k"], "default")
    assert settings["min_confidence"]["value"] == 0.5 and settings["top_k"]["value"] == 1
    assert settings["model"]["value"] == "default"
    assert "tagger config" in run("--help").stdout


# -- errors: one line, the file and its line, exit 1 -------------------------------------------

@pytest.mark.parametrize("text, line, says", [
    ('[genres]\nhiphop = "Hip Hop\n', 2, "TOML"),
    ("[defaults]\nworkers = 2\n\n[colours]\nred = 1\n", 4, "unknown table [colours]"),
    ("[defaults]\nworkers = 2\nthreads = 4\n", 3, "unknown key 'threads' in [defaults]"),
    ('[defaults]\nworkers = "four"\n', 2, "workers must be a whole number"),
    ("[defaults]\nmin_confidence = 1.5\n", 2, "min_confidence must be a number from 0 to 1"),
    ("[defaults]\ntop_k = 0\n", 2, "top_k must be a whole number of at least 1"),
    ("[defaults]\nworkers = true\n", 2, "workers must be a whole number"),
    ('[genres]\nrock = "Rock"\nhip-hop = "Hip Hop"\n', 3, "unknown genre 'hip-hop' in [genres]"),
    ('[genres]\njazz = ""\n', 2, "jazz: an empty name"),
    ('[genres]\njazz = ["Jazz", " "]\n', 2, "jazz: an empty name"),
    ("[genres]\njazz = []\n", 2, "jazz: an empty list"),
    ("[genres]\njazz = 3\n", 2, "jazz must be a name or a list of names"),
    ('genres = "Rock"\n', 1, "genres must be a table"),
    ('[defaults]\ndb = ""\n', 2, "db: an empty path"),
])
def test_a_bad_config_file_is_one_line_with_its_line_number(tmp_path, text, line, says):
    path = user_config(text)
    for command in (["config"], ["query"]):
        result = run(*command, ok=1)
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"Error: {path}: line {line}: "), result.stderr
        assert says in result.stderr, result.stderr


def test_a_missing_config_option_file_is_an_error_the_default_one_is_not(tmp_path, monkeypatch):
    result = run("--config", tmp_path / "nope.toml", "config", ok=1)
    assert result.stderr == (f"Error: {tmp_path / 'nope.toml'}: no such file; write it (see the "
                             "README's Configuration) or leave out --config\n")
    monkeypatch.setenv("TAGGER_CONFIG", str(tmp_path / "nope.toml"))
    assert "leave out $TAGGER_CONFIG" in run("config", ok=1).stderr
    monkeypatch.delenv("TAGGER_CONFIG")
    run("config")


def test_a_config_file_that_is_not_text_is_one_line(tmp_path):
    path = user_config("")
    path.write_bytes(b"[genres]\njazz = \"\xff\"\n")
    result = run("config", ok=1)
    assert result.stderr.startswith(f"Error: {path}: ") and result.stderr.count("\n") == 1
    path.unlink()
    path.mkdir()
    result = run("config", ok=1)
    assert result.stderr.startswith(f"Error: {path}: ") and result.stderr.count("\n") == 1
