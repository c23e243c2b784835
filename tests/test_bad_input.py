"""Every kind of bad or odd input from the issue, in one library, through a real scan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import chmod_works, run, write_track
from tagger import synth
from tagger.genres import GENRES


def cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture(scope="module")
def odd_library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd") / "Music"
    ok = root / "valid"
    write_track(ok / "one-second.flac", seconds=1.0)
    write_track(ok / "half-second.wav", seconds=0.5, kind="noise")
    write_track(ok / "silence.flac", seconds=5.0, kind="silence")
    write_track(ok / "8k.wav", seconds=3.0, sample_rate=8000)
    write_track(ok / "48k.wav", seconds=3.0, sample_rate=48000, channels=2)
    write_track(ok / "96k.wav", seconds=3.0, sample_rate=96000, kind="noise")
    write_track(ok / "stereo.mp3", seconds=3.0, channels=2, kind="clicks")
    write_track(ok / "six-channels.flac", seconds=3.0, channels=6, kind="noise")
    write_track(ok / "Björk – Jóga.m4a", seconds=2.0, channels=2)
    write_track(ok / "日本語.ogg", seconds=2.0, channels=2)
    raw = os.fsencode(str(ok)) + b"/latin1-\xe9t\xe9.wav"
    shutil.copy(write_track(ok / "tmp.wav", seconds=2.0), raw)
    (ok / "tmp.wav").unlink()
    long = synth.tone(330.0, 60.0, 8000)                       # 20 minutes, cheaply
    synth.encode(ok / "twenty-minutes.wav", np.tile(long, (1, 20)), 8000)

    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.mp3").write_bytes(b"")
    cut(write_track(bad / "cut-short.flac", seconds=4.0, kind="noise"), 0.01)
    cut(write_track(bad / "cut-short.mp3", seconds=4.0, kind="noise"), 0.01)
    cut(write_track(bad / "half.flac", seconds=4.0, kind="noise"), 0.5)   # decodable part
    cut(write_track(bad / "half.mp3", seconds=4.0, kind="noise"), 0.5)
    (bad / "random.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    (bad / "text.flac").write_text("not audio at all\n" * 100)

    odd = root / "odd"
    (odd / "folder.mp3").mkdir(parents=True)                     # a directory named like audio
    (odd / "dangling.mp3").symlink_to(odd / "nowhere.mp3")
    (odd / "loop").symlink_to(odd)                               # a symlink loop
    (odd / ".hidden").mkdir()
    write_track(odd / ".hidden" / "secret.wav", seconds=1.0)
    (odd / "notes.txt").write_text("not a track")
    return root


def test_scan_survives_everything(odd_library, model_path, tmp_path):
    db = tmp_path / "index.db"
    result = run("scan", odd_library, "--db", db, "--model", model_path, "--workers", "2")
    assert "13 classified, 0 unchanged, 5 failed, 1 silent" in result.stdout
    rows = json.loads(run("query", "--db", db, "--format", "json").stdout)
    by_name = {os.path.basename(r["path"]): r for r in rows}
    valid = {"one-second.flac", "half-second.wav", "8k.wav", "48k.wav", "96k.wav", "stereo.mp3",
             "six-channels.flac", "Björk – Jóga.m4a", "日本語.ogg", os.fsdecode(b"latin1-\xe9t\xe9.wav"),
             "twenty-minutes.wav"}
    failed = {"zero.mp3", "cut-short.flac", "cut-short.mp3", "random.mp3", "text.flac"}
    halves = {"half.flac", "half.mp3"}    # cut short, but with audio: classified from that
    assert set(by_name) == valid | failed | halves | {"silence.flac"}
    for name in valid | halves:
        row = by_name[name]
        assert row["error"] is None, (name, row["error"])
        assert set(row["probabilities"]) == set(GENRES)
    for name in failed:
        assert by_name[name]["genre"] is None and by_name[name]["error"], name
    assert by_name["zero.mp3"]["error"] == "file is empty"
    assert by_name["text.flac"]["error"].startswith("not an audio file")
    assert by_name["silence.flac"]["genre"] is None
    assert by_name["silence.flac"]["error"].startswith("silent")
    for name in failed:   # one line per failure on stderr, "path: reason"
        assert f"{name}: {by_name[name]['error']}" in result.stderr
    # the non-UTF-8 name round-trips to the exact bytes on disk
    latin = by_name[os.fsdecode(b"latin1-\xe9t\xe9.wav")]["path"]
    assert os.path.exists(os.fsencode(latin))


def test_twenty_minute_track_costs_no_more_than_a_short_one(odd_library):
    from tagger.decode import decode_excerpts
    long = decode_excerpts(str(odd_library / "valid" / "twenty-minutes.wav"))
    assert long.duration == pytest.approx(1200.0, abs=0.1)
    assert [len(w) for w in long.waveforms] == [220500] * 3
    assert long.decoded_seconds < 40          # three 10 s windows, not 1,200 s


def test_unreadable_file_is_a_failure_row(model_path, tmp_path):
    """Root reads a chmod 000 file, so as root the scan runs without the capabilities that
    override file permissions (setpriv, from util-linux)."""
    music = tmp_path / "Music"
    write_track(music / "readable.wav", seconds=1.5)
    locked = write_track(music / "locked.flac", seconds=1.5)
    os.chmod(locked, 0)
    cmd = [sys.executable, "-m", "tagger", "scan", str(music), "--db", str(tmp_path / "i.db"),
           "--model", str(model_path), "--workers", "0"]
    if not chmod_works():
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] + cmd
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 classified, 0 unchanged, 1 failed" in done.stdout
    assert f"{locked}: permission denied" in done.stderr
    # not the file's fault: once it can be read, the next scan classifies it (chmod does
    # not change the modification time)
    os.chmod(locked, 0o644)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert "1 classified, 1 unchanged, 0 failed" in again.stdout, again.stderr
