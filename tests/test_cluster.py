"""cluster-scan on Ray Data (the [cluster] extra), and merge into the index: the same tracks
and probabilities as `tagger scan`, a crashing decoder costs one file, and without Ray the
command says how to install it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run, write_track

TESTS = os.path.dirname(os.path.abspath(__file__))


def tagger_without(module: str, *args) -> subprocess.CompletedProcess:
    """The CLI in a process where importing `module` fails, as where it is not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; from tagger.cli import main; "
            f"sys.argv = ['tagger', *{[str(a) for a in args]!r}]; main()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_cluster_scan_without_ray_says_how_to_install(tmp_path):
    write_track(tmp_path / "Music" / "one.wav", seconds=1.0)
    done = tagger_without("ray", "cluster-scan", tmp_path / "Music", "--out", tmp_path / "out")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: cluster-scan needs Ray Data: pip install 'tagger[cluster]'"], done.stderr
    assert not (tmp_path / "out").exists()


def test_merge_without_pyarrow_says_how_to_install(tmp_path):
    (tmp_path / "out").mkdir()
    done = tagger_without("pyarrow", "merge", tmp_path / "out", "--db", tmp_path / "index.db")
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


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray on 2 CPUs; its workers import tagger and tests/crashers.py. Shut down
    after this module: its idle processes would slow every later test."""
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
    again = run("cluster-scan", library, "--out", out, "--model", model_path).stdout
    assert again.startswith(f"Nothing to do: all 7 files have current results in {out}."), again
    assert len(list(out.glob("*.parquet"))) == 1


def test_an_object_store_prefix_in_and_out_gives_what_scan_gives(ray_local, library,
                                                                  model_path, tmp_path):
    """file:// URIs stand in for s3:// and gs://: listed, read in blocks and written through
    fsspec, as an object store is."""
    run("scan", library, "--db", tmp_path / "scan.db", "--model", model_path, "--workers", "1")
    source, out = f"file://{library}", f"file://{tmp_path}/results"
    said = run("cluster-scan", source, "--out", out, "--model", model_path).stdout
    assert "Scanned 7 tracks" in said and "7 classified" in said, said
    assert f"fold them into the index with: tagger merge {out}" in said, said
    assert "Merged 7 tracks" in run("merge", out, "--db", tmp_path / "cluster.db").stdout
    want, got = index_rows(tmp_path / "scan.db"), index_rows(tmp_path / "cluster.db")
    assert sorted(got) == sorted(f"file://{p}" for p in want)
    for path, w in want.items():
        g = got[f"file://{path}"]
        assert (g["status"], g["genre"], g["size"]) == (w["status"], w["genre"], w["size"])
        for genre, p in w["probabilities"].items():
            assert g["probabilities"][genre] == pytest.approx(p, abs=1e-6), (path, genre)
    again = run("cluster-scan", source, "--out", out, "--model", model_path).stdout
    assert again.startswith(f"Nothing to do: all 7 files have current results in {out}."), again


def test_nothing_to_scan_says_so_and_merge_says_what_it_needs(ray_local, model_path, tmp_path):
    (tmp_path / "Empty").mkdir()
    said = run("cluster-scan", tmp_path / "Empty", "--out", tmp_path / "out", "--model",
               model_path).stdout
    assert said.startswith("Nothing to do: no audio files found."), said
    failed = run("merge", tmp_path / "out", "--db", tmp_path / "index.db", ok=1)
    assert "no Parquet files here; give the --out folder of a cluster-scan" in failed.output
    assert not (tmp_path / "index.db").exists()


def test_a_name_parquet_cannot_hold_is_said_not_dropped(ray_local, model_path, tmp_path):
    write_track(tmp_path / "Music" / "good.wav", seconds=1.0)
    os.rename(write_track(tmp_path / "x.wav", seconds=1.0),
              os.path.join(os.fsencode(tmp_path / "Music"), b"bad\xff.wav"))
    done = run("cluster-scan", tmp_path / "Music", "--out", tmp_path / "out", "--model",
               model_path, "--decoders", "2")
    said = done.stdout
    assert "Scanned 1 tracks" in said, said
    assert ("1 file left out: its name is not UTF-8, which Parquet cannot hold; scan such "
            "files with tagger scan.") in said, said
    # 2 decode actors at a CPU each and the model actor's half: more than Ray's 2 CPUs
    assert "1 files to classify on 2 CPUs: 2 decode actors, 1 model actor." in done.stderr
    assert ("Warning: 2 decode actors and 1 model actor ask for more than Ray's 2 CPUs: the "
            "model may wait until decoding ends") in done.stderr, done.stderr
    failed = run("cluster-scan", tmp_path / "Music", "--out", tmp_path / "out", "--model",
                 model_path, "--force", "--device", "cuda", ok=1)
    assert "Error: --device cuda: this Ray cluster has no GPUs" in failed.stderr


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


# -- the plan against earlier results, and the results files (no Ray: Arrow only) ----------

def results_table(rows: list[dict]):
    import pyarrow as pa
    from tagger.cluster import results_schema
    full = [{"version": None, "genre": None, "confidence": None, "probabilities": [],
             "error": None, "duration": None, "fingerprint": None, "uncertain_below": 0.0,
             **row} for row in rows]
    return pa.Table.from_pylist(full, schema=results_schema())


def test_a_rescan_sends_the_new_the_changed_the_stale_and_errors_not_failures(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    from tagger.cluster import ResultWriter, listing_schema, plan, previous_results
    earlier = [("same", 10, 1, None, "m", "ok"), ("bigger", 10, 1, None, "m", "ok"),
               ("touched", 10, 1, None, "m", "ok"), ("etag", 10, 1, '"a"', "m", "ok"),
               ("other model", 10, 1, None, "old", "ok"), ("error", 10, 1, None, "m", "error"),
               ("failed", 10, 1, None, "m", "failed"), ("fixed", 10, 1, None, "m", "error"),
               ("same etag", 10, 1, '"b"', "m", "ok")]
    keys = ("path", "size", "mtime_ns", "version", "model_id", "status")
    writer = ResultWriter(tmp_path / "out")
    writer.add(results_table([dict(zip(keys, row)) for row in earlier]))
    writer.flush()
    writer.add(results_table([{"path": "fixed", "size": 10, "mtime_ns": 1, "model_id": "m",
                               "status": "ok"}]))       # a later file: its row wins
    writer.flush()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        [f"{writer.run}-000000.parquet", f"{writer.run}-000001.parquet"]
    now = [("same", 10, 1, None, None), ("bigger", 11, 1, None, None),
           ("touched", 10, 2, None, None), ("etag", 10, 1, '"c"', None),
           ("other model", 10, 1, None, None), ("error", 10, 1, None, None),
           ("failed", 10, 1, None, None), ("fixed", 10, 1, None, None),
           ("same etag", 10, 1, '"b"', None), ("new", 5, 1, None, None),
           ("unreadable", 0, 0, None, "permission denied")]
    listed = pa.Table.from_pylist([dict(zip(("path", "size", "mtime_ns", "version", "error"), r))
                                   for r in now], schema=listing_schema())
    previous = previous_results(tmp_path / "out")
    assert len(previous) == len(earlier)
    sent = plan(listed, previous, "m")
    assert sorted(sent["path"].to_pylist()) == sorted(
        ["bigger", "touched", "etag", "other model", "error", "new", "unreadable"])
    assert sent.schema == listed.schema
    assert len(plan(listed, previous, "m", force=True)) == len(now)
    assert plan(listed, previous_results(tmp_path / "nothing yet"), "m") == listed


def test_a_parquet_manifest_lists_paths_and_may_carry_their_sizes(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tagger.cluster import listing
    one = write_track(tmp_path / "Music" / "one.wav", seconds=0.5)
    two = write_track(tmp_path / "Music" / "two.flac", seconds=0.5)
    pq.write_table(pa.table({"path": ["Music/one.wav", str(two), "Music/gone.wav", None]}),
                   tmp_path / "paths.parquet")
    listed, not_utf8 = listing([tmp_path / "paths.parquet"])
    rows = {r["path"]: r for r in listed.to_pylist()}
    assert set(rows) == {str(one), str(two), str(tmp_path / "Music" / "gone.wav")}
    assert rows[str(one)]["size"] == one.stat().st_size
    assert rows[str(one)]["mtime_ns"] == one.stat().st_mtime_ns
    assert rows[str(tmp_path / "Music" / "gone.wav")]["error"] == \
        "no such file (listed in a manifest)"
    # with sizes and times (an inventory, or an earlier run's results): taken as they are
    pq.write_table(pa.table({"path": ["s3://label/a.flac"], "size": [123], "mtime_ns": [7],
                             "version": ['"etag"']}), tmp_path / "inventory.parquet")
    listed, _ = listing([tmp_path / "inventory.parquet"])
    assert listed.to_pylist() == [{"path": "s3://label/a.flac", "size": 123, "mtime_ns": 7,
                                   "version": '"etag"', "error": None}]
    (tmp_path / "bad.parquet").write_text("path\n")
    failed = run("cluster-scan", tmp_path / "bad.parquet", "--out", tmp_path / "out", ok=1)
    assert "bad.parquet: cannot read it as a Parquet manifest" in failed.output
    pq.write_table(pa.table({"file": ["x.wav"]}), tmp_path / "nopath.parquet")
    failed = run("cluster-scan", tmp_path / "nopath.parquet", "--out", tmp_path / "out", ok=1)
    assert "nopath.parquet: a Parquet manifest needs a 'path' column (it has file)" in \
        failed.output


def test_ctrl_c_keeps_what_was_classified_and_a_rerun_does_the_rest(tmp_path, model_path):
    """Ctrl-C at a terminal signals the whole process group, Ray's processes included."""
    pytest.importorskip("ray")
    for i in range(10):
        write_track(tmp_path / "Music" / f"t{i:02d}.wav", seconds=0.5, freq=200.0 + 40 * i)
    program = ("import sys; import tagger.cluster as c; from crashers import slow_decode; "
               "c.cluster_scan.__kwdefaults__['function'] = slow_decode; c.FLUSH_ROWS = 1; "
               "from tagger.cli import main; main()")
    args = [sys.executable, "-c", program, "cluster-scan", str(tmp_path / "Music"), "--out",
            str(tmp_path / "out"), "--model", str(model_path), "--decoders", "1",
            "--batch-size", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, *filter(None, [
        os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_results(tmp_path / "out", 0)
        os.killpg(proc.pid, signal.SIGINT)
        said, errors = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, errors
    assert "Interrupted: what was classified is saved; run the same command again" in errors
    first = int(re.search(r"Scanned (\d+) tracks", said).group(1))
    assert 0 < first < 10, said
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"Scanned {10 - first} tracks" in done.stdout, done.stdout
    assert f"{first} unchanged" in done.stdout, done.stdout
    assert "Merged 10 tracks" in run("merge", tmp_path / "out", "--db", tmp_path / "i.db").stdout
    assert {r["status"] for r in index_rows(tmp_path / "i.db").values()} == {"ok"}
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.endswith(".parquet")]


def wait_for_results(out: Path, files: int) -> None:
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.parquet"))) <= files and time.monotonic() < deadline:
        time.sleep(0.1)


def test_sigterm_ends_the_run_as_ctrl_c_does(ray_local, model_path, tmp_path, monkeypatch):
    """`ray job stop` sends the driver SIGTERM, for which ray.init installs sys.exit."""
    import threading
    import tagger.cluster
    from tagger.cluster import ClusterStats, cluster_scan
    from crashers import slow_decode
    monkeypatch.setattr(tagger.cluster, "FLUSH_ROWS", 1)
    for i in range(6):
        write_track(tmp_path / "Music" / f"t{i}.wav", seconds=0.5, freq=200.0 + 40 * i)

    def stop():
        wait_for_results(tmp_path / "out", 0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop, daemon=True).start()
    stats = ClusterStats()
    with pytest.raises(KeyboardInterrupt):
        cluster_scan([tmp_path / "Music"], tmp_path / "out", model_path, function=slow_decode,
                     decoders=1, batch_size=1, stats=stats)
    assert 0 < stats.classified < 6 and stats.files >= 1
    assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler
    run("merge", tmp_path / "out", "--db", tmp_path / "i.db")
    assert len(index_rows(tmp_path / "i.db")) == stats.classified


def test_an_objects_row_is_neither_pruned_nor_missing_and_write_tags_says_why_not(tmp_path):
    """merge stores an object's URI as its path: tagger cannot look at the store from here,
    so the row stays, and write-tags skips it with its reason."""
    from tagger.index import Index, TrackResult
    db = tmp_path / "index.db"
    with Index(db) as index:
        index.note_model("m", 0.3)
        index.store([TrackResult("s3://label/a.mp3", 10, 1, "m", "ok", {"jazz": 0.9, "rock": 0.1},
                                 None, 30.0, None)])
    assert "Removed 0 tracks" in run("prune", "--db", db).stdout
    assert "Missing on disk" not in run("stats", "--db", db).stdout
    said = run("write-tags", "--db", db, "--verbose")
    assert "on object storage: 1" in said.stdout, said.output
    assert "s3://label/a.mp3: on object storage: tagger writes tags into local files only" in \
        said.output
    assert "s3://label/a.mp3" in run("query", "--db", db).stdout


def test_a_damaged_results_file_is_named_and_nothing_else_is_lost(tmp_path):
    pytest.importorskip("pyarrow")
    from tagger.cluster import ResultWriter
    writer = ResultWriter(tmp_path / "out")
    writer.add(results_table([{"path": str(tmp_path / "a.wav"), "size": 10, "mtime_ns": 1,
                               "model_id": "m", "status": "ok",
                               "probabilities": [("jazz", 0.9), ("rock", 0.1)]}]))
    writer.flush()
    good = next((tmp_path / "out").glob("*.parquet"))
    bad = tmp_path / "out" / "zz-cut-short.parquet"
    bad.write_bytes(good.read_bytes()[:40])
    for args in (["merge", tmp_path / "out", "--db", tmp_path / "index.db"],
                 ["cluster-scan", tmp_path, "--out", tmp_path / "out"]):
        failed = run(*args, ok=1)
        assert f"{bad}: cannot read it as a cluster-scan's results" in failed.stderr, \
            failed.output
        assert "move it out of the folder and run the command again" in failed.stderr
    bad.unlink()
    assert "Merged 1 tracks" in run("merge", tmp_path / "out", "--db", tmp_path / "index.db").stdout
    assert good.exists()


def test_the_help_names_the_extra_to_install():
    said = " ".join(run("cluster-scan", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert "needs the [cluster] extra" in said, said
