"""Worker-side audio front end: decode only the excerpt windows of a track.

One code path for every format: PyAV (FFmpeg) demuxes and decodes, and FFmpeg's own
resampler (libswresample) downmixes to mono and converts to float32 at the model's rate.
soundfile + the same resampler was measured (benchmarks/decoders.py: 3 x 10 s of a
4-minute wav or flac take about the same time either way), so there is no second path.

How a track is read:
- The duration comes from the stream or container metadata. When it is unknown (some raw
  streams), one demux-only pass (no decoding, nothing kept) measures it.
- Tracks no longer than n_windows * window_seconds are decoded in one forward pass that
  fills every window at once (the windows cover the track, and may overlap).
- Longer tracks: for each window, seek backwards to a little (0.2 s) before its start,
  decode forward, drop what comes before the start, stop when the window is full; aim
  earlier if a seek overshot. The cost is then independent of the track's length (a
  20-minute file decodes ~31 s of audio, like a 3-minute one). If the format cannot seek,
  the file is read once, front to back.
- Downmix: FFmpeg's rematrixing normalised to unit gain (rematrix_maxval=1), so stereo
  gives (L + R) / 2 like librosa.to_mono, and 5.1 a centre-weighted mix without LFE.
- A new resampler per window (windows are discontinuous), flushed at the window's end.
- Bad data: undecodable packets are skipped; a file cut short gives what was there
  (windows past the end come out short or are dropped when empty). Every failure is a
  DecodeError with a short reason; nothing else escapes.
- Zero-filled files (preallocated, unfinished downloads): FFmpeg would read them to the end
  looking for a frame or a chunk. It reads through _Source, which treats a file as cut short
  where 2 MB of zero bytes come with no audio decoded (a file of only zeros fails at once).

`tagger show --timeline` reads a whole track instead (sliding_windows): one forward pass
through one resampler, cut into overlapping windows, one window's audio held at a time.

A URI (s3://, gs://, file://, any fsspec protocol) is read through tagger.objects: the same
decoding, over a block cache that fetches only the blocks the windows touch. A local path
is opened directly (unbuffered), with no fsspec import.

FFmpeg's log output is off by default in PyAV; `quiet_ffmpeg()` makes sure of it (call it
in each worker process).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import av.logging
import numpy as np

from tagger.errors import DecodeError, UserError
from tagger.objects import is_uri


_MAX_BAD_PACKETS = 200  # consecutive undecodable packets before a window is given up
_SEEK_MARGINS = (0.2, 1.0, 5.0)  # seconds to aim before a window; more if a seek lands late
# FFmpeg's stream probing reads up to 5 MB by default; on WAV that costs about 20 ms a file
# (as much as decoding the three windows). 64 KiB finds every format here; a file it does
# not identify is opened again with the defaults. (fflags=fastseek was tried too: it saves
# 5-10 ms a seek on a 20-minute mp3 but labels frames up to one frame late after a seek.)
_QUICK_OPEN = {"probesize": "65536"}
# FFmpeg reads as far as it must to find a frame or the next chunk: through a whole
# preallocated or zero-filled file (over a minute for 5 GB), which probesize does not bound.
# So FFmpeg reads the file through _Source, which ends it where a run of this many zero bytes
# begins with no audio decoded in between (digital silence in a WAV decodes: it never counts).
_ZERO_RUN = 2 * 2**20


def quiet_ffmpeg() -> None:
    """Discard FFmpeg's log messages (warnings about damaged files would flood stderr)."""
    av.logging.set_level(None)


def excerpt_windows(duration: float, n_windows: int,
                    window_seconds: float) -> list[tuple[float, float]]:
    """(start_seconds, length_seconds) of the excerpt windows to decode, in start order.

    - duration <= window_seconds: one window, the whole track.
    - up to n_windows * window_seconds: n windows evenly spaced from 0 to the end
      (a 30 s clip with 3 x 10 s gives starts 0, 10, 20; shorter tracks overlap).
    - longer: n windows centred at (i + 1) / (n + 1) of the track, avoiding intro and outro.
    """
    if duration <= 0 or n_windows <= 0 or window_seconds <= 0:
        return []
    if duration <= window_seconds:
        return [(0.0, float(duration))]
    if duration <= n_windows * window_seconds:
        span = duration - window_seconds
        return [(span * i / (n_windows - 1), float(window_seconds)) for i in range(n_windows)]
    return [(duration * (i + 1) / (n_windows + 1) - window_seconds / 2, float(window_seconds))
            for i in range(n_windows)]


