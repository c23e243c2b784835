"""tagger.decode: every format, the excerpt windows, seeking, and bad files.

All audio is generated with tagger.synth into tmp_path; no fixtures on disk, no GTZAN.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tagger import decode, synth
from tagger.basics import AUDIO_EXTENSIONS
from tagger.decode import Excerpts, decode_excerpts, excerpt_windows
from tagger.errors import DecodeError

SR = 22050

# (extension, synth format): every format the tagger reads, and both codecs in .m4a
FORMATS = [("mp3", None), ("flac", None), ("ogg", None), ("oga", None), ("opus", None),
           ("m4a", None), ("m4a", "alac"), ("aac", None), ("wav", None), ("aiff", None),
           ("aif", None), ("au", None)]


def peak_hz(wave: np.ndarray, sample_rate: int = SR) -> float:
    """Frequency of the strongest FFT bin of a (samples,) array."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * sample_rate / len(wave))


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def check_excerpts(ex: Excerpts, n: int, samples: int) -> None:
    """n mono float32 windows of at most `samples`, the first n - 1 exactly that long."""
    assert isinstance(ex, Excerpts)
    assert len(ex.waveforms) == n
    for i, w in enumerate(ex.waveforms):
        assert w.dtype == np.float32 and w.ndim == 1
        assert 0.9 * samples <= len(w) <= samples
        if i < n - 1:
            assert len(w) == samples
        assert np.all(np.abs(w) <= 1.0)


# --- excerpt_windows (pure) ---------------------------------------------------------------

def test_windows_short_track_is_one_window():
    assert excerpt_windows(5.0, 3, 10.0) == [(0.0, 5.0)]
    assert excerpt_windows(10.0, 3, 10.0) == [(0.0, 10.0)]


def test_windows_gtzan_clip_and_medium_tracks():
    assert excerpt_windows(30.0, 3, 10.0) == [(0.0, 10.0), (10.0, 10.0), (20.0, 10.0)]
    assert excerpt_windows(20.0, 3, 10.0) == [(0.0, 10.0), (5.0, 10.0), (10.0, 10.0)]
    assert excerpt_windows(12.0, 2, 10.0) == [(0.0, 10.0), (2.0, 10.0)]


def test_windows_long_track_centred_at_quarters():
    assert excerpt_windows(240.0, 3, 10.0) == [(55.0, 10.0), (115.0, 10.0), (175.0, 10.0)]
    assert excerpt_windows(100.0, 1, 10.0) == [(45.0, 10.0)]


def test_windows_degenerate():
    assert excerpt_windows(0.0, 3, 10.0) == []
    assert excerpt_windows(-1.0, 3, 10.0) == []
    assert excerpt_windows(30.0, 0, 10.0) == []


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_windows_stay_inside_the_track(n):
    for duration in np.linspace(0.5, 200.0, 97):
        windows = excerpt_windows(float(duration), n, 10.0)
        assert len(windows) == (1 if duration <= 10.0 else n)
        assert [s for s, _ in windows] == sorted(s for s, _ in windows)
        for start, length in windows:
            assert start >= 0.0 and length <= 10.0
            assert start + length <= duration + 1e-9


def test_audio_extensions():
    assert AUDIO_EXTENSIONS == {".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac",
                                ".wav", ".aif", ".aiff", ".aifc", ".au"}


# --- every format round-trips --------------------------------------------------------------

@pytest.mark.parametrize("ext,fmt", FORMATS, ids=[f or e for e, f in FORMATS])
def test_every_format_round_trips(tmp_path, ext, fmt):
    path = synth.encode(tmp_path / f"tone.{ext}", synth.tone(440, 4.0, 44100, channels=2),
                        44100, fmt)
    ex = decode_excerpts(path, n_windows=3, window_seconds=1.0)
    check_excerpts(ex, 3, SR)
    assert ex.duration == pytest.approx(4.0, abs=0.1)
    assert ex.source_channels == 2
    assert ex.source_sample_rate == (48000 if ext == "opus" else 44100)
    for w in ex.waveforms:
        assert peak_hz(w) == pytest.approx(440, abs=3)
        assert rms(w) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)  # downmix keeps the level


