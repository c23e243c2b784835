"""Scan benchmark: cold-scan speed against the decode-only floor, rescan time, peak memory.

Builds a synthetic library of 3-5 minute tracks in mixed formats with the project's own
encoder (a few distinct tracks per format, hard-linked to reach the size asked for: every
path is a separate track to the scanner), then prints:

- cold scan: tracks/s of `tagger scan` on a fresh index (a real process, as a user runs it)
- decode-only floor: tracks/s of decoding the same excerpts with the same worker count
- physical floor: tracks/s of decoding as much audio as the model needs (the same seconds
  per track, as one central stretch after one seek) to 22,050 Hz mono with PyAV in the
  same number of processes, no resampler when the source is already that
- the cold scan's ratio to each (target: at least 0.7 of the physical floor), and to the
  physical floor with start-up excluded (by difference: the scan and the floor of every
  third file are subtracted from those of all files)
- where the scan's CPU goes per track, the scan's own code timed stage by stage in one
  process with one thread: start-up (CLI imports, torch import, model load), opening,
  seeking, decoding (per format), resampling, fingerprint, log-mel, CNN, GRU, the fused
  model's FCN, SQLite; beside it, the physical floor's own cost per track on one core
- rescan: seconds for `tagger scan` of the unchanged library (target: under 1 s for 1,000)
- peak RSS of the scan's whole process tree (target: under 1.5 GB)

    python benchmarks/scan.py --tracks 200 --rescan-tracks 1000 --workers 2
    python benchmarks/scan.py --library ~/Music --workers 2    # a real folder, as it is

The model is a random-weight checkpoint of the default architecture unless --model is
given: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagger import synth  # noqa: E402
from tagger.crawl import crawl  # noqa: E402
from tagger.pool import DecodeJob, DecodePool, Failure  # noqa: E402

FORMATS = ["mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff"]
# The floors run in processes of their own that must not pay for importing torch (which
# tagger.features does): the excerpt settings reach them as arguments.
EXCERPTS = "--excerpts"


def excerpt_args() -> list[str]:
    from tagger.features import FeatureSettings
    s = FeatureSettings()
    return [EXCERPTS, f"{s.sample_rate},{s.excerpt_windows},{s.excerpt_seconds}"]


def music_like(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Stereo chords, a click beat and some noise: cheap, but not trivially compressible."""
    rng = np.random.default_rng(seed)
    base = 110 * 2 ** (rng.integers(0, 12) / 12)
    chord = sum(synth.tone(base * r, seconds, sample_rate, 2, 0.15) for r in (1, 1.26, 1.5))
    beat = synth.clicks(seconds, sample_rate, 2, rate_hz=float(rng.uniform(1.5, 3)), seed=seed)
    return np.clip(chord + 0.5 * beat + synth.noise(seconds, sample_rate, 2, 0.03, seed), -1, 1)


def build_library(folder: Path, n_tracks: int, distinct_per_format: int = 2) -> list[Path]:
    originals = []
    for fmt in FORMATS:
        for k in range(distinct_per_format):
            seed = len(originals)
            seconds = 180 + 120 * (seed % 5) / 4                  # 3 to 5 minutes
            path = folder / "originals" / f"track{seed:02d}.{fmt}"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                synth.encode(path, music_like(seconds, 44100, seed), 44100)
            originals.append(path)
    tracks = []
    for i in range(n_tracks):
        src = originals[i % len(originals)]
        dst = folder / "library" / f"album{i // 12:03d}" / f"{i:05d}{src.suffix}"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
        tracks.append(dst)
    return tracks


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the process tree in bytes, and stdout."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                procs = [proc] + proc.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return time.perf_counter() - start, peak, out


def decode_only(folder: Path, workers: int, rate: int, windows: int, seconds: float) -> None:
    """The floor: crawl and decode the same excerpt windows with the same pool, no model."""
    paths = [c.path for c in crawl([folder])]
    jobs = DecodePool(workers).imap(paths, lambda p: DecodeJob(p, rate, windows, seconds))
    failed = sum(isinstance(result, Failure) for _, result in jobs)
    print(f"decoded {len(paths) - failed} of {len(paths)}")