@dataclass
class Excerpts:
    """The decoded windows of one track."""

    waveforms: list[np.ndarray]   # one float32 (samples,) mono array per window, at sample_rate
    duration: float               # seconds, the whole track (metadata, or measured)
    source_sample_rate: int
    source_channels: int
    decoded_seconds: float = 0.0  # source audio actually decoded: the cost of this call
    fingerprint: str | None = None  # tagger.fingerprint of the file (the scan's workers take it)


class _Window:
    """One window being filled: its own resampler, the samples to skip, the output."""

    def __init__(self, start: float, length: float, sample_rate: int):
        self.start, self.end = start, start + length
        self.sample_rate = sample_rate
        self.wanted = round(length * sample_rate)
        self.skip: int | None = None       # output samples before `start`
        self.chunks: list[np.ndarray] = []
        self.have = 0
        self.resampler: av.AudioResampler | None = None
        self.template: tuple[str, str, int] | None = None
        self.mean_channels = False
        self.past_end = False              # a frame at or after `end` was seen
        self.first_time: float | None = None   # time of the first frame fed

    @property
    def done(self) -> bool:
        return self.past_end or (self.skip is not None and self.have >= self.skip + self.wanted)

    def feed(self, frame: av.AudioFrame, t: float) -> None:
        """Resample `frame` (starting at `t` seconds) into this window if it overlaps."""
        if t >= self.end:
            self.past_end = True
        if self.done or t + frame.samples / frame.sample_rate <= self.start:
            return
        if self.skip is None:
            self.skip = max(0, round((self.start - t) * self.sample_rate))
            self.first_time = t
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.template:  # first frame, or the stream changed mid-way
            self.flush()
            self.resampler, self.mean_channels = _resampler(self.sample_rate)
            self.template = key
        assert self.resampler is not None
        self._collect(self.resampler.resample(frame))

    @property
    def late(self) -> bool:
        """Whether decoding began after `start` (a seek that overshot)."""
        return self.first_time is not None and self.first_time > self.start + 1e-3

    def flush(self) -> None:
        if self.resampler is not None:
            self._collect(self.resampler.resample(None))
            self.resampler = None

    def _collect(self, frames: list) -> None:
        for mono in _mono(frames, self.mean_channels):
            self.chunks.append(mono)
            self.have += len(mono)

    def waveform(self) -> np.ndarray:
        """(samples,) float32, at most round(length * sample_rate) samples."""
        self.flush()
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        skip = self.skip or 0
        wave = np.concatenate(self.chunks)[skip:skip + self.wanted]
        return np.clip(wave, -1.0, 1.0)


def _mono(frames: list, mean_channels: bool) -> Iterator[np.ndarray]:
    """A resampler's output frames as (samples,) float32 mono arrays."""
    for out in frames:
        if out is None:  # a passthrough resampler answers a flush with [None]
            continue
        if mean_channels:  # (channels, n) planar float
            yield out.to_ndarray().mean(axis=0, dtype=np.float32)
        else:  # packed mono float: read the plane directly (3x faster than to_ndarray)
            yield np.frombuffer(out.planes[0], np.float32, count=out.samples).copy()


def _resampler(sample_rate: int) -> tuple[av.AudioResampler, bool]:
    """A resampler to mono float32 at sample_rate, and whether channels still need averaging.

    Normalised rematrixing needs AudioResampler(options=...) (PyAV >= 18); older PyAV gets
    planar float in the source layout, averaged over channels by the caller."""
    try:
        return av.AudioResampler(format="flt", layout="mono", rate=sample_rate,
                                 options={"rematrix_maxval": "1.0"}), False
    except TypeError:
        return av.AudioResampler(format="fltp", rate=sample_rate), True


class _Source:
    """The file as FFmpeg reads it (through PyAV's file-object I/O), cut short where
    _ZERO_RUN zero bytes were read with no found_audio() call since they began: a
    preallocated or zero-filled file reads like one truncated there."""

    def __init__(self, file: io.RawIOBase, name: str):
        self._file = file
        self.name = name                     # FFmpeg uses the extension when probing
        self.end: int | None = None          # where the zeros begin, once they are found
        self._zeros_from: int | None = None  # the run of zero bytes read since found_audio
        self._zeros_to = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int) -> bytes:
        at = self._file.tell()
        if self.end is not None:
            size = min(size, max(0, self.end - at))
        data = self._file.read(size)
        if data and data[-1] == 0 and not np.frombuffer(data, np.uint8).any():
            if self._zeros_from is None or at != self._zeros_to:    # a new run, or a seek
                self._zeros_from = at
            self._zeros_to = at + len(data)
            if self._zeros_to - self._zeros_from >= _ZERO_RUN:
                self.end = min(self._zeros_from, self.end if self.end is not None else at)
                self._file.seek(at)          # FFmpeg counts the position too: nothing read
                return b""
        elif data:
            self._zeros_from = None
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def found_audio(self) -> None:
        self._zeros_from = None


