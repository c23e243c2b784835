"""tagger show --timeline: a sliding window over the whole track, on generated audio that
changes character part-way (tones, then clicks), through the tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tagger
from tagger import synth
from tagger.decode import decode_excerpts

from conftest import run, write_track

SR = 22050


def tones(seconds: float) -> np.ndarray:
    """A different tone every 2 s: windows at different places hold different audio."""
    return np.concatenate([synth.tone(220.0 * (i + 1), 2.0, SR) for i in range(int(seconds // 2))],
                          axis=1)


@pytest.fixture
def mix(tmp_path):
    """12 s of tones, then 13 s of clicks (25 s); and the tones alone in tones.wav."""
    synth.encode(tmp_path / "tones.wav", tones(12), SR)
    return synth.encode(tmp_path / "mix.wav",
                        np.concatenate([tones(12), synth.clicks(13.0, SR)], axis=1), SR)


@pytest.fixture
def model(model_path):
    return tagger.load_model(model_path, "cpu")


def test_windows_step_by_the_hop_and_the_last_one_ends_at_the_end(mix, model):
    t = model.timeline(mix, window=4, hop=2)
    assert t.path == str(mix) and t.model_id == model.model_id
    assert (t.window_seconds, t.hop_seconds) == (4, 2)
    # every 2 s while a whole window fits, then the track's last 4 s
    assert [w.start for w in t.windows] == pytest.approx([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 21])
    assert [w.end for w in t.windows] == pytest.approx([4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25])
    for w in t.windows:
        assert set(w.probabilities) == set(model.genres)
        assert sum(w.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert t.genre in model.genres
    assert sum(t.overall.values()) == pytest.approx(1.0, abs=1e-5)


def test_each_window_is_its_own_stretch_of_audio(mix, model, tmp_path):
    """The windows over the tones give what the model gives for those seconds alone."""
    alone = decode_excerpts(tmp_path / "tones.wav", SR, n_windows=1, window_seconds=12).waveforms[0]
    t = model.timeline(mix, window=4, hop=2)
    over_tones = [w for w in t.windows if w.end <= 12]
    assert len(over_tones) == 5
    for w in over_tones:
        expected = model.classifier.classify([[alone[round(w.start * SR):round(w.end * SR)]]])[0]
        got = np.array([w.probabilities[g] for g in model.genres])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose([t.windows[0].probabilities[g] for g in model.genres],
                           [t.windows[-1].probabilities[g] for g in model.genres], atol=1e-5)


def test_json_gives_the_probabilities_of_every_window(mix, model_path):
    out = run("show", "--timeline", mix, "--window", 4, "--hop", 2, "--model", model_path,
              "--device", "cpu", "--format", "json").stdout
    data = json.loads(out)
    assert set(data) == {"path", "model_id", "window_seconds", "hop_seconds", "windows"}
    assert data["path"] == str(mix) and data["window_seconds"] == 4 and data["hop_seconds"] == 2
    assert len(data["windows"]) == 12
    first = data["windows"][0]
    assert set(first) == {"start", "end", "probabilities"} and (first["start"], first["end"]) == (0, 4)
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_the_table_is_a_heat_strip_per_genre_with_a_time_axis(mix, model_path):
    out = run("show", "--timeline", mix, "--window", 4, "--hop", 2, "--model", model_path,
              "--device", "cpu").stdout
    assert "mix.wav" in out and "Overall:" in out
    assert "0:00" in out and "0:20" in out
    assert sum(name in out for name in ("Blues", "Classical", "Country", "Disco", "Hip-Hop",
                                        "Jazz", "Metal", "Pop", "Reggae", "Rock")) == 10


def test_png_draws_the_timeline(mix, model_path, tmp_path):
    args = ("show", "--timeline", mix, "--window", 4, "--hop", 2, "--model", model_path,
            "--device", "cpu", "--png")
    r = run(*args, tmp_path / "nowhere" / "timeline.png", ok=1)     # said before decoding
    assert r.stderr.startswith("Error: ") and "no folder" in r.stderr and r.stdout == ""
    png = tmp_path / "timeline.png"
    run(*args, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 100


def test_a_track_shorter_than_a_window_is_one_window(tmp_path, model):
    short = write_track(tmp_path / "short.flac", seconds=2.0, kind="noise")
    t = model.timeline(short, window=4, hop=2)
    assert len(t.windows) == 1
    assert (t.windows[0].start, t.windows[0].end) == pytest.approx((0, 2), abs=0.01)


def test_silent_windows_have_no_probabilities(tmp_path, model):
    path = synth.encode(tmp_path / "fade.wav",
                        np.concatenate([tones(4), synth.silence(4.0, SR)], axis=1), SR)
    t = model.timeline(path, window=2, hop=2)
    assert [bool(w.probabilities) for w in t.windows] == [True, True, False, False]
    assert sum(t.overall.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_corrupt_file_is_one_error_line(tmp_path, model_path):
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all" * 100)
    r = run("show", "--timeline", bad, "--model", model_path, "--device", "cpu", ok=1)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ") and "bad.mp3" in r.stderr


def test_timeline_takes_exactly_one_file(mix, model_path, tmp_path):
    r = run("show", "--timeline", mix, mix, "--model", model_path, ok=2)
    assert "--timeline" in r.output and "one file" in r.output
    r = run("show", "--timeline", tmp_path, "--model", model_path, ok=2)
    assert "one file" in r.output


def test_timeline_options_need_timeline(mix, model_path):
    r = run("show", mix, "--window", 4, "--model", model_path, ok=2)
    assert "--timeline" in r.output
    r = run("show", "--timeline", mix, "--window", 4, "--hop", 0, "--model", model_path, ok=2)


def test_decoding_holds_about_a_window_whatever_the_length(tmp_path):
    """A file is read once, holding a few windows' audio: as much for 80 s as for 20 s."""
    import tracemalloc
    from tagger.decode import sliding_windows
    peaks = []
    for seconds in (20, 80):
        path = synth.encode(tmp_path / f"{seconds}.wav", synth.noise(seconds, SR), SR)
        tracemalloc.start()
        try:
            starts = [s for s, _ in sliding_windows(path, SR, window_seconds=4, hop_seconds=5)]
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        # a hop longer than the window leaves gaps; the last window ends at the end
        assert starts == [k * 5 * SR for k in range(seconds // 5)] + [(seconds - 4) * SR]
    assert peaks[1] < 1.2 * peaks[0] and peaks[1] < 10 * (4 * SR * 4)    # 10 windows' worth
