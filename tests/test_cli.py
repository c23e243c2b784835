"""The commands end to end, through Typer's CliRunner: exit codes, exact messages, the JSON
contract, and every kind of bad input from the issue."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
import typer

import tagger
from conftest import run, write_track
from tagger.cli import app
from tagger.genres import GENRES
from tagger.modelfile import file_model_id


def query_json(db: Path, *args: str) -> list[dict]:
    return json.loads(run("query", "--db", db, "--format", "json", *args).stdout)


def test_scan_then_query_every_format(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    result = run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    assert "7 classified, 0 unchanged, 0 failed, 0 silent" in result.stdout
    rows = query_json(db)
    assert len(rows) == 7
    paths = {Path(r["path"]).name for r in rows}
    assert paths == {"one.mp3", "two.flac", "three.ogg", "four.opus", "five.m4a", "six.wav", "seven.aiff"}
    for row in rows:
        assert set(row) == {"path", "genre", "confidence", "probabilities", "model_id", "error",
                            "uncertain", "match"}
        assert row["match"] is None             # no --genre asked for
        assert row["uncertain"] is False        # the model has no threshold
        assert os.path.isabs(row["path"])
        assert set(row["probabilities"]) == set(GENRES)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["genre"] == max(row["probabilities"], key=row["probabilities"].get)
        assert row["confidence"] == row["probabilities"][row["genre"]]
        assert row["error"] is None and len(row["model_id"]) == 12


def test_rescan_skips_unchanged_and_force_redoes(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    second = run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    assert second.stdout.startswith("Nothing to do: 7 unchanged.\n")
    assert "tracks/s" not in second.stdout and "Scanned" not in second.stdout
    changed = library / "a" / "one.mp3"
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))       # a bare touch is no change
    assert run("scan", library, "--db", db, "--model", model_path,
               "--workers", "0").stdout.startswith("Nothing to do: 7 unchanged.\n")
    with open(changed, "ab") as f:
        f.write(b"\0")
    third = run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    assert "1 classified, 6 unchanged" in third.stdout
    forced = run("scan", library, "--db", db, "--model", model_path, "--workers", "0", "--force")
    assert "7 classified, 0 unchanged" in forced.stdout
    assert len(query_json(db)) == 7


def test_new_model_makes_predictions_stale(library, model_path, tmp_path):
    from conftest import make_checkpoint
    db = tmp_path / "index.db"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    result = run("scan", library, "--db", db, "--model", other, "--workers", "0")
    assert "7 classified, 0 unchanged" in result.stdout
    assert {r["model_id"] for r in query_json(db)} == {file_model_id(other)}


def test_worker_processes_give_the_same_result(library, model_path, tmp_path):
    run("scan", library, "--db", tmp_path / "a.db", "--model", model_path, "--workers", "0")
    run("scan", library, "--db", tmp_path / "b.db", "--model", model_path, "--workers", "2")
    inline, pooled = query_json(tmp_path / "a.db"), query_json(tmp_path / "b.db")
    assert [r["path"] for r in inline] == [r["path"] for r in pooled]
    for a, b in zip(inline, pooled):
        for g in GENRES:
            assert a["probabilities"][g] == pytest.approx(b["probabilities"][g], abs=1e-6)


def test_exclude_glob(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0",
        "--exclude", "*/b/*", "--exclude", "*.wav")
    names = {Path(r["path"]).name for r in query_json(db)}
    assert names == {"one.mp3", "two.flac", "five.m4a", "seven.aiff"}


def test_query_filters_and_formats(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    (library / "broken.mp3").write_bytes(os.urandom(4096))
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    rows = query_json(db)
    top = rows[-1]["genre"] or rows[0]["genre"]
    by_top = query_json(db, "--genre", top)
    assert by_top and all(r["genre"] == top for r in by_top)
    assert [r["confidence"] for r in by_top] == sorted((r["confidence"] for r in by_top), reverse=True)
    # --min-confidence: the probability for the genre, whether or not it is the top one
    loose = query_json(db, "--genre", "blues", "--min-confidence", "0.0")
    assert len(loose) == 7
    strict = query_json(db, "--genre", "blues", "--min-confidence", "0.99")
    assert strict == []
    failed = query_json(db, "--failed")
    assert [Path(r["path"]).name for r in failed] == ["broken.mp3"]
    assert failed[0]["genre"] is None and failed[0]["error"] and failed[0]["probabilities"] == {}
    assert len(query_json(db, "--limit", "3")) == 3
    csv_lines = run("query", "--db", db, "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "path,genre,confidence,model_id,error," + ",".join(GENRES) + ",uncertain,match"
    assert len(csv_lines) == 9
    m3u = run("query", "--db", db, "--genre", top, "--format", "m3u").stdout.splitlines()
    assert m3u[0] == "#EXTM3U" and m3u[2::2] == [r["path"] for r in by_top if r["error"] is None]
    assert all(re.fullmatch(r"#EXTINF:[23],\S+", line) for line in m3u[1::2])    # 2.5 s, no tags
    table = run("query", "--db", db).stdout
    assert "broken.mp3" in table and "one.mp3" in table


def test_query_accepts_display_names(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    assert query_json(db, "--genre", "Hip-Hop") == query_json(db, "--genre", "hiphop")


def test_user_errors_are_one_line_exit_1(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    result = run("query", "--db", db, ok=1)
    assert result.stderr == f"Error: {db}: no index there yet; run `tagger scan FOLDER` first\n"
    run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    result = run("query", "--db", db, "--genre", "polka", ok=1)
    assert result.stderr.startswith("Error: unknown genre 'polka'; choose one of blues,")
    assert result.stderr.count("\n") == 1
    result = run("query", "--db", db, "--min-confidence", "0.5", ok=2)      # a usage error
    assert "--min-confidence needs --genre" in result.stderr
    result = run("scan", tmp_path / "nowhere", "--db", db, "--model", model_path, ok=1)
    assert result.stderr == f"Error: {tmp_path / 'nowhere'}: no such file or folder\n"
    result = run("scan", library, "--db", db, "--model", tmp_path / "missing.pt", ok=1)
    assert "Error:" in result.stderr and "missing.pt" in result.stderr
    run("query", "--db", db, "--format", "yaml", ok=2)
    run("scan", ok=2)


def test_the_shipped_model_is_used_without_model(library, tmp_path):
    from tagger.checkpoint import load
    from tagger.modelfile import default_model_path, file_model_id
    shipped = default_model_path()
    assert shipped is not None and shipped.stat().st_size < 5_000_000
    assert shipped.read_bytes() == (Path(__file__).parents[1] / "models" / "default.pt").read_bytes()
    ckpt = load(shipped)
    assert ckpt.provenance["split"] == "all" and ckpt.provenance["clips"] == 202
    card = (Path(__file__).parents[1] / "models" / "MODEL_CARD.md").read_text()
    assert f"`{file_model_id(shipped)}`" in card          # the card describes this very file
    db = tmp_path / "i.db"
    run("scan", library, "--db", db, "--workers", "0")
    rows = query_json(db)
    assert len(rows) == 7 and {r["model_id"] for r in rows} == {file_model_id(shipped)}
    shown = json.loads(run("show", library / "a" / "one.mp3", "--format", "json").stdout)
    assert shown[0]["model_id"] == file_model_id(shipped)


def test_model_fast_names_the_second_shipped_model_unless_a_file_is_called_so(tmp_path, monkeypatch):
    from tagger.checkpoint import load
    from tagger.modelfile import default_model_path, resolve_model
    from tagger.teacher import CHANNELS
    models = Path(__file__).parents[1] / "models"
    path, model_id = resolve_model(Path("fast"))
    assert path == default_model_path("fast") and path.read_bytes() == (models / "fast.pt").read_bytes()
    assert f"`{model_id}`" in (models / "MODEL_CARD.md").read_text()
    fast, default = load(path).model, load(default_model_path()).model
    assert fast.teacher_channels == () and default.teacher_channels == CHANNELS
    for ms in (fast, default):                  # both calibrated, both can say "uncertain"
        assert ms.temperature != 1.0 and ms.uncertain_below == 0.5
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").write_bytes(b"mine")
    assert resolve_model(Path("fast"))[0] == Path("fast")


def test_a_lost_default_model_is_a_clear_error(library, tmp_path, monkeypatch):
    monkeypatch.setattr("tagger.modelfile.default_model_path", lambda name="default": None)
    result = run("scan", library, "--db", tmp_path / "i.db", ok=1)
    assert result.stderr.startswith("Error: the default model is missing from this installation")
    assert "--model PATH" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_tampered_checkpoint_is_refused(library, tmp_path):
    import pickle
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil.write_bytes(pickle.dumps({"format": "tagger-checkpoint", "x": Payload()}))
    result = run("show", library / "a" / "one.mp3", "--model", evil, ok=1)
    assert result.stderr.startswith(f"Error: {evil}: refused to load")
    assert not marker.exists()


def test_model_from_environment(library, model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TAGGER_MODEL", str(model_path))
    run("scan", library, "--workers", "0")          # index from $TAGGER_DB (conftest)
    assert len(json.loads(run("query", "--format", "json").stdout)) == 7


def test_show_prints_bars_and_json(library, model_path):
    files = [library / "a" / "one.mp3", library / "b" / "three.ogg"]
    table = run("show", *files, "--model", model_path).stdout
    assert "one.mp3" in table and "three.ogg" in table and "%" in table and "█" in table
    rows = json.loads(run("show", *files, "--model", model_path, "--format", "json").stdout)
    assert [r["path"] for r in rows] == [str(f) for f in files]
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_show_does_not_touch_the_index(library, model_path, tmp_path):
    run("show", library / "a" / "one.mp3", "--model", model_path)
    assert not Path(os.environ["TAGGER_DB"]).exists()


def test_show_reports_a_bad_file_and_goes_on(library, model_path, tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_text("this is not audio\n")
    rows = json.loads(run("show", bad, library / "a" / "one.mp3", "--model", model_path,
                          "--format", "json", ok=1).stdout)
    assert rows[0]["genre"] is None and rows[0]["error"].startswith("not an audio file")
    assert rows[1]["genre"] in GENRES


def test_version():
    assert run("--version").stdout == f"tagger {tagger.__version__}\n"


def test_every_command_help_has_an_example():
    commands = typer.main.get_command(app).commands
    assert {"scan", "query", "show", "write-tags", "restore-tags", "train", "evaluate"} <= set(commands)
    for name in commands:
        example = re.search(r"^\s*Example: (tagger \S+)", run(name, "--help").stdout, re.MULTILINE)
        assert example and example[1] == f"tagger {name}", name


def test_a_crash_fails_a_cli_test_whatever_its_exit_code():
    """CliRunner turns an exception into exit code 1: conftest.run fails the test instead."""
    crashing = typer.Typer()

    @crashing.command()
    def boom():
        raise IndexError("the Vorbis comment header is cut")

    @crashing.command()
    def refuse():
        raise typer.Exit(1)

    with pytest.raises(pytest.fail.Exception, match="IndexError: the Vorbis comment header is cut"):
        run("boom", ok=1, cli=crashing)
    assert isinstance(run("refuse", ok=1, cli=crashing).exception, SystemExit)


def test_names_that_look_like_markup(model_path, tmp_path):
    music = tmp_path / "Album ["
    write_track(music / "[/Disc 1] [red]x.wav", seconds=1.5)
    db = tmp_path / "index.db"
    run("scan", music, "--db", db, "--model", model_path, "--workers", "0")
    assert "[/Disc 1] [red]x.wav" in run("query", "--db", db).stdout
    assert "[/Disc 1] [red]x.wav" in run("show", music / "[/Disc 1] [red]x.wav",
                                         "--model", model_path).stdout
    result = run("query", "--db", db, "--genre", "[/x]", ok=1)
    assert result.stderr.startswith("Error: unknown genre '[/x]'")


def test_another_tools_database_is_left_alone(tmp_path):
    db = tmp_path / "library.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT)")
    result = run("query", "--db", db, ok=1)
    assert result.stderr == f"Error: {db}: not a tagger index (it holds other tables); pass another --db\n"
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["items"]


def test_show_reports_a_missing_file_classifies_the_others_and_exits_1(library, model_path, tmp_path):
    good = library / "a" / "one.mp3"
    result = run("show", tmp_path / "nope.mp3", good, "--model", model_path, ok=1)
    assert f"{tmp_path / 'nope.mp3'}\n  file not found" in result.stdout
    assert "one.mp3" in result.stdout and "%" in result.stdout
    assert result.stderr == "1 of 2 files could not be classified.\n"
    rows = json.loads(run("show", good, tmp_path / "nope.mp3", "--model", model_path,
                          "--format", "json", ok=1).stdout)
    assert [r["error"] for r in rows] == [None, "file not found"]
    assert run("show", good, "--model", model_path).stderr == ""          # all classified: 0


def test_show_walks_a_folder_as_scan_does(library, model_path, tmp_path):
    (library / "c" / "notes.txt").write_text("not audio")
    rows = json.loads(run("show", library / "c", library / "a" / "one.mp3", "--model", model_path,
                          "--format", "json").stdout)
    assert [Path(r["path"]).name for r in rows] == ["five.m4a", "seven.aiff", "six.wav", "one.mp3"]
    (tmp_path / "empty").mkdir()
    result = run("show", tmp_path / "empty", "--model", model_path, ok=1)
    assert result.stderr == f"Error: no audio files in {tmp_path / 'empty'}\n"


def test_the_scan_rate_is_tracks_since_the_work_began_shown_after_a_second():
    """The bar's rate is what the summary gives (tracks over the seconds since classifying
    began), not rich's estimate from the last few updates, which a batch of 16 stored in one
    instant turned into 179,778 tracks/s; for the first second it shows nothing."""
    from rich.progress import Progress
    from tagger.cli import LeftColumn, SpeedColumn
    now = [100.0]
    progress = Progress(SpeedColumn(), get_time=lambda: now[0], disable=True)
    task_id = progress.add_task("scan", total=87)
    task = progress.tasks[0]
    assert str(SpeedColumn().render(task)) == ""
    now[0] = 100.5
    progress.advance(task_id, 16)
    assert str(SpeedColumn().render(task)) == ""         # all 16 at once, in the first second
    assert str(LeftColumn().render(task)) == "-:--:--"
    now[0] = 104.0
    progress.advance(task_id, 1)
    assert str(SpeedColumn().render(task)) == "4.2 tracks/s"      # 17 in 4 s
    assert str(LeftColumn().render(task)) == "0:00:16"             # 70 more at that rate