class _SeekFailed(Exception):
    """The format cannot seek: decode the file again in one forward pass."""

    def __init__(self, duration: float | None = None):
        super().__init__(duration)
        self.duration = duration


class _Decoder:
    """Decodes windows from one open container; counts what it decoded and what failed."""

    def __init__(self, container: av.container.InputContainer, stream: av.AudioStream,
                 source: _Source):
        self.container, self.stream, self.source = container, stream, source
        self.time_base: Fraction = stream.time_base or Fraction(1, stream.rate)
        self.seconds_per_tick = float(self.time_base)  # float arithmetic in the hot loop
        origin = stream.start_time if stream.start_time is not None else 0
        self.origin = float(origin * self.time_base)
        self.decoded_seconds = 0.0
        self.errors: list[str] = []

    def seek(self, seconds: float) -> None:
        """Seek to the key frame at or before `seconds` (from the track's start)."""
        target = int((seconds + self.origin) / self.time_base)
        try:
            self.container.seek(target, stream=self.stream, backward=True)
        except av.error.FFmpegError:
            raise _SeekFailed() from None

    def fill(self, windows: list[_Window], position: float = 0.0) -> None:
        """Decode forward until every window is full or EOF; `position` (seconds) is where
        the last seek aimed, the time of the first frame if it has no timestamp."""
        if not all(w.done for w in windows):
            for frame, t in self.frames(position):
                for w in windows:
                    w.feed(frame, t)
                if all(w.done for w in windows):
                    break
        for w in windows:
            w.flush()

    def frames(self, position: float = 0.0) -> Iterator[tuple[av.AudioFrame, float]]:
        """Each decoded frame from here on, with its time in seconds (`position` for the
        first if it has no timestamp); undecodable packets are skipped, up to a point."""
        packets = self.container.demux(self.stream)
        next_t = position
        bad = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # damaged container: treat as the end of data
                self.errors.append(_message(e))
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                self.errors.append(_message(e))
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    return
                continue
            bad = 0
            if frames:
                self.source.found_audio()
            for frame in frames:
                t = next_t if frame.pts is None else frame.pts * self.seconds_per_tick - self.origin
                seconds = frame.samples / frame.sample_rate
                next_t = t + seconds
                self.decoded_seconds += seconds
                yield frame, t

    def resampled(self, sample_rate: int) -> Iterator[np.ndarray]:
        """Every frame from here to the end as mono float32 chunks at sample_rate, through
        one resampler (a new one where the stream's format changes)."""
        resampler, mean_channels, template = None, False, None
        for frame, _ in self.frames():
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != template:
                if resampler is not None:
                    yield from _mono(resampler.resample(None), mean_channels)
                resampler, mean_channels = _resampler(sample_rate)
                template = key
            yield from _mono(resampler.resample(frame), mean_channels)
        if resampler is not None:
            yield from _mono(resampler.resample(None), mean_channels)

    def nothing_decoded(self) -> DecodeError:
        """Why no audio came out: the first decoder error, if there was one."""
        reason = (f"truncated or corrupt data ({self.errors[0]})" if self.errors
                  else "no audio decoded")
        return DecodeError(reason, path=self.source.name)

    def measure(self) -> float:
        """Demux (without decoding) to the end; the duration in seconds. Leaves EOF."""
        end = 0.0
        total = 0.0
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:
                    continue
                self.source.found_audio()
                tb = packet.time_base or self.time_base
                length = float((packet.duration or 0) * tb)
                total += length
                if packet.pts is not None:
                    end = max(end, float(packet.pts * tb) - self.origin + length)
        except av.error.FFmpegError as e:
            self.errors.append(_message(e))
        return end or total


def _seek_and_fill(decoder: _Decoder, start: float, length: float,
                   sample_rate: int) -> _Window:
    """Seek a little before `start` and decode one window; aim earlier if the seek
    overshot (some demuxers land a frame or two after the target)."""
    for margin in _SEEK_MARGINS:
        aim = max(0.0, start - margin)
        window = _Window(start, length, sample_rate)
        decoder.seek(aim)
        decoder.fill([window], position=aim)
        if not window.late or aim == 0.0:
            break
    return window