@pytest.mark.parametrize("rate", [8000, 48000, 96000])
def test_wav_sample_rates(tmp_path, rate):
    path = synth.encode(tmp_path / "tone.wav", synth.tone(440, 2.0, rate), rate)
    ex = decode_excerpts(path)
    check_excerpts(ex, 1, 2 * SR)
    assert ex.source_sample_rate == rate
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=2)


@pytest.mark.parametrize("ext,fmt", [("wav", None), ("flac", None), ("m4a", None),
                                     ("m4a", "alac"), ("opus", None)])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channel_counts(tmp_path, ext, fmt, channels):
    path = synth.encode(tmp_path / f"tone.{ext}", synth.tone(440, 1.0, 48000, channels),
                        48000, fmt)
    ex = decode_excerpts(path)
    check_excerpts(ex, 1, SR)
    assert ex.source_channels == channels
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=3)
    assert rms(ex.waveforms[0]) < 0.5  # a normalised downmix never amplifies


def test_stereo_downmix_is_the_channel_mean(tmp_path):
    left, right = synth.tone(440, 1.0, SR)[0], synth.tone(660, 1.0, SR, amplitude=0.3)[0]
    path = synth.encode(tmp_path / "st.wav", np.stack([left, right]), SR, bit_depth=24)
    wave = decode_excerpts(path).waveforms[0]
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-4)


def test_old_pyav_fallback_averages_channels(tmp_path, monkeypatch):
    """Without AudioResampler(options=...) the channels are averaged in numpy."""
    real = av.AudioResampler

    def old_resampler(format=None, layout=None, rate=None, frame_size=None, **kw):
        if kw:
            raise TypeError("unexpected keyword argument 'options'")
        return real(format=format, layout=layout, rate=rate, frame_size=frame_size)

    monkeypatch.setattr(decode.av, "AudioResampler", old_resampler)
    left, right = synth.tone(440, 1.0, SR)[0], synth.tone(660, 1.0, SR, amplitude=0.3)[0]
    path = synth.encode(tmp_path / "st.flac", np.stack([left, right]), SR)
    wave = decode_excerpts(path).waveforms[0]
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-3)


# --- windows land where they should -------------------------------------------------------

def test_lossless_windows_are_sample_exact(tmp_path):
    """A 22.05 kHz mono flac needs no resampling: each window equals the source slice."""
    source = synth.noise(40.0, SR)[0]
    path = synth.encode(tmp_path / "noise.flac", source[None], SR, bit_depth=24)
    ex = decode_excerpts(path, n_windows=3, window_seconds=2.0)  # long: seeks
    assert ex.decoded_seconds < 3 * 2.0 + 1.0
    for (start, length), wave in zip(excerpt_windows(40.0, 3, 2.0), ex.waveforms, strict=True):
        first = round(start * SR)
        np.testing.assert_allclose(wave, source[first:first + round(length * SR)], atol=1e-5)


@pytest.mark.parametrize("ext", ["mp3", "ogg", "m4a", "opus"])
def test_lossy_windows_are_aligned(tmp_path, ext):
    """The seek + trim puts each window within a few ms of where it should start."""
    source = synth.noise(24.0, SR, channels=2)
    path = synth.encode(tmp_path / f"noise.{ext}", source, SR)
    ex = decode_excerpts(path, n_windows=3, window_seconds=1.0)
    mono = source.mean(axis=0)
    for (start, _), wave in zip(excerpt_windows(ex.duration, 3, 1.0), ex.waveforms,
                               strict=True):
        first = round(start * SR)
        reach = 2048
        segment = mono[first - reach:first + len(wave) + reach]
        corr = np.correlate(segment, wave, mode="valid")
        lag = int(np.argmax(corr)) - reach
        assert abs(lag) < 0.005 * SR, f"window at {start} s is {lag} samples off"


# --- lengths: tiny, silent, 20 minutes ----------------------------------------------------

def test_one_second_track(tmp_path):
    path = synth.encode(tmp_path / "one.mp3", synth.tone(440, 1.0, SR), SR)
    ex = decode_excerpts(path)
    assert len(ex.waveforms) == 1
    assert abs(len(ex.waveforms[0]) - SR) < 0.05 * SR
    assert ex.duration == pytest.approx(1.0, abs=0.1)


