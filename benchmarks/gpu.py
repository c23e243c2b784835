"""The scan on a GPU box: is it decode-bound? Run once on a machine with a CUDA GPU:

    python benchmarks/gpu.py --tracks 1000 --model default

1. the tests that need a GPU (`pytest -m gpu`: CUDA and the CPU give the same probabilities);
2. for each decoder count (2, 4, 8, ... up to the cores), a cold `tagger scan` of a
   generated library on the CPU and on CUDA, and tagger's own decode-only floor (the same
   workers, no model): tracks/s, tracks/s per decoder process, and the GPU's utilisation
   sampled by nvidia-smi every 200 ms while the CUDA scan runs.

Decode-bound means: the CUDA scan runs at about the decode-only floor, its rate grows with
the decoder processes, and the GPU is idle most of the time. Prints a table; nothing is
written outside the library folder (a temporary one unless --dir is given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scan import build_library, excerpt_args, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class GpuSampler:
    """Mean and peak GPU utilisation (%) over a run, from nvidia-smi's own sampling loop."""

    def __init__(self):
        self.values: list[int] = []
        self._proc = None
        if not shutil.which("nvidia-smi"):
            return
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-lms", "200"], stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.values.append(int(line.strip()))

    def stop(self) -> tuple[float, int]:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            self._reader.join(2)
        return (sum(self.values) / len(self.values) if self.values else float("nan"),
                max(self.values, default=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=1000)
    ap.add_argument("--model", default="default", help="a shipped model's name or a path")
    ap.add_argument("--workers", default="", help="decoder counts, comma-separated "
                    "(default: 2, 4, 8, ... up to the cores)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dir", type=Path, help="where to build the library (kept for reuse)")
    ap.add_argument("--devices", default="cpu,cuda", help="scan devices, comma-separated")
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    counts = ([int(w) for w in args.workers.split(",")] if args.workers else
              sorted({min(2 ** k, cores) for k in range(1, cores.bit_length() + 1)}))
    devices = args.devices.split(",")
    gpu = (subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
           if shutil.which("nvidia-smi") else "") or "no nvidia-smi: no GPU"
    print(gpu, f"| {cores} CPU cores", flush=True)
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
        print("pytest -m gpu:", (tests.stdout.strip().splitlines() or ["(no output)"])[-1],
              flush=True)

    folder = args.dir or Path(tempfile.mkdtemp(prefix="tagger-gpu-bench-"))
    library = folder / "library"
    build_library(folder, args.tracks)
    n = args.tracks
    print(f"{n} tracks (3-5 min, 7 formats) in {library}; model {args.model}; "
          f"batch size {args.batch_size}")
    print(f"{'workers':>7} {'floor tr/s':>10} " + " ".join(f"{d + ' tr/s':>9}" for d in devices)
          + f" {'last/floor':>10} {'last tr/s/worker':>16} {'GPU util mean/peak':>19}"
          f" {'peak RSS':>9}", flush=True)
    for workers in counts:
        floor, _, _ = run_measured([sys.executable, str(ROOT / "benchmarks" / "scan.py"),
                                    "--decode-only", str(library), "--workers", str(workers),
                                    *excerpt_args()])
        rates, util = {}, (float("nan"), 0)
        for device in devices:
            db = folder / f"{device}-{workers}.db"
            for f in folder.glob(f"{db.name}*"):
                f.unlink()
            sampler = GpuSampler() if device == "cuda" else None   # the GPU's share
            seconds, peak, _ = run_measured([sys.executable, "-m", "tagger", "scan", str(library),
                                             "--db", str(db), "--model", args.model,
                                             "--workers", str(workers), "--device", device,
                                             "--batch-size", str(args.batch_size), "-q"])
            rates[device] = n / seconds
            if sampler:
                util = sampler.stop()
        last = rates[devices[-1]]
        print(f"{workers:>7} {n / floor:>10.1f} " + " ".join(f"{rates[d]:>9.1f}" for d in devices)
              + f" {last * floor / n:>10.2f} {last / workers:>16.2f} "
              f"{util[0]:>12.0f}% /{util[1]:>3}% {peak / 2**20:>7.0f} MiB", flush=True)
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