def _message(e: BaseException) -> str:
    """A short message for an FFmpeg error: its strerror without the call that failed."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).split(":")[0].strip()


def _check_file(name: str) -> None:
    """Reasons to refuse a path before FFmpeg sees it."""
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise DecodeError("file not found", path=name, transient=True) from None
    except PermissionError:
        raise DecodeError("permission denied", path=name, transient=True) from None
    except (OSError, ValueError) as e:
        raise DecodeError(f"cannot read file ({e})", path=name, transient=True) from None
    if stat.S_ISDIR(info.st_mode):
        raise DecodeError("is a directory", path=name)
    if not stat.S_ISREG(info.st_mode):
        raise DecodeError("not a regular file", path=name)
    if info.st_size == 0:
        raise DecodeError("file is empty", path=name)
    try:
        with open(name, "rb") as f:
            f.read(1)
    except PermissionError:
        raise DecodeError("permission denied", path=name, transient=True) from None
    except OSError as e:
        raise DecodeError(f"cannot read file ({e.strerror or e})", path=name,
                          transient=True) from None


def _open_input(name: str) -> io.RawIOBase:
    """The file to decode: a local path checked (_check_file) and opened unbuffered; a URI
    through tagger.objects' block cache (its OSErrors are mapped by _decode_errors)."""
    if not is_uri(name):
        _check_file(name)
        return open(name, "rb", buffering=0)
    from tagger.objects import open_object
    try:
        file = open_object(name)
    except UserError as e:          # a protocol that cannot be read here
        raise DecodeError(e.reason, path=name, transient=True) from None
    if file.size == 0:
        raise DecodeError("file is empty", path=name)
    return file


def _metadata_duration(container: av.container.InputContainer,
                       stream: av.AudioStream) -> float | None:
    """Seconds, from the stream, else the container; None when unknown or zero."""
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if seconds > 0 else None


def decode_excerpts(path: str | os.PathLike | bytes, sample_rate: int = 22050,
                    n_windows: int = 3, window_seconds: float = 10.0) -> Excerpts:
    """Decode the excerpt windows of `path` (see excerpt_windows) to mono float32.

    Returns one (samples,) float32 array in [-1, 1] at `sample_rate` per window that
    yielded audio. Raises DecodeError (and nothing else) when the file cannot be read,
    is not audio, or yields no audio at all.
    """
    name = os.fsdecode(path)
    with _decode_errors(name), _open_input(name) as file:
        source = _Source(file, name)
        with _zero_bytes(source):
            try:
                return _decode(source, sample_rate, n_windows, window_seconds, seek=True)
            except _SeekFailed as e:
                return _decode(source, sample_rate, n_windows, window_seconds,
                               seek=False, duration=e.duration)


