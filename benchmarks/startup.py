"""How long do the light commands take to start? Runs each in a fresh process (as a user or a
script does) and prints the median wall time and which heavy modules it imported.

- `tagger --help`
- `tagger query` on an empty index
- `tagger query --format json` on an index of 5,000 tracks (written directly, no audio)

    python benchmarks/startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tagger.genres import GENRES  # noqa: E402
from tagger.index import Index, TrackResult  # noqa: E402

HEAVY = ("torch", "av", "numpy", "sqlite_utils", "librosa", "mutagen")
PROBE = """
import sys
sys.argv = ["tagger", *{args!r}]
import tagger.cli
try:
    tagger.cli.main()
except SystemExit:
    pass
print(",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))), file=sys.stderr)
"""


def run(args: list[str], env: dict, repeat: int) -> tuple[float, str]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tagger", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    probe = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return statistics.median(times), probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11)
    a = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp) / "empty.db", Path(tmp) / "full.db"
        Index(empty).close()
        with Index(full) as index:
            index.store([TrackResult(f"/music/{i:05d}.flac", 1, 1, "0123456789ab", "ok",
                                     {g: 1 / len(GENRES) + (0.01 if j == i % len(GENRES) else 0)
                                      for j, g in enumerate(GENRES)}, duration=180.0)
                         for i in range(5000)])
        print(f"{'command':44s} {'median s':>9s}  heavy modules imported")
        for args in (["--help"], ["query", "--db", str(empty)],
                     ["query", "--db", str(full), "--format", "json"]):
            seconds, heavy = run(args, env, a.repeat)
            shown = " ".join(a if not a.startswith(tmp) else Path(a).name for a in args)
            print(f"tagger {shown:37s} {seconds:9.3f}  {heavy or '-'}")


if __name__ == "__main__":
    main()
