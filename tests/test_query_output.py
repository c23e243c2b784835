"""`query` as people pipe it: the m3u form, folder filters, sorting, the number a filter used,
usage errors for flags that contradict each other, tables that a pipe gets one row a line,
and --quiet / --verbose on every command. Indexes are filled through Index.store with real
files generated here, so that no test waits for a model."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import mutagen
import pytest
import typer
from mutagen.easyid3 import EasyID3
from mutagen.id3 import TIT2

from conftest import run, write_track
from tagger import output
from tagger.cli import app
from tagger.errors import UsageError
from tagger.genres import DISPLAY_NAMES as GENRE_NAMES, GENRES
from tagger.index import Index, TrackResult
from test_tags import cut_at_the_framing_byte

MODEL = "0123456789ab"


def probs(top: str, p: float, **others: float) -> dict[str, float]:
    """Probabilities with `top` at p, `others` as given, the rest shared out."""
    rest = [g for g in GENRES if g != top and g not in others]
    share = (1 - p - sum(others.values())) / len(rest)
    return {g: p if g == top else others.get(g, share) for g in GENRES}


def store(db: Path, *results: TrackResult) -> Path:
    with Index(db) as index:
        index.store(list(results))
    return db


def ok(path: Path | str, probabilities: dict, duration: float | None = 3.0) -> TrackResult:
    return TrackResult(str(path), 1, 1, MODEL, "ok", probabilities, duration=duration)


def lines(result) -> list[str]:
    return result.stdout.splitlines()


# --- 6: m3u ------------------------------------------------------------------------------

@pytest.fixture
def tagged(tmp_path) -> dict[str, Path]:
    """Files whose tags name their artist and title in each format's own way, one with none,
    one whose tags mutagen cannot read."""
    music = tmp_path / "Music"
    flac = write_track(music / "a.flac", seconds=1.0)
    f = mutagen.File(flac)
    f["ARTIST"], f["TITLE"] = "The Testers", "Fixture, Live"
    f.save()
    mp3 = write_track(music / "b.mp3", seconds=1.0)
    easy = EasyID3()
    easy["artist"], easy["title"] = "Nina", "Line one\nline two"     # a break: one line in m3u
    easy.save(mp3)
    wav = write_track(music / "c.wav", seconds=1.0)
    f = mutagen.File(wav)
    f.add_tags()
    f.tags.add(TIT2(encoding=3, text=["Only a title"]))
    f.save()
    bare = write_track(music / "d no tags.wav", seconds=1.0)
    damaged = cut_at_the_framing_byte(write_track(music / "e damaged.ogg", seconds=1.0,
                                                          channels=2))
    return {"flac": flac, "mp3": mp3, "wav": wav, "bare": bare, "damaged": damaged}


def test_m3u_has_an_extinf_line_per_track_from_the_index_and_the_tags(tagged, tmp_path):
    db = store(tmp_path / "index.db",
               ok(tagged["flac"], probs("jazz", 0.9), duration=241.6),
               ok(tagged["mp3"], probs("jazz", 0.8), duration=30.0),
               ok(tagged["wav"], probs("jazz", 0.7), duration=None),
               ok(tagged["bare"], probs("jazz", 0.6), duration=1.0),
               ok(tagged["damaged"], probs("jazz", 0.5), duration=2.0),
               TrackResult(str(tmp_path / "broken.mp3"), 1, 1, MODEL, "failed", error="not audio"),
               TrackResult(str(tmp_path / "quiet.wav"), 1, 1, MODEL, "silent", error="silent"))
    result = run("query", "--db", db, "--format", "m3u")
    assert lines(result) == [
        "#EXTM3U",
        "#EXTINF:242,The Testers - Fixture, Live", str(tagged["flac"]),
        "#EXTINF:30,Nina - Line one line two", str(tagged["mp3"]),
        "#EXTINF:-1,Only a title", str(tagged["wav"]),
        "#EXTINF:1,d no tags", str(tagged["bare"]),
        "#EXTINF:2,e damaged", str(tagged["damaged"]),
    ], result.stdout
    assert result.stderr == ""


def test_m3u_relative_to_a_folder(tagged, tmp_path):
    db = store(tmp_path / "index.db", ok(tagged["flac"], probs("jazz", 0.9)),
               ok(tagged["bare"], probs("jazz", 0.8)))
    playlists = tmp_path / "Playlists"
    playlists.mkdir()
    result = run("query", "--db", db, "--format", "m3u", "--relative-to", tmp_path / "Music")
    assert lines(result)[2::2] == ["a.flac", "d no tags.wav"]
    result = run("query", "--db", db, "--format", "m3u", "--relative-to", playlists)
    assert lines(result)[2::2] == ["../Music/a.flac", "../Music/d no tags.wav"]
    result = run("query", "--db", db, "--relative-to", playlists, ok=2)
    assert "--relative-to" in result.stderr and "m3u" in result.stderr


# --- 7: query ----------------------------------------------------------------------------

@pytest.fixture
def shelves(tmp_path) -> tuple[Path, Path]:
    """An index of a library with Jazz, Jazz Live (a name that starts like Jazz) and Rock."""
    music = tmp_path / "Music"
    rows = [ok(music / "Jazz" / "a.flac", probs("jazz", 0.5, blues=0.3)),
            ok(music / "Jazz" / "sub" / "b.flac", probs("blues", 0.6, jazz=0.35)),
            ok(music / "Jazz Live" / "c.flac", probs("jazz", 0.9)),
            ok(music / "Rock" / "d.flac", probs("rock", 0.7, jazz=0.1)),
            TrackResult(str(music / "Rock" / "e.mp3"), 1, 1, MODEL, "failed", error="not audio")]
    for row in rows:
        os.makedirs(os.path.dirname(row.path), exist_ok=True)
    return music, store(tmp_path / "index.db", *rows)


def names(rows: list[dict]) -> list[str]:
    return [os.path.basename(r["path"]) for r in rows]


def query_json(db: Path, *args) -> list[dict]:
    return json.loads(run("query", "--db", db, "--format", "json", *args).stdout)


def test_query_paths_filter_by_folder_real_path_and_all(shelves, tmp_path, monkeypatch):
    music, db = shelves
    assert names(query_json(db, music / "Jazz")) == ["a.flac", "b.flac"]
    assert names(query_json(db, music / "Jazz" / "sub" / "b.flac")) == ["b.flac"]
    assert names(query_json(db, music / "Jazz", music / "Rock", "--genre", "rock")) == ["d.flac"]
    assert names(query_json(db, music / "Jazz", "--genre", "jazz", "--min-confidence", "0.3")) \
        == ["a.flac", "b.flac"]
    link = tmp_path / "Link"
    link.symlink_to(music)
    assert names(query_json(db, link / "Jazz")) == ["a.flac", "b.flac"]
    monkeypatch.chdir(music)
    assert names(query_json(db, "Rock")) == ["d.flac", "e.mp3"]
    assert query_json(db, tmp_path / "Elsewhere") == []
    with Index(db, read_only=True) as index:
        assert names(index.query(paths=[music / "Jazz Live"])) == ["c.flac"]


def test_query_sort(shelves):
    music, db = shelves
    with sqlite3.connect(db) as conn:       # scanned at different times, e.mp3 last
        for i, name in enumerate(["a.flac", "b.flac", "c.flac", "d.flac", "e.mp3"]):
            conn.execute("UPDATE tracks SET scanned_at = ? WHERE path LIKE ?",
                         [f"2026-01-0{i + 1}T00:00:00+00:00", f"%/{name}"])
    by_path = ["c.flac", "a.flac", "b.flac", "d.flac", "e.mp3"]        # "Jazz Live" < "Jazz/"
    assert names(query_json(db)) == names(query_json(db, "--sort", "path")) == by_path
    assert names(query_json(db, "--sort", "confidence")) == ["c.flac", "d.flac", "b.flac", "a.flac", "e.mp3"]
    assert names(query_json(db, "--sort", "genre")) == ["b.flac", "c.flac", "a.flac", "d.flac", "e.mp3"]
    assert names(query_json(db, "--sort", "scanned")) == ["e.mp3", "d.flac", "c.flac", "b.flac", "a.flac"]
    assert names(query_json(db, "--genre", "jazz", "--min-confidence", "0.3", "--sort", "path")) \
        == ["c.flac", "a.flac", "b.flac"]
    assert names(query_json(db, "--genre", "jazz", "--min-confidence", "0.3", "--sort", "confidence")) \
        == ["c.flac", "a.flac", "b.flac"]
    assert names(query_json(db, "--genre", "jazz", "--min-confidence", "0.3", "--sort", "genre")) \
        == ["b.flac", "c.flac", "a.flac"]
    assert names(query_json(db, "--sort", "confidence", "--limit", "2")) == ["c.flac", "d.flac"]
    run("query", "--db", db, "--sort", "size", ok=2)


def test_min_confidence_shows_the_probability_it_used(shelves):
    music, db = shelves
    args = ("--genre", "jazz", "--min-confidence", "0.3")
    rows = query_json(db, *args)
    assert [(r["genre"], r["confidence"], r["match"]) for r in rows] == [
        ("jazz", pytest.approx(0.9), pytest.approx(0.9)), ("jazz", pytest.approx(0.5), pytest.approx(0.5)),
        ("blues", pytest.approx(0.6), pytest.approx(0.35))]
    assert all(r["match"] is None for r in query_json(db))
    table = lines(run("query", "--db", db, *args))
    assert table[0].split() == ["Jazz", "Top", "genre", "Path"]
    assert table[3].split() == ["35%", "Blues", str(music / "Jazz" / "sub" / "b.flac")]
    csv = lines(run("query", "--db", db, "--format", "csv", *args))
    assert csv[0].endswith(",uncertain,match") and csv[3].endswith(",false,0.350000")
    assert lines(run("query", "--db", db, "--format", "csv"))[1].endswith(",false,")


@pytest.mark.parametrize("args", [["--failed", "--genre", "pop"],
                                  ["--failed", "--min-confidence", "0.5"],
                                  ["--failed", "--genre", "pop", "--min-confidence", "0.5"],
                                  ["--uncertain", "--failed"],
                                  ["--min-confidence", "0.5"],
                                  ["--limit", "0"]])
def test_contradictory_flags_are_usage_errors(shelves, args):
    _, db = shelves
    result = run("query", "--db", db, *args, ok=2)
    assert "Usage:" in result.stderr and "Traceback" not in result.output


def test_the_library_refuses_the_same(shelves):
    _, db = shelves
    with Index(db, read_only=True) as index:
        for kwargs in ({"failed": True, "genre": "pop"}, {"failed": True, "uncertain": True},
                       {"min_confidence": 0.5}, {"limit": 0}, {"sort": "size"}):
            with pytest.raises(UsageError):
                index.query(**kwargs)


# --- 8: pipes, width, --quiet, --verbose -------------------------------------------------

def test_a_table_is_one_row_a_line_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    long = tmp_path / ("a folder with a rather long name " * 4).strip() / ("track " * 12 + ".flac")
    db = store(tmp_path / "index.db", ok(long, probs("jazz", 0.9)), ok(tmp_path / "b.flac", probs("rock", 0.8)))
    monkeypatch.setenv("COLUMNS", "60")      # a narrow terminal beside the pipe
    table = lines(run("query", "--db", db))
    assert len(table) == 3
    assert table[1].split(None, 2) == ["Jazz", "90%", str(long)]
    assert all(line == line.rstrip() for line in table)


COMMANDS = ["scan", "query", "show", "write-tags", "restore-tags", "train", "evaluate", "check"]


def test_every_command_takes_quiet_and_verbose():
    commands = typer.main.get_command(app).commands
    for name in sorted(commands):
        help_text = " ".join(run(name, "--help", env={"COLUMNS": "200"}).stdout.split())
        assert "--quiet" in help_text and "--verbose" in help_text, name
    assert set(COMMANDS) <= set(commands)


def test_quiet_scan_shows_no_progress_and_no_summary(tmp_path, model_path, monkeypatch):
    write_track(tmp_path / "Music" / "a.wav", seconds=1.5)
    (tmp_path / "Music" / "bad.mp3").write_text("not audio")
    monkeypatch.setenv("FORCE_COLOR", "1")        # stderr counts as a terminal: bars are drawn
    args = ("scan", tmp_path / "Music", "--db", tmp_path / "i.db", "--model", model_path,
            "--workers", "0", "--force")
    loud = run(*args)
    assert "Scanned 2 tracks" in loud.stdout and "Scanning" in loud.stderr
    quiet = run(*args, "--quiet")
    assert quiet.stdout == ""
    assert "Scanning" not in quiet.stderr and "bad.mp3" in quiet.stderr   # errors still shown
    assert "Scanned 2 tracks" in run(*args).stdout        # the next command is not quiet


def test_quiet_query_still_lists_and_verbose_counts(shelves):
    _, db = shelves
    quiet = run("query", "--db", db, "--quiet", "--format", "json")
    assert len(json.loads(quiet.stdout)) == 5 and quiet.stderr == ""
    loud = run("query", "--db", db, "--verbose", "--genre", "jazz")
    assert len(lines(loud)) == 3 and loud.stderr == "2 tracks.\n"
    assert run("query", "--db", db, "-q", "--genre", "pop").stderr == ""     # not "No tracks match."
    assert run("check", "--db", db, "-q").stdout == ""
    run("query", "--db", db, "--quiet", "--verbose", ok=2)


def test_verbose_write_tags_says_what_happened_to_every_file(tmp_path):
    flac = write_track(tmp_path / "Music" / "a.flac", seconds=1.0)
    st = flac.stat()
    db = store(tmp_path / "index.db",
               TrackResult(str(flac), st.st_size, st.st_mtime_ns, MODEL, "ok", probs("jazz", 0.3)),
               TrackResult(str(tmp_path / "Music" / "bad.mp3"), 1, 1, MODEL, "failed", error="x"))
    plain = run("write-tags", "--db", db, "--dry-run")
    assert "a.flac" not in plain.output and "bad.mp3" not in plain.output
    verbose = run("write-tags", "--db", db, "--dry-run", "--verbose")
    assert f"{flac}: below" in verbose.stdout and "bad.mp3: not classified" in verbose.stdout


def test_quiet_train_and_evaluate_print_nothing_but_write_their_files(tmp_path):
    from conftest import make_tiny_gtzan
    data = make_tiny_gtzan(tmp_path / "genres", {"train": 2}, seconds=2.0)
    out = tmp_path / "m.pt"
    args = ("--cache", tmp_path / "cache", "--quiet")
    trained = run("train", data, "--out", out, "--epochs", "1", "--split", "all",
                  "--crops-per-clip", "1", *args)
    assert (trained.stdout, trained.stderr) == ("", "") and out.exists()
    scored = run("evaluate", data, "--model", out, "--part", "all", "--report", tmp_path / "r", *args)
    assert scored.stdout == "" and (tmp_path / "r.report.json").exists()


def test_the_scan_summary_is_not_wrapped_in_a_pipe(tmp_path, model_path, monkeypatch):
    write_track(tmp_path / "Music" / "a.wav", seconds=1.5)
    monkeypatch.setenv("COLUMNS", "20")
    done = run("scan", tmp_path / "Music", "--db", tmp_path / "i.db", "--model", model_path,
               "--workers", "0")
    genre = query_json(tmp_path / "i.db")[0]["genre"]
    assert any(line.split() == [GENRE_NAMES[genre], "1", "█" * 20] for line in lines(done)), done.stdout


def test_verbose_check_lists_every_problem(tmp_path):
    from tagger import indexcheck
    from test_index_safety import big_index
    db = tmp_path / "index.db"
    big_index(db)
    data = db.read_bytes()
    for n in (200, 201):            # two names changed in one place: the path index disagrees
        name = b"/music/track-0%d.mp3" % n
        at = data.index(name)
        data = data[:at] + name.upper() + data[at + len(name):]
    db.write_bytes(data)
    problems = indexcheck.check(db).problems
    assert len(problems) > 1
    plain, verbose = run("check", "--db", db, ok=1), run("check", "--db", db, "--verbose", ok=1)
    assert not any(p in plain.stdout for p in problems[1:])
    assert [line.strip() for line in lines(verbose)[2:2 + len(problems)]] == problems


def test_verbose_scan_says_what_each_track_got(library, model_path, tmp_path):
    db = tmp_path / "index.db"
    quiet = run("scan", library, "--db", db, "--model", model_path, "--workers", "0")
    assert str(library / "a" / "one.mp3") not in quiet.output
    (library / "c" / "six.wav").write_bytes(b"RIFF broken")
    result = run("scan", library, "--db", db, "--model", model_path, "--workers", "0", "--force",
                 "--verbose")
    rows = {r["path"]: r for r in json.loads(run("query", "--db", db, "--format", "json").stdout)}
    one = rows[str(library / "a" / "one.mp3")]
    assert f"{library / 'a' / 'one.mp3'}: {output.genre_name(one['genre'])} " \
           f"{one['confidence']:.0%}" in result.stderr
    assert f"{library / 'c' / 'six.wav'}: " in result.stderr


def test_a_line_break_in_a_name_keeps_a_table_row_on_one_line(tmp_path):
    odd = str(tmp_path / "Music" / "two\nlines.flac")
    db = store(tmp_path / "index.db",
               TrackResult(odd, 1, 1, MODEL, "ok", probs("jazz", 0.7)),
               TrackResult(str(tmp_path / "Music" / "plain.flac"), 1, 1, MODEL, "ok", probs("rock", 0.6)))
    lines = run("query", "--db", db).stdout.splitlines()
    assert len(lines) == 3 and lines[2].endswith("two\\nlines.flac")
    assert json.loads(run("query", "--db", db, "--format", "json").stdout)[1]["path"] == odd