def sliding_windows(path: str | os.PathLike | bytes, sample_rate: int = 22050,
                    window_seconds: float = 10.0, hop_seconds: float = 5.0
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """The whole of `path`, decoded front to back in one pass, as (start_sample, waveform)
    windows of round(window_seconds * sample_rate) mono float32 samples in [-1, 1]: one
    every hop, while a whole window fits, then the track's last window_seconds if the end
    is not yet covered; a track shorter than one window gives one window, the whole track.

    One resampler for the whole stream (the audio is continuous). Memory holds one window
    and a frame or two, whatever the track's length. Raises DecodeError (and nothing else),
    on the first next() when the file cannot be opened; bad packets are skipped and a file
    cut short ends where its audio does."""
    name = os.fsdecode(path)
    size, hop = max(1, round(window_seconds * sample_rate)), max(1, round(hop_seconds * sample_rate))
    with _decode_errors(name), _open_input(name) as file:
        source = _Source(file, name)
        with _zero_bytes(source), _open(source) as container:
            decoder = _audio_decoder(container, source)
            chunks: list[np.ndarray] = []
            first, end = 0, 0           # chunks hold samples [first, end) of the track
            start, last_end = 0, 0      # the next window's start; the last yielded's end
            for mono in decoder.resampled(sample_rate):
                chunks.append(mono)
                end += len(mono)
                while end >= start + size:
                    buffer = np.concatenate(chunks)
                    yield start, np.clip(buffer[start - first:start - first + size], -1.0, 1.0)
                    last_end, start = start + size, start + hop
                    keep = max(first, min(start, end - size))   # the last window, for the tail
                    chunks, first = [buffer[keep - first:]], keep
            if end == 0:
                raise decoder.nothing_decoded()
            if last_end < end:
                buffer = np.concatenate(chunks)
                tail = max(0, end - size)
                yield tail, np.clip(buffer[tail - first:], -1.0, 1.0)


@contextmanager
def _decode_errors(name: str) -> Iterator[None]:
    """Every failure inside as a DecodeError about `name`."""
    try:
        yield
    except DecodeError:
        raise
    except PermissionError as e:
        if isinstance(e, av.error.FFmpegError):
            raise DecodeError(f"decoder refused the file ({_message(e)})", path=name) from None
        raise DecodeError("permission denied", path=name, transient=True) from None
    except av.error.InvalidDataError:
        raise DecodeError("not an audio file (unrecognised or corrupt data)",
                          path=name) from None
    except av.error.FFmpegError as e:
        raise DecodeError(f"truncated or corrupt data ({_message(e)})", path=name) from None
    except IsADirectoryError:       # an object store's prefix (a local path: _check_file)
        raise DecodeError("is a directory", path=name) from None
    except FileNotFoundError:
        raise DecodeError("file not found", path=name, transient=True) from None
    except OSError as e:
        raise DecodeError(f"cannot read file ({e.strerror or e})", path=name,
                          transient=True) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding", path=name, transient=True) from None
    except Exception as e:  # noqa: BLE001 - the worker boundary: nothing else may escape
        raise DecodeError(f"decoder failed ({type(e).__name__}: {e})", path=name,
                          transient=True) from None


@contextmanager
def _zero_bytes(source: _Source) -> Iterator[None]:
    """A failure in a file that _Source cut short at a run of zero bytes says so."""
    try:
        yield
    except (DecodeError, av.error.FFmpegError):
        if source.end is not None:
            raise DecodeError(f"no audio found, only zero bytes from byte {source.end:,} "
                              "on (a preallocated or unfinished file?)", path=source.name) from None
        raise


def _usable(container: av.container.InputContainer) -> bool:
    """Whether probing found an audio stream with a known rate and channel count."""
    audio = container.streams.audio
    return bool(audio) and bool(audio[0].rate) and bool(audio[0].channels)


def _open(source: _Source) -> av.container.InputContainer:
    """Open with a quick probe; again with FFmpeg's defaults if that found no audio."""
    try:
        source.seek(0)
        container = av.open(source, metadata_errors="ignore", container_options=_QUICK_OPEN)
        if _usable(container):
            return container
        container.close()
    except av.error.InvalidDataError:
        pass
    source.seek(0)
    return av.open(source, metadata_errors="ignore")


def _audio_decoder(container: av.container.InputContainer, source: _Source) -> _Decoder:
    """A decoder of the container's first audio stream; DecodeError if it has none usable."""
    if not container.streams.audio:
        raise DecodeError("no audio stream", path=source.name)
    if not _usable(container):
        raise DecodeError("not an audio file (no decodable audio found)", path=source.name)
    return _Decoder(container, container.streams.audio[0], source)


def _decode(source: _Source, sample_rate: int, n_windows: int, window_seconds: float,
            seek: bool, duration: float | None = None) -> Excerpts:
    """Open and decode; `seek=False` reads the file once, front to back, with the
    `duration` measured by an earlier attempt when the metadata has none."""
    name = source.name
    with _open(source) as container:
        decoder = _audio_decoder(container, source)
        stream = decoder.stream
        duration = duration or _metadata_duration(container, stream)
        if duration is None:
            if not seek:
                raise DecodeError("cannot seek in a stream of unknown length", path=name)
            duration = decoder.measure()
            try:
                decoder.seek(0.0)
            except _SeekFailed:
                raise _SeekFailed(duration) from None
        windows = [_Window(s, n, sample_rate)
                   for s, n in excerpt_windows(duration, n_windows, window_seconds)]
        if not seek or duration <= n_windows * window_seconds:
            decoder.fill(windows)
        else:
            windows = [_seek_and_fill(decoder, w.start, w.end - w.start, sample_rate)
                       for w in windows]
        waveforms = [w for w in (win.waveform() for win in windows) if len(w)]
        if not waveforms:
            raise decoder.nothing_decoded()
        return Excerpts(waveforms=waveforms, duration=float(duration),
                        source_sample_rate=int(stream.rate),
                        source_channels=int(stream.channels),
                        decoded_seconds=decoder.decoded_seconds)
