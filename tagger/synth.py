"""Test signals and a small encoder: the project's own audio fixtures.

Tests, benchmarks and training smoke tests generate their audio here instead of shipping
binary fixtures. Every generator returns float32 of shape (channels, samples) in [-1, 1];
`encode` writes such an array in any format the tagger reads, with PyAV (no system ffmpeg).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def _shape(mono: np.ndarray, channels: int) -> np.ndarray:
    """(samples,) -> (channels, samples) float32, the same signal on every channel."""
    return np.ascontiguousarray(np.tile(mono.astype(np.float32), (channels, 1)))


def tone(freq: float, seconds: float, sample_rate: int = 22050, channels: int = 1,
         amplitude: float = 0.5) -> np.ndarray:
    """A sine at `freq` Hz. Returns (channels, round(seconds * sample_rate)) float32."""
    t = np.arange(round(seconds * sample_rate), dtype=np.float64) / sample_rate
    return _shape(amplitude * np.sin(2 * np.pi * freq * t), channels)


def noise(seconds: float, sample_rate: int = 22050, channels: int = 1, amplitude: float = 0.3,
          seed: int = 0) -> np.ndarray:
    """Uniform white noise, independent per channel. Returns (channels, samples) float32."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    return rng.uniform(-amplitude, amplitude, size=(channels, n)).astype(np.float32)


def clicks(seconds: float, sample_rate: int = 22050, channels: int = 1, rate_hz: float = 4.0,
           seed: int = 0) -> np.ndarray:
    """A click track: short decaying noise bursts `rate_hz` times a second, with slight
    random timing jitter. Returns (channels, samples) float32."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    out = np.zeros(n, dtype=np.float64)
    burst_len = max(1, int(0.01 * sample_rate))
    burst = rng.uniform(-1, 1, burst_len) * np.exp(-np.arange(burst_len) / (burst_len / 5))
    period = sample_rate / rate_hz
    jitter = int(0.005 * sample_rate)
    for k in range(int(seconds * rate_hz) + 1):
        start = int(k * period) + (int(rng.integers(-jitter, jitter + 1)) if jitter else 0)
        start = min(max(start, 0), n)
        seg = out[start:start + burst_len]
        seg += 0.8 * burst[:len(seg)]
    return _shape(out, channels)


def silence(seconds: float, sample_rate: int = 22050, channels: int = 1) -> np.ndarray:
    """Digital silence. Returns (channels, samples) float32 zeros."""
    return np.zeros((channels, round(seconds * sample_rate)), dtype=np.float32)


@dataclass(frozen=True)
class _Target:
    container: str          # FFmpeg muxer name
    codec: str              # FFmpeg encoder name
    sample_format: str      # the encoder's input sample format
    rates: tuple[int, ...] | None = None   # allowed sample rates (None: any)
    fixed_rate: int | None = None          # always encode at this rate (opus)
    bit_rate: int | None = None
    channels: tuple[int, ...] = (1, 2, 6)  # channel counts the encoder takes
    options: tuple[tuple[str, str], ...] = ()


def _target(fmt: str, bit_depth: int) -> _Target:
    wide = bit_depth > 16
    if bit_depth not in (16, 24):
        raise ValueError(f"bit_depth must be 16 or 24, not {bit_depth}")
    mp3_rates = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
    vorbis = _Target("ogg", "vorbis", "fltp", channels=(2,),  # FFmpeg's own encoder: stereo only
                     options=(("strict", "experimental"),))
    table = {
        "mp3": _Target("mp3", "libmp3lame", "fltp", mp3_rates, bit_rate=64000,
                       channels=(1, 2)),
        "flac": _Target("flac", "flac", "s32" if wide else "s16"),
        "ogg": vorbis,
        "oga": vorbis,
        "opus": _Target("opus", "libopus", "flt", fixed_rate=48000, bit_rate=64000),
        "m4a": _Target("ipod", "aac", "fltp", bit_rate=96000),
        "aac": _Target("adts", "aac", "fltp", bit_rate=96000),
        "alac": _Target("ipod", "alac", "s32p" if wide else "s16p"),
        "wav": _Target("wav", "pcm_s24le" if wide else "pcm_s16le", "s32" if wide else "s16"),
        "aiff": _Target("aiff", "pcm_s24be" if wide else "pcm_s16be", "s32" if wide else "s16"),
        "aif": _Target("aiff", "pcm_s24be" if wide else "pcm_s16be", "s32" if wide else "s16"),
        "au": _Target("au", "pcm_s24be" if wide else "pcm_s16be", "s32" if wide else "s16"),
    }
    if fmt not in table:
        raise ValueError(f"cannot encode format {fmt!r}; one of {sorted(table)}")
    return table[fmt]


def encode(path: str | Path, audio: np.ndarray, sample_rate: int, format: str | None = None,
           bit_depth: int = 16, options: dict[str, str] | None = None) -> Path:
    """Write `audio`, (channels, samples) float32 in [-1, 1], to `path` with PyAV.

    `format` defaults to the extension: mp3 (libmp3lame), flac, ogg/oga (vorbis), opus
    (libopus, resampled to 48 kHz), m4a (AAC; format='alac' gives ALAC in .m4a), aac (ADTS),
    wav, aiff/aif, au (PCM, 16 or 24 bits by `bit_depth`). 1, 2 or 6 channels.
    `options` go to the muxer, e.g. {"write_xing": "0", "id3v2_version": "0"} gives a bare
    mp3 whose bytes can be repeated to make a long CBR file cheaply.
    Raises ValueError for a format, channel count or sample rate the codec cannot take.
    Returns the path.
    """
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    channels = audio.shape[0]
    if channels not in _LAYOUTS:
        raise ValueError(f"{channels} channels: only 1, 2 or 6 are supported")
    fmt = (format or path.suffix.lstrip(".")).lower()
    target = _target(fmt, bit_depth)
    if channels not in target.channels:
        raise ValueError(f"{target.codec} cannot encode {channels} channels")
    if target.rates is not None and sample_rate not in target.rates:
        raise ValueError(f"{target.codec} cannot encode at {sample_rate} Hz")
    out_rate = target.fixed_rate or sample_rate
    layout = _LAYOUTS[channels]
    audio = np.clip(audio, -1.0, 1.0)

    with av.open(str(path), mode="w", format=target.container,
                 container_options=options or {}) as container:
        stream = container.add_stream(target.codec, rate=out_rate,
                                      options=dict(target.options))
        ctx = stream.codec_context
        ctx.layout = layout
        ctx.format = target.sample_format
        if target.bit_rate:
            ctx.bit_rate = target.bit_rate
        ctx.open(strict=False)  # now frame_size is known
        # The resampler converts format and rate and cuts frames of the encoder's size.
        resampler = av.AudioResampler(format=target.sample_format, layout=layout,
                                      rate=out_rate, frame_size=ctx.frame_size or 4096)
        step = 1 << 15
        for offset in range(0, audio.shape[1], step):
            chunk = np.ascontiguousarray(audio[:, offset:offset + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = offset
            frame.time_base = Fraction(1, sample_rate)
            for out in resampler.resample(frame):
                container.mux(stream.encode(out))
        for out in resampler.resample(None):
            if out is not None:
                container.mux(stream.encode(out))
        container.mux(stream.encode(None))
    return path
