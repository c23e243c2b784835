"""Cluster-scan benchmark: `tagger cluster-scan` (Ray Data) against `tagger scan` on one machine.

The same library (benchmarks/scan.py's synthetic one: 3-5 minute tracks in 7 formats, or a
real folder with --library) goes through a cold `tagger scan` (fresh index, --workers W) and a
cold `tagger cluster-scan` (fresh --out, its own default decoders unless --decoders), each a
real process as a user runs it, in turn (--repeat rounds, medians); then prints:

- tracks/s of each whole run (start-up included) and their ratio, cluster-scan / scan
- one file, s: each command on a folder of one track: the fixed cost (imports, model load;
  for cluster-scan also Ray's start-up, actor start-up, Ray's shutdown)
- steady tracks/s, (N - 1) / (t_N - t_1): the rate without that fixed cost; too high where
  start-up overlaps decoding (scan loads its model while its workers decode): use tens of tracks
- peak RSS of each run's process tree (for cluster-scan Ray's GCS, raylet, agents, workers and
  the decode actors' pool processes; shared pages, libraries and Ray's object store, count
  once per process that maps them, as in benchmarks/scan.py)
- Ray alone: `import ray`, `ray.init(num_cpus=W, include_dashboard=False)`, `ray.shutdown()`
- agree: after `tagger merge OUT --db`, both indexes hold the same paths, and per path the
  same status, genre and probabilities (within 1e-6)
- cluster-scan's stages, from Ray Data's own log: actor start-up, decoding, the model, the
  whole execution (the driver writes the results as they come), and whether the model ran
  while decoding (it may not when the decode actors hold every CPU: Ray can then start the
  model actor only once they are done; cluster-scan warns of that)
- decode-bound: the decode stage's tracks/s per decode process, the figure to multiply by the
  decode processes of a cluster, and the model actor's rate, where that stops (a floor where
  the model ran while decoding, since it then also waited for the decoders)

    python benchmarks/cluster_scan.py --tracks 60 --workers 2
    python benchmarks/cluster_scan.py --tracks 60 --workers 2 --model fast --repeat 3
    python benchmarks/cluster_scan.py --library ~/Music --workers 2     # a real folder

Needs the [cluster] extra (ray[data]). The model is the shipped default unless --model names
another checkpoint or shipped model ("fast"). On few cores the decoders, the model and Ray's
daemons share them: the per-process rate measured there is a floor for a node's decode cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scan import FORMATS, build_library, run_measured  # noqa: E402
from tagger.crawl import crawl  # noqa: E402

# Ray's local instance (gcs_server, raylet, dashboard agent, runtime-env agent, log monitor,
# workers, and the decode actors' DecodePool processes) is started by the cluster-scan process
# and stays its descendants while it runs: run_measured's psutil children(recursive=True) saw
# every process that carried the run's environment marker below (checked with Ray 2.60 by
# sampling both sets). Only during ray.shutdown() are a few workers reparented to init for a
# moment. The marker (inherited by every process Ray starts, daemonised or not) is kept to
# check that none outlives the run: a survivor would hold memory and CPU during the next one.
MARK = "TAGGER_BENCH_CLUSTER_RUN"

RAY_ALONE = """import sys, time
t = time.perf_counter(); import ray; i = time.perf_counter()
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, log_to_driver=False)
r = time.perf_counter(); ray.shutdown(); print(i - t, r - i, time.perf_counter() - r)"""


def survivors(mark: str, wait: float = 10.0) -> list[str]:
    """Names of processes still alive `wait` seconds after the run that carry its marker."""
    deadline = time.monotonic() + wait
    while True:
        found = [p.info["name"] for p in psutil.process_iter(["name", "environ"])
                 if (p.info["environ"] or {}).get(MARK) == mark]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


STAGES = {"start": "Starting execution of Dataset",      # Ray Data 2.60's DEBUG log lines
          "decode": "Executing map task of operator MapBatches(Decoder)",
          "decoded": "Operator ActorPoolMapOperator[MapBatches(Decoder)] completed",
          "model": "Executing map task of operator MapBatches(Classify)",
          "modelled": "Operator ActorPoolMapOperator[MapBatches(Classify)] completed",
          "finished": "execution finished in"}


def phases(ray_tmp: Path) -> dict[str, float]:
    """Seconds of each stage of a cluster-scan, from Ray Data's own log ({} where its lines
    are not found): actor start-up (execution start to the first decode task), decode and
    model (each operator's first task to its completion), the dataset's whole execution,
    and how long after decoding ended the model began."""
    marks: dict[str, list] = {}
    for log in sorted(ray_tmp.glob("ray/session_*/logs/ray-data/ray-data-dataset_*.log")):
        for line in log.read_text(errors="replace").splitlines():
            for key in (key for key, text in STAGES.items() if text in line):
                marks.setdefault(key, []).append(
                    datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    try:
        return {"actors": min(marks["decode"]) - min(marks["start"]),
                "decode": max(marks["decoded"]) - min(marks["decode"]),
                "model": max(marks["modelled"]) - min(marks["model"]),
                "execution": max(marks["finished"]) - min(marks["start"]),
                "after": min(marks["model"]) - max(marks["decoded"])}
    except (KeyError, ValueError):
        return {}


def cluster_run(cmd: list[str]) -> tuple[float, int, str, dict]:
    """run_measured's figures, and the run's phases. The run gets its own Ray temp folder
    (RAY_TMPDIR, short: Ray's socket paths must fit 107 bytes), so that its logs are found."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt"))
    os.environ[MARK] = mark = uuid.uuid4().hex
    os.environ["RAY_TMPDIR"] = str(ray_tmp)
    try:
        measured = run_measured(cmd)
    finally:
        del os.environ[MARK], os.environ["RAY_TMPDIR"]
    left = survivors(mark)
    if left:
        print(f"warning: Ray left {len(left)} processes running after the run: {sorted(set(left))}")
    found = phases(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return (*measured, found)


def index_rows(db: Path) -> dict[str, tuple]:
    """path -> (status, genre, {genre: probability}) of an index."""
    with sqlite3.connect(db) as con:
        probs: dict[int, dict[str, float]] = {}
        for track_id, genre, p in con.execute("SELECT track_id, genre, probability FROM probabilities"):
            probs.setdefault(track_id, {})[genre] = p
        return {path: (status, genre, probs.get(i, {})) for i, path, status, genre in
                con.execute("SELECT id, path, status, genre FROM tracks")}


def differ(a: dict, b: dict) -> set[str]:
    """Paths whose rows differ (or that only one index has); probabilities within 1e-6."""
    bad = set(a) ^ set(b)
    for path in set(a) & set(b):
        (s1, g1, p1), (s2, g2, p2) = a[path], b[path]
        if (s1, g1) != (s2, g2) or p1.keys() != p2.keys() or any(
                abs(p1[g] - p2[g]) > 1e-6 for g in p1):
            bad.add(path)
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=60, help="tracks in the synthetic library")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="scan's --workers")
    ap.add_argument("--decoders", type=int, help="cluster-scan's --decoders (default: its "
                    "own, the CPUs its model actor leaves: one less than the CPUs here)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="rounds (the median is printed)")
    ap.add_argument("--model", type=Path, help="checkpoint, or a shipped model's name "
                    "(default: the shipped default)")
    ap.add_argument("--dir", type=Path, help="where to build the library (kept for reuse)")
    ap.add_argument("--library", type=Path, help="a real folder to measure as it is")
    args = ap.parse_args()
    from tagger.modelfile import resolve_model
    model, model_id = resolve_model(args.model)

    work = args.dir or Path(tempfile.mkdtemp(prefix="tagger-cluster-bench-"))
    if args.library:
        folder = args.library
    else:
        tracks = build_library(work, args.tracks)
        folder = work / "cold"                             # exactly --tracks of them
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path in tracks[: args.tracks]:
            os.link(path, folder / path.name)
    files = sorted(c.path for c in crawl([folder]))
    if not files:
        raise SystemExit(f"no audio files in {folder}")
    one = work / "one"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    (one / Path(files[0]).name).symlink_to(files[0])
    n, w = len(files), args.workers
    d = args.decoders or max(1, int(len(os.sched_getaffinity(0)) - 0.5))   # cluster-scan's default
    tagger = [sys.executable, "-m", "tagger"]
    common = ["--model", str(model), "--batch-size", str(args.batch_size)]

    def scan(target: Path, name: str) -> tuple:
        for f in work.glob(f"{name}.db*"):
            f.unlink()
        return run_measured(tagger + ["scan", str(target), "--db", str(work / f"{name}.db"),
                                      "--workers", str(w)] + common)

    def cluster(target: Path, name: str) -> tuple:
        shutil.rmtree(work / name, ignore_errors=True)
        return cluster_run(tagger + ["cluster-scan", str(target), "--out", str(work / name)]
                           + (["--decoders", str(d)] if args.decoders else []) + common)

    def ray_alone() -> tuple:
        return cluster_run([sys.executable, "-c", RAY_ALONE, str(w)])

    runs: dict[str, list] = {}
    load = os.getloadavg()[0]
    for _ in range(args.repeat):           # each round runs everything once, in turn
        for name, measure in (("scan", lambda: scan(folder, "scan")),
                              ("cluster", lambda: cluster(folder, "out")),
                              ("scan one", lambda: scan(one, "scan-one")),
                              ("cluster one", lambda: cluster(one, "out-one")),
                              ("ray", ray_alone)):
            runs.setdefault(name, []).append(measure())
    median = {k: sorted(r, key=lambda m: m[0])[len(r) // 2] for k, r in runs.items()}
    peak = {k: max(m[1] for m in r) / 2**20 for k, r in runs.items()}
    ray_import, ray_init, ray_down = (float(x) for x in median["ray"][2].split())

    merged = work / "merged.db"
    for f in work.glob("merged.db*"):
        f.unlink()
    run_measured(tagger + ["merge", str(work / "out"), "--db", str(merged)])
    bad = differ(index_rows(work / "scan.db"), index_rows(merged))

    t = {k: m[0] for k, m in median.items()}
    # None where the one-file run took as long as all N (too few tracks, or a busy machine)
    steady = {k: (n - 1) / (t[k] - t[f"{k} one"]) if t[k] > t[f"{k} one"] else None
              for k in ("scan", "cluster")}
    rate = {k: "n/a" if v is None else f"{v:.2f}" for k, v in steady.items()}
    print(f"library: {folder} ({n} tracks{'' if args.library else f', {len(FORMATS)} formats'}); "
          f"model: {model} ({model_id}); batch size {args.batch_size}; "
          f"median of {args.repeat}")
    print(f"{'':34s}{'scan':>10s}{'cluster-scan':>14s}")
    rows = [("tracks", f"{n}", f"{n}"),
            ("whole run, s", f"{t['scan']:.1f}", f"{t['cluster']:.1f}"),
            ("tracks/s", f"{n / t['scan']:.2f}", f"{n / t['cluster']:.2f}"),
            ("one file, s (fixed cost)", f"{t['scan one']:.1f}", f"{t['cluster one']:.1f}"),
            ("steady tracks/s, (N-1)/(tN-t1)", rate["scan"], rate["cluster"]),
            ("peak RSS of the tree, MiB", f"{peak['scan']:.0f}", f"{peak['cluster']:.0f}"),
            ("decode processes", f"{w}", f"{d}")]
    for label, a, b in rows:
        print(f"{label:34s}{a:>10s}{b:>14s}")
    print("each round, s: " + "; ".join(f"{k} " + " ".join(f"{m[0]:.1f}" for m in r)
                                        for k, r in runs.items() if k != "ray"))
    print(f"load average (1 min) before/after: {load:.1f}/{os.getloadavg()[0]:.1f} "
          f"on {len(os.sched_getaffinity(0))} CPUs (other work skews every figure)")
    ratio = f"{steady['cluster'] / steady['scan']:.2f}" if all(steady.values()) else "n/a"
    print(f"ratio cluster-scan / scan: {t['scan'] / t['cluster']:.2f} whole run, {ratio} steady")
    print(f"Ray alone: import {ray_import:.1f} s, init {ray_init:.1f} s, shutdown {ray_down:.1f} s "
          f"(num_cpus={w}), peak RSS {peak['ray']:.0f} MiB")
    print(f"agree: {'no' if bad else 'yes'} ({len(bad)} tracks differ)")
    ph = median["cluster"][3]
    if ph:
        print(f"cluster-scan's stages (Ray Data's log): actors start {ph['actors']:.1f} s, "
              f"decode {ph['decode']:.1f} s ({n / ph['decode']:.2f} tracks/s), model "
              f"{ph['model']:.1f} s ({n / ph['model']:.2f} tracks/s), all {ph['execution']:.1f} s; "
              + ("the model ran while decoding" if ph["after"] < 0 else "the model began "
                 + (f"{ph['after']:.1f} s after" if ph["after"] >= 0.5 else "as") + " decoding ended"))
    per = n / ph["decode"] / d if ph else steady["cluster"] and steady["cluster"] / d
    if per:
        print(f"decode-bound: about {per:.2f} tracks/s per decode process (measured here) x "
              f"processes, until the model actors saturate"
              + (f" (one here: {'at least ' if ph['after'] <= 0 else ''}"
                 f"{n / ph['model']:.1f} tracks/s)" if ph else ""))


if __name__ == "__main__":
    main()
