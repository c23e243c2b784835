"""cluster-scan on Ray Data (the [cluster] extra), and merge into the index: the same tracks
and probabilities as `tagger scan`, a crashing decoder costs one file, and without Ray the
command says how to install it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run, write_track

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_cluster_scan_without_ray_says_how_to_install(tmp_path):
    write_track(tmp_path / "Music" / "one.wav", seconds=1.0)
    code = ("import sys; sys.modules['ray'] = None; from tagger.cli import main; "
            f"sys.argv = ['tagger', 'cluster-scan', {str(tmp_path / 'Music')!r}, '--out', "
            f"{str(tmp_path / 'out')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["Error: cluster-scan needs Ray Data: pip install 'tagger[cluster]'"], \
        done.stderr
    assert not (tmp_path / "out").exists()


def test_merge_without_pyarrow_says_how_to_install(tmp_path):
    (tmp_path / "out").mkdir()
    code = ("import sys; sys.modules['pyarrow'] = None; from tagger.cli import main; "
            f"sys.argv = ['tagger', 'merge', {str(tmp_path / 'out')!r}, '--db', "
            f"{str(tmp_path / 'index.db')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: merge needs Ray Data: pip install 'tagger[cluster]'"], done.stderr


def test_only_cluster_scan_and_merge_import_ray():
    code = ("import sys, tagger, tagger.cli, tagger.api, tagger.scanner; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', "
            "'tagger.cluster'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray on 2 CPUs; its workers import tagger and tests/crashers.py."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join([TESTS, *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def index_rows(db: Path) -> dict[str, dict]:
    from tagger.index import existing_index
    with existing_index(db, read_only=True) as index:
        return {r["path"]: r for r in index.tracks()}


def test_cluster_scan_and_merge_give_what_scan_gives(ray_local, library, model_path, tmp_path):
    run("scan", library, "--db", tmp_path / "scan.db", "--model", model_path, "--workers", "1")
    out = tmp_path / "out"
    said = run("cluster-scan", library, "--out", out, "--model", model_path).stdout
    assert "Scanned 7 tracks" in said and "7 classified" in said, said
    assert list(out.glob("*.parquet"))
    merged = run("merge", out, "--db", tmp_path / "cluster.db").stdout
    assert "Merged 7 tracks" in merged, merged
    want, got = index_rows(tmp_path / "scan.db"), index_rows(tmp_path / "cluster.db")
    assert sorted(got) == sorted(want)
    for path, w in want.items():
        g = got[path]
        for key in ("status", "genre", "model_id", "error", "size", "mtime_ns", "uncertain"):
            assert g[key] == w[key], (path, key)
        assert g["duration"] == pytest.approx(w["duration"], abs=1e-6)
        assert g["probabilities"].keys() == w["probabilities"].keys()
        for genre, p in w["probabilities"].items():
            assert g["probabilities"][genre] == pytest.approx(p, abs=1e-6), (path, genre)
    listed = run("query", "--db", tmp_path / "cluster.db", "--format", "json").stdout
    assert all(str(p) in listed for p in want)


def test_nothing_to_scan_says_so_and_merge_says_what_it_needs(ray_local, model_path, tmp_path):
    (tmp_path / "Empty").mkdir()
    said = run("cluster-scan", tmp_path / "Empty", "--out", tmp_path / "out", "--model",
               model_path).stdout
    assert said.startswith("Nothing to do: no audio files found."), said
    failed = run("merge", tmp_path / "out", "--db", tmp_path / "index.db", ok=1)
    assert "no Parquet files here; give the --out folder of a cluster-scan" in failed.output
    assert not (tmp_path / "index.db").exists()


def test_a_name_parquet_cannot_hold_is_said_not_dropped(ray_local, model_path, tmp_path):
    good = write_track(tmp_path / "Music" / "good.wav", seconds=1.0)
    os.rename(write_track(tmp_path / "x.wav", seconds=1.0),
              os.path.join(os.fsencode(tmp_path / "Music"), b"bad\xff.wav"))
    said = run("cluster-scan", tmp_path / "Music", "--out", tmp_path / "out", "--model",
               model_path).stdout
    assert "Scanned 1 tracks" in said, said
    assert ("1 file left out: its name is not UTF-8, which Parquet cannot hold; scan such "
            "files with tagger scan.") in said, said


def test_a_crashing_and_a_hanging_decoder_cost_one_row_each(ray_local, model_path, tmp_path):
    from tagger.cluster import cluster_scan
    from crashers import crash_or_decode
    music = tmp_path / "Music"
    good = [write_track(music / f"good{i}.wav", seconds=1.0, freq=300.0 + 100 * i)
            for i in range(3)]
    crash = write_track(music / "crash.wav", seconds=1.0)
    hang = write_track(music / "hang.wav", seconds=1.0)
    manifest = tmp_path / "list.txt"
    manifest.write_text("# one block: the bad files share it with the good ones\n"
                        + "".join(f"{p}\n" for p in [crash, good[0], hang, *good[1:]]))
    stats = cluster_scan([manifest], tmp_path / "out", model_path, function=crash_or_decode,
                         decode_timeout=4.0)
    assert (stats.classified, stats.failed) == (3, 2)
    run("merge", tmp_path / "out", "--db", tmp_path / "index.db")
    rows = index_rows(tmp_path / "index.db")
    assert {p: r["status"] for p, r in rows.items()} == \
        {**{str(p): "ok" for p in good}, str(crash): "error", str(hang): "error"}
    assert rows[str(crash)]["error"].startswith("the decoder crashed"), rows[str(crash)]
    assert rows[str(hang)]["error"] == "decoding took longer than 4 s; gave up on it"


def test_a_decode_actor_keeps_its_decoder_process_from_block_to_block(ray_local, model_path,
                                                                      tmp_path):
    """One process start per actor, not per block (each start costs about 0.3 s)."""
    from tagger.cluster import cluster_scan
    from crashers import worker_pid
    for i in range(3):
        write_track(tmp_path / "Music" / f"t{i}.wav", seconds=0.5)
    cluster_scan([tmp_path / "Music"], tmp_path / "out", model_path, function=worker_pid,
                 decoders=1, batch_size=1)
    run("merge", tmp_path / "out", "--db", tmp_path / "index.db")
    reasons = {r["error"] for r in index_rows(tmp_path / "index.db").values()}
    assert len(reasons) == 1 and next(iter(reasons)).startswith("pid "), reasons