def central_stretch(job: tuple[str, float, int]) -> int:
    """Decode `seconds` of audio from the middle of a file to mono at `rate`, the cheapest way
    PyAV allows: one seek, and no resampler when the stream is already mono at that rate.
    Returns the samples decoded (0 if the file has no audio PyAV can read)."""
    import av
    path, seconds, rate = job
    try:
        with av.open(path) as container:
            stream = container.streams.audio[0]
            duration = (float(container.duration) / av.time_base if container.duration
                        else float(stream.duration * stream.time_base) if stream.duration else 0.0)
            start = max(0.0, duration / 2 - seconds / 2)
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream)
            same = stream.rate == rate and stream.channels == 1
            resampler = None if same else av.AudioResampler(format="flt", layout="mono", rate=rate)
            wanted, got = int(seconds * rate), 0
            for frame in container.decode(stream):
                for out in ([frame] if same else resampler.resample(frame)):
                    got += out.samples
                if got >= wanted:
                    break
            return got
    except (av.FFmpegError, IndexError, OSError):
        return 0


def physical_floor(folder: Path, workers: int, rate: int, windows: int, seconds: float) -> None:
    from concurrent.futures import ProcessPoolExecutor
    jobs = [(c.path, windows * seconds, rate) for c in crawl([folder])]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        decoded = list(pool.map(central_stretch, jobs, chunksize=4))
    print(f"decoded {sum(1 for n in decoded if n)} of {len(jobs)}")


class _Clock:
    """CPU seconds by stage, summed (time.process_time: this process, all its threads)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def wrap(self, owner, name: str, stage: str) -> None:
        """Time every call of owner.name as `stage` (minus any stage timed inside it)."""
        inner = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            before = sum(clock.seconds.values())
            t = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                nested = sum(clock.seconds.values()) - before
                clock.add(stage, time.process_time() - t - nested)
        setattr(owner, name, timed)

    def hook(self, module, stage: str) -> None:
        """Time a torch module's forward as `stage`."""
        started = []
        module.register_forward_pre_hook(lambda m, a: started.append(time.process_time()))
        module.register_forward_hook(lambda m, a, o: self.add(stage, time.process_time() - started.pop()))


def stages(folder: Path, model: Path, batch_size: int) -> None:
    """Where one core's CPU time goes per track, the scan's own code run in one process with
    one thread, each stage timed where it runs: start-up (torch import, model load), and per
    file opening (probing), seeking, decoding, resampling (FFmpeg's resampler, per window),
    fingerprint, log-mel, CNN, GRU, the fused model's FCN, and storing in SQLite."""
    clock = _Clock()
    t = time.process_time()
    import tagger.cli  # noqa: F401 - what `tagger scan` imports before it finds work
    clock.add("start-up: tagger's CLI imports", time.process_time() - t)
    t = time.process_time()
    import torch
    torch.set_num_threads(1)
    clock.add("start-up: import torch", time.process_time() - t)
    t = time.process_time()
    import av
    from tagger import decode, pool
    from tagger.checkpoint import load
    from tagger.classify import Classifier
    from tagger.index import Index
    from tagger.scanner import classify_decoded, excerpts_of
    classifier = Classifier(load(model), "cpu")
    clock.add("start-up: tagger imports, model load", time.process_time() - t)

    class Resampler:                # decode.py's resampler, timed
        def __init__(self, *args, **kwargs):
            self._inner = av.AudioResampler(*args, **kwargs)

        def resample(self, frame):
            t = time.process_time()
            try:
                return self._inner.resample(frame)
            finally:
                clock.add("resampling", time.process_time() - t)

    decode.av = type("av", (), {**{k: getattr(av, k) for k in dir(av) if not k.startswith("__")},
                                "AudioResampler": Resampler})
    clock.wrap(decode, "_open", "opening (probe)")
    clock.wrap(decode._Decoder, "seek", "seeking")
    clock.wrap(pool, "fingerprint", "fingerprint")
    clock.hook(classifier.log_mel, "log-mel")
    clock.hook(classifier.net.cnn, "CNN")
    clock.hook(classifier.net.rnn, "GRU")
    if classifier.net.fused:
        clock.hook(classifier.net.teacher, "FCN (fused model's tags)")
    by_format: dict[str, list[float]] = {}
    decoded, n = [], 0
    excerpts = excerpts_of(classifier)
    with tempfile.TemporaryDirectory() as tmp, Index(Path(tmp) / "stages.db") as index:
        clock.wrap(index, "store", "SQLite store")
        for cand in crawl([folder]):
            timed, fingerprint = sum(clock.seconds.values()), clock.seconds.get("fingerprint", 0)
            t = time.process_time()
            result = pool.decode_job(pool.DecodeJob(cand.path, *excerpts))
            spent = time.process_time() - t
            clock.add("decoding", spent - (sum(clock.seconds.values()) - timed))
            by_format.setdefault(Path(cand.path).suffix.lower(), []).append(
                spent - (clock.seconds["fingerprint"] - fingerprint))
            n += 1
            if not isinstance(result, pool.Failure):
                decoded.append((cand, result))
            if len(decoded) == batch_size:
                index.store(classify_decoded(classifier, decoded))
                decoded = []
        if decoded:
            index.store(classify_decoded(classifier, decoded))
    paths = [c.path for c in crawl([folder])]
    t = time.process_time()
    for path in paths:
        central_stretch((path, excerpts[1] * excerpts[2], excerpts[0]))
    floor = (time.process_time() - t) / max(len(paths), 1)
    print(f"where the scan's CPU goes, one process, one thread ({n} tracks, CPU seconds):")
    for stage, seconds in clock.seconds.items():
        if stage.startswith("start-up"):
            print(f"  {stage:38s} {seconds:7.2f} s once")
    per_track = {k: v for k, v in clock.seconds.items() if not k.startswith("start-up")}
    for stage, seconds in per_track.items():
        print(f"  {stage:38s} {1000 * seconds / max(n, 1):7.1f} ms")
    print(f"  {'total per track':38s} {1000 * sum(per_track.values()) / max(n, 1):7.1f} ms")
    for fmt, costs in sorted(by_format.items()):
        print(f"  open+seek+decode+resample {fmt:12s} {1000 * float(np.mean(costs)):7.1f} ms "
              f"({len(costs)} files)")
    print(f"  {'physical floor (one central stretch)':38s} {1000 * floor:7.1f} ms")