def test_silence_decodes_to_zeros(tmp_path):
    path = synth.encode(tmp_path / "silence.flac", synth.silence(3.0, SR, channels=2), SR)
    ex = decode_excerpts(path)
    check_excerpts(ex, 1, 3 * SR)
    assert not np.any(ex.waveforms[0])


def test_clicks_survive(tmp_path):
    path = synth.encode(tmp_path / "clicks.ogg", synth.clicks(2.0, 44100, channels=2), 44100)
    wave = decode_excerpts(path).waveforms[0]
    assert np.abs(wave).max() > 0.3


def _long_mp3(directory: Path, minutes: int) -> Path:
    """A CBR mp3 made fast: the frames of a bare 10 s encode, repeated."""
    piece = directory / "piece.mp3"
    if not piece.exists():
        synth.encode(piece, synth.tone(440, 10.0, 8000), 8000,
                     options={"write_xing": "0", "id3v2_version": "0"})
    path = directory / f"{minutes}min.mp3"
    path.write_bytes(piece.read_bytes() * (minutes * 6))
    return path


@pytest.fixture(scope="module")
def long_files(tmp_path_factory) -> dict[tuple[str, int], Path]:
    directory = tmp_path_factory.mktemp("long")
    files = {}
    for minutes in (3, 20):
        files["mp3", minutes] = _long_mp3(directory, minutes)
        files["flac", minutes] = synth.encode(directory / f"{minutes}min.flac",
                                              synth.tone(440, minutes * 60.0, 8000), 8000)
    return files


def _best_time(path: Path, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        decode_excerpts(path)
        times.append(time.perf_counter() - t)
    return min(times)


@pytest.mark.parametrize("ext", ["mp3", "flac"])
def test_twenty_minutes_costs_what_three_do(long_files, ext):
    short, long = decode_excerpts(long_files[ext, 3]), decode_excerpts(long_files[ext, 20])
    # (each repeated 10 s mp3 piece carries the encoder's delay and padding: +1.5 %)
    assert short.duration == pytest.approx(180.0, rel=0.02)
    assert long.duration == pytest.approx(1200.0, rel=0.02)
    check_excerpts(long, 3, 10 * SR)
    # seeking: only the three windows (plus a frame or a block before each) are decoded
    assert long.decoded_seconds < 31.0 and short.decoded_seconds < 31.0
    assert _best_time(long_files[ext, 20]) < 3 * _best_time(long_files[ext, 3]) + 0.05


def test_unknown_duration_is_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "_metadata_duration", lambda container, stream: None)
    path = synth.encode(tmp_path / "tone.aac", synth.tone(440, 40.0, SR), SR)
    ex = decode_excerpts(path, n_windows=3, window_seconds=2.0)
    assert ex.duration == pytest.approx(40.0, abs=0.2)
    check_excerpts(ex, 3, 2 * SR)
    assert ex.decoded_seconds < 40.0  # the measuring pass only demuxes


def test_unseekable_format_falls_back_to_one_pass(tmp_path, monkeypatch):
    source = synth.noise(40.0, SR)[0]
    path = synth.encode(tmp_path / "noise.wav", source[None], SR, bit_depth=24)
    seeking = decode_excerpts(path, n_windows=3, window_seconds=2.0)

    def refuse(self, seconds):
        raise decode._SeekFailed()

    monkeypatch.setattr(decode._Decoder, "seek", refuse)
    one_pass = decode_excerpts(path, n_windows=3, window_seconds=2.0)
    for a, b in zip(seeking.waveforms, one_pass.waveforms, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sample_rate_change_mid_stream(tmp_path):
    """Two bare mp3s at different rates, concatenated: the resampler is rebuilt."""
    bare = {"write_xing": "0", "id3v2_version": "0"}
    a = synth.encode(tmp_path / "a.mp3", synth.tone(440, 2.0, 22050), 22050, options=bare)
    b = synth.encode(tmp_path / "b.mp3", synth.tone(440, 2.0, 44100), 44100, options=bare)
    path = tmp_path / "both.mp3"
    path.write_bytes(a.read_bytes() + b.read_bytes())
    ex = decode_excerpts(path)
    assert sum(len(w) for w in ex.waveforms) > 3.5 * SR
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=3)


