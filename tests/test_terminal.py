"""Terminals that cannot show every character (LC_ALL=C, a latin-1 stdout): tagger's own
output falls back to characters they can show, never a UnicodeEncodeError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_track
from test_interrupt import stored

ENCODINGS = {"latin-1": {"PYTHONIOENCODING": "latin-1"},
             "C locale": {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, model_path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("term")
    library = root / "Music"
    write_track(library / "Björk – Jóga.wav", seconds=1.5)
    write_track(library / "日本語.flac", seconds=1.5, kind="noise")
    (library / "broken.mp3").write_text("not audio")
    return library, root


def run(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **env_extra}
    return subprocess.run([sys.executable, "-m", "tagger", *args], capture_output=True, env=env,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ENCODINGS)
def test_every_command_prints_on_a_narrow_terminal(scanned, model_path, setting):
    library, root = scanned
    env, db = ENCODINGS[setting], root / f"{setting}.db"
    done = run(env, "scan", str(library), "--db", str(db), "--model", str(model_path),
               "--workers", "0")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert stored(db) == 3
    summary = done.stdout.decode("latin-1")
    assert "Scanned 3 tracks" in summary and "2 classified, 0 unchanged, 1 failed" in summary
    assert "#" in summary                            # the histogram, in characters that fit
    for args in (["query", "--db", str(db)],
                 ["show", str(library / "Björk – Jóga.wav"), str(library / "broken.mp3"),
                  "--model", str(model_path)],
                 ["write-tags", "--db", str(db), "--dry-run", "--min-confidence", "0"],
                 ["query", "--db", str(db), "--format", "json"]):
        done = run(env, *args)
        failed = args[0] == "show"                  # broken.mp3 could not be classified
        assert done.returncode == int(failed), (args, done.stderr.decode(errors="replace"))
        assert b"Traceback" not in done.stderr
        assert b"broken.mp3" in done.stdout or args[0] == "write-tags"