def print_stages(folder: Path, model: Path, batch_size: int) -> None:
    interpreter, _, _ = run_measured([sys.executable, "-c", "pass"])
    print(f"start-up: the interpreter alone, {interpreter:.2f} s (wall)")
    print(run_measured([sys.executable, __file__, "--stages-of", str(folder), "--model",
                        str(model), "--batch-size", str(batch_size)])[2], end="")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=200, help="tracks in the cold scan")
    ap.add_argument("--rescan-tracks", type=int, default=1000, help="tracks in the rescan")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the cold measurements "
                    "(the median is printed)")
    ap.add_argument("--model", type=Path, help="checkpoint (default: random weights)")
    ap.add_argument("--dir", type=Path, help="where to build the library (kept for reuse)")
    ap.add_argument("--library", type=Path, help="a real folder to measure as it is (no "
                    "synthetic library, no rescan figure)")
    ap.add_argument("--decode-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--physical-floor", type=Path, help=argparse.SUPPRESS)
    ap.add_argument(EXCERPTS, help=argparse.SUPPRESS)
    ap.add_argument("--stages-of", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stages_of:
        return stages(args.stages_of, args.model, args.batch_size)
    if args.decode_only or args.physical_floor:
        rate, windows, seconds = args.excerpts.split(",")
        floor = decode_only if args.decode_only else physical_floor
        return floor(args.decode_only or args.physical_floor, args.workers, int(rate),
                     int(windows), float(seconds))
    if args.library:
        return measure_library(args)

    folder = args.dir or Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    print(f"library: {folder}")
    t = time.perf_counter()
    tracks = build_library(folder, max(args.tracks, args.rescan_tracks))
    print(f"built {len(tracks)} tracks ({len(FORMATS)} formats) in {time.perf_counter() - t:.0f} s")
    model = args.model
    if model is None:
        import torch
        from tagger.checkpoint import new_checkpoint, save
        from tagger.model import GenreCRNN, ModelSettings
        torch.manual_seed(0)
        model = folder / "random.pt"
        from tagger.features import FeatureSettings
        save(new_checkpoint(GenreCRNN(ModelSettings()), FeatureSettings()), model)

    cold_dir = folder / "cold"                             # the cold set: its own folder
    shutil.rmtree(cold_dir, ignore_errors=True)
    cold_dir.mkdir()
    for path in tracks[: args.tracks]:
        os.link(path, cold_dir / path.name)
    figures = cold_figures(cold_dir, model, args.workers, args.batch_size, folder, args.repeat)
    scan = [sys.executable, "-m", "tagger", "scan", "--model", str(model),
            "--workers", str(args.workers), "--batch-size", str(args.batch_size)]

    rescan_db = folder / "rescan.db"
    library = folder / "library"
    run_measured(scan + [str(library), "--db", str(rescan_db)])     # a no-op when current
    rescan_seconds, rescan_peak, out = run_measured(scan + [str(library), "--db", str(rescan_db)])
    assert f"{len(tracks)} unchanged" in out, out

    print(f"workers: {args.workers}, batch size: {args.batch_size}, CPU threads: {os.cpu_count()}")
    print_cold(figures)
    print_stages(cold_dir, model, args.batch_size)
    print(f"rescan, unchanged:  {rescan_seconds:6.2f} s for {len(tracks)} tracks  (target < 1 s for 1,000)")
    print(f"peak RSS, rescan:   {rescan_peak / 2**20:6.0f} MiB")


def cold_figures(folder: Path, model: Path, workers: int, batch_size: int, work: Path,
                 repeat: int = 1) -> dict:
    """The cold scan of folder and its floors, each a whole process, the median of `repeat`
    rounds (each round runs every measurement once, in turn, so that a busy spell of the
    machine touches them alike). Start-up is left out by difference: the same measurements
    on every third file (symbolic links in work/third) are subtracted, which leaves what the
    other two thirds cost once everything has started (the model loads while the decoders
    work, so no one-file scan can stand for start-up)."""
    files = sorted(c.path for c in crawl([folder]))
    third = work / "third"
    shutil.rmtree(third, ignore_errors=True)
    third.mkdir(parents=True)
    for i, path in enumerate(files[::3]):
        (third / f"{i:05d}{Path(path).suffix}").symlink_to(path)
    scan = [sys.executable, "-m", "tagger", "scan", "--model", str(model), "--workers",
            str(workers), "--batch-size", str(batch_size)]

    def fresh_scan(target: Path, name: str) -> tuple[float, int, str]:
        for f in work.glob(f"{name}.db*"):
            f.unlink()
        return run_measured(scan + [str(target), "--db", str(work / f"{name}.db")])

    def floor(kind: str, target: Path) -> tuple[float, int, str]:
        return run_measured([sys.executable, __file__, kind, str(target), "--workers",
                             str(workers), *excerpt_args()])

    runs: dict[str, list] = {}
    for _ in range(repeat):
        for name, measure in (("floor", lambda: floor("--decode-only", folder)),
                              ("physical", lambda: floor("--physical-floor", folder)),
                              ("scan", lambda: fresh_scan(folder, "cold")),
                              ("physical third", lambda: floor("--physical-floor", third)),
                              ("scan third", lambda: fresh_scan(third, "third"))):
            runs.setdefault(name, []).append(measure()[:2])
    median = {name: sorted(r)[len(r) // 2] for name, r in runs.items()}
    return {"tracks": len(files), "third": len(files[::3]), "repeat": repeat,
            **{name: seconds for name, (seconds, _) in median.items()},
            "peak": max(peak for _, peak in runs["scan"])}


def print_cold(f: dict) -> None:
    n = f["tracks"]
    print(f"cold scan:          {n / f['scan']:6.1f} tracks/s  ({n} tracks in {f['scan']:.1f} s, "
          f"whole process; median of {f['repeat']})")
    print(f"decode-only floor:  {n / f['floor']:6.1f} tracks/s  ({f['floor']:.1f} s; tagger's own three-window decode)")
    print(f"physical floor:     {n / f['physical']:6.1f} tracks/s  ({f['physical']:.1f} s; one central stretch, one seek)")
    print(f"ratio to decode-only floor: {f['floor'] / f['scan']:5.2f}")
    print(f"ratio to physical floor:    {f['physical'] / f['scan']:5.2f}   (target >= 0.7)")
    scan_rest = max(f["scan"] - f["scan third"], 1e-9)
    floor_rest = f["physical"] - f["physical third"]
    print(f"  start-up excluded:        {floor_rest / scan_rest:5.2f}   (target >= 0.9; the "
          f"{n - f['third']} tracks beyond every third one: scan {scan_rest:.1f} s, floor "
          f"{floor_rest:.1f} s)")
    print(f"peak RSS, cold:     {f['peak'] / 2**20:6.0f} MiB (process tree; target < 1,536 MiB)")


def measure_library(args) -> None:
    from tagger.modelfile import resolve_model
    model, _ = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="tagger-bench-"))
    print(f"library: {args.library} (as it is); model: {model}; workers: {args.workers}")
    print_cold(cold_figures(args.library, model, args.workers, args.batch_size, work, args.repeat))
    print_stages(args.library, model, args.batch_size)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
