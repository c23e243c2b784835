"""How fast is the decode front end? Prints three tables (all audio generated with tagger.synth):

1. PyAV vs soundfile for 3 x 10 s excerpts of a 4-minute 44.1 kHz stereo wav and flac,
   both resampled to 22,050 Hz mono by the same FFmpeg resampler.
2. decode_excerpts on every format, 3 x 10 s from a 4-minute track.
3. a 3-minute vs a 20-minute mp3 and flac: seeking keeps the cost flat.

    python benchmarks/decoders.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tagger import synth  # noqa: E402
from tagger.decode import decode_excerpts, excerpt_windows  # noqa: E402

RATE = 22050


def soundfile_excerpts(path: Path, n_windows: int = 3, window_seconds: float = 10.0) -> list:
    """The soundfile alternative: seek + read each window, then the same PyAV resampler."""
    out = []
    with sf.SoundFile(str(path)) as f:
        duration = f.frames / f.samplerate
        layout = {1: "mono", 2: "stereo"}[f.channels]
        for start, length in excerpt_windows(duration, n_windows, window_seconds):
            f.seek(int(start * f.samplerate))
            data = f.read(round(length * f.samplerate), dtype="float32", always_2d=True)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp",
                                               layout=layout)
            frame.sample_rate = f.samplerate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE,
                                          options={"rematrix_maxval": "1.0"})
            chunks = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
            chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None) if o]
            out.append(np.concatenate(chunks)[:round(length * RATE)])
    return out


def best_of(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls, in milliseconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def long_file(directory: Path, ext: str, minutes: float) -> Path:
    """A `minutes`-long 22.05 kHz mono file made quickly: mp3 by concatenating the frames
    of a 10 s Xing-less encode (CBR), flac by encoding the whole tone (fast)."""
    path = directory / f"long_{minutes:g}min.{ext}"
    if ext == "mp3":
        piece = synth.encode(directory / "piece.mp3", synth.tone(440, 10, RATE), RATE,
                             options={"write_xing": "0", "id3v2_version": "0"})
        path.write_bytes(piece.read_bytes() * int(minutes * 6))
    else:
        synth.encode(path, synth.tone(440, minutes * 60, RATE), RATE)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        four_min = synth.tone(440, 240, 44100, channels=2) + synth.noise(240, 44100, 2, 0.05)

        print("1. PyAV vs soundfile, 3 x 10 s of a 4-minute 44.1 kHz stereo file (best ms)")
        for ext in ("wav", "flac"):
            path = synth.encode(directory / f"four.{ext}", four_min, 44100)
            pyav = best_of(lambda p=path: decode_excerpts(p), repeat)
            sfile = best_of(lambda p=path: soundfile_excerpts(p), repeat)
            print(f"   {ext:5s} PyAV {pyav:6.1f}   soundfile {sfile:6.1f}   "
                  f"ratio {pyav / sfile:4.2f}")

        print("2. decode_excerpts, 3 x 10 s of a 4-minute 44.1 kHz stereo file (best ms)")
        for ext, fmt in [("mp3", None), ("flac", None), ("ogg", None), ("opus", None),
                         ("m4a", None), ("m4a", "alac"), ("aac", None), ("wav", None),
                         ("aiff", None), ("au", None)]:
            path = synth.encode(directory / f"four_{fmt or ext}.{ext}", four_min, 44100, fmt)
            ms = best_of(lambda p=path: decode_excerpts(p), repeat)
            print(f"   {fmt or ext:5s} {ms:6.1f}")

        print("3. 3-minute vs 20-minute 22.05 kHz mono file (best ms; decoded seconds)")
        for ext in ("mp3", "flac"):
            cells = []
            for minutes in (3, 20):
                path = long_file(directory, ext, minutes)
                ms = best_of(lambda p=path: decode_excerpts(p), repeat)
                cells.append(f"{minutes:2d} min {ms:6.1f} ms "
                             f"({decode_excerpts(path).decoded_seconds:.1f} s)")
            print(f"   {ext:5s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