# --- bad inputs -----------------------------------------------------------------------------

def _reason(path) -> str:
    with pytest.raises(DecodeError) as info:
        decode_excerpts(path)
    assert info.value.path == os.fsdecode(path)
    assert str(info.value).startswith(os.fsdecode(path) + ": ")
    return info.value.reason


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp3").touch()
    assert _reason(tmp_path / "empty.mp3") == "file is empty"


def test_nonexistent_path(tmp_path):
    assert _reason(tmp_path / "nope.flac") == "file not found"


def test_directory_named_like_audio(tmp_path):
    (tmp_path / "x.mp3").mkdir()
    assert _reason(tmp_path / "x.mp3") == "is a directory"


@pytest.mark.parametrize("seed", [0, 1])
def test_random_bytes_named_mp3(tmp_path, seed):
    path = tmp_path / "random.mp3"
    path.write_bytes(np.random.default_rng(seed).bytes(100_000))
    # random bytes can hold what looks like an mp3 frame header: then it is "corrupt"
    assert _reason(path).startswith(("not an audio file", "truncated or corrupt data"))


def test_text_file_named_flac(tmp_path):
    path = tmp_path / "notes.flac"
    path.write_text("These are not the droids you are looking for.\n" * 200)
    assert "not an audio file" in _reason(path)


def test_no_audio_stream(tmp_path):
    path = tmp_path / "picture.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode(None))
    assert _reason(path) == "no audio stream"


def test_permission_denied(tmp_path, monkeypatch):
    path = synth.encode(tmp_path / "locked.flac", synth.tone(440, 1.0, SR), SR)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode, "open", refuse, raising=False)  # root can read anything
    assert _reason(path) == "permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = synth.encode(tmp_path / "locked.flac", synth.tone(440, 1.0, SR), SR)
    path.chmod(0)
    try:
        assert _reason(path) == "permission denied"
    finally:
        path.chmod(0o644)


def test_unexpected_errors_become_decode_errors(tmp_path, monkeypatch):
    path = synth.encode(tmp_path / "tone.flac", synth.tone(440, 1.0, SR), SR)

    def boom(*args, **kwargs):
        raise RuntimeError("something odd")

    monkeypatch.setattr(decode, "_decode", boom)
    assert _reason(path) == "decoder failed (RuntimeError: something odd)"


@pytest.fixture(scope="module")
def twelve_seconds(tmp_path_factory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("twelve")
    audio = synth.tone(440, 12.0, 44100, channels=2)
    return {ext: synth.encode(directory / f"t.{ext}", audio, 44100).read_bytes()
            for ext in ("mp3", "flac")}


@pytest.mark.parametrize("ext", ["mp3", "flac"])
def test_truncated_to_half(tmp_path, twelve_seconds, ext):
    """Cut in half: what is there decodes (the window past the cut is dropped), or a
    DecodeError; never another exception."""
    data = twelve_seconds[ext]
    path = tmp_path / f"half.{ext}"
    path.write_bytes(data[:len(data) // 2])
    try:
        ex = decode_excerpts(path, n_windows=3, window_seconds=2.0)
    except DecodeError as e:
        assert e.reason
        return
    assert 1 <= len(ex.waveforms) < 3
    for w in ex.waveforms:
        assert len(w) > 0 and w.dtype == np.float32
        assert peak_hz(w) == pytest.approx(440, abs=3)


@pytest.mark.parametrize("ext", ["mp3", "flac"])
def test_truncated_to_100_bytes(tmp_path, twelve_seconds, ext):
    path = tmp_path / f"stub.{ext}"
    path.write_bytes(twelve_seconds[ext][:100])
    assert _reason(path)


def test_corrupt_middle_is_skipped(tmp_path, twelve_seconds):
    data = bytearray(twelve_seconds["mp3"])
    middle = len(data) // 2
    data[middle:middle + 5000] = np.random.default_rng(2).bytes(5000)
    path = tmp_path / "damaged.mp3"
    path.write_bytes(bytes(data))
    ex = decode_excerpts(path, n_windows=3, window_seconds=2.0)
    assert len(ex.waveforms) == 3


# --- file names -----------------------------------------------------------------------------

def test_non_ascii_file_name(tmp_path):
    path = synth.encode(tmp_path / "Björk – Jóga.flac", synth.tone(440, 1.0, SR), SR)
    ex = decode_excerpts(path)
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=2)


def test_non_utf8_file_name(tmp_path):
    source = synth.encode(tmp_path / "plain.flac", synth.tone(440, 1.0, SR), SR)
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \xff.flac"  # latin-1 bytes, invalid UTF-8
    try:
        os.rename(source, raw)
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses non-UTF-8 names")
    ex = decode_excerpts(raw)
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=2)
    ex = decode_excerpts(os.fsdecode(raw))  # the str form (surrogate escapes) works too
    assert len(ex.waveforms) == 1
    with pytest.raises(DecodeError) as info:
        decode_excerpts(raw + b".missing")
    assert info.value.reason == "file not found"


def test_quiet_ffmpeg_is_idempotent():
    decode.quiet_ffmpeg()
    decode.quiet_ffmpeg()
    assert av.logging.get_level() is None


# --- preallocated and zero-filled files ------------------------------------------------------

SPARSE = 4 * 2**30     # 4 GiB of zeros that take no disk (truncate() makes a sparse file)


def _sparse(path: Path, head: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(SPARSE)
    return path


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("heads")
    return {ext: synth.encode(directory / f"t.{ext}", synth.tone(440, 3.0, SR), SR).read_bytes()
            for ext in ("mp3", "wav", "flac")}


@pytest.mark.parametrize("name,head", [("zeros.mp3", None), ("zeros.flac", None),
                                       ("header.mp3", ("mp3", 1000)),
                                       ("header.wav", ("wav", 44)), ("header.flac", ("flac", 100)),
                                       ("three-seconds-then-zeros.mp3", ("mp3", None))])
def test_zero_filled_files_fail_with_a_reason(tmp_path, heads, name, head):
    """FFmpeg read such files to the end looking for a frame or a chunk (over a minute for
    5 GB); the read now ends where the zeros begin."""
    data = b"" if head is None else heads[head[0]][:head[1]]
    reason = _reason(_sparse(tmp_path / name, data))
    assert reason.startswith("no audio found, only zero bytes from byte ")
    assert reason.endswith(" on (a preallocated or unfinished file?)")


def test_audio_before_zeros_is_decoded(tmp_path, heads):
    """A WAV whose data chunk is followed by zeros (its footer scan met them)."""
    ex = decode_excerpts(_sparse(tmp_path / "then-zeros.wav", heads["wav"]))
    check_excerpts(ex, 1, 3 * SR)
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=2)


@pytest.mark.parametrize("ext", ["wav", "aiff"])
def test_digital_silence_is_not_zero_fill(tmp_path, ext):
    """40 s of digital silence (11 MB of zero bytes) before a tone: silence decodes."""
    audio = np.concatenate([synth.silence(40.0, 48000, 2), synth.tone(440, 5.0, 48000, 2)], axis=1)
    path = synth.encode(tmp_path / f"late.{ext}", audio, 48000, bit_depth=24)
    ex = decode_excerpts(path, n_windows=3, window_seconds=2.0)
    check_excerpts(ex, 3, 2 * SR)
    ex = decode_excerpts(path, n_windows=1, window_seconds=44.0)     # one pass, front to back
    assert peak_hz(ex.waveforms[0][-3 * SR:]) == pytest.approx(440, abs=2)


def test_big_cover_art_and_padding_before_the_audio(tmp_path):
    from mutagen.id3 import APIC, ID3
    path = synth.encode(tmp_path / "cover.mp3", synth.tone(440, 3.0, SR), SR)
    tags = ID3(path)
    tags.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="front",
                  data=np.random.default_rng(0).bytes(20 * 2**20)))
    tags.save(path, padding=lambda info: 1 << 20)     # and 1 MB of zero padding
    ex = decode_excerpts(path)
    check_excerpts(ex, 1, 3 * SR)
    assert peak_hz(ex.waveforms[0]) == pytest.approx(440, abs=3)
