"""The Python API: what the README's "Python API" section promises, on real generated files,
and that the light entry points import neither torch nor PyAV."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tagger
from tagger import api
from tagger.tags import read as read_tags

from conftest import write_track


def test_load_model_and_classify_a_file(library, model_path):
    model = tagger.load_model(model_path, device="cpu")
    p = model.classify_file(library / "a" / "two.flac")
    assert p.status == "ok" and p.error is None
    assert p.path == str(library / "a" / "two.flac")
    assert list(p.probabilities) == sorted(p.probabilities, key=p.probabilities.get, reverse=True)
    assert p.genre == next(iter(p.probabilities)) and p.confidence == p.probabilities[p.genre]
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert p.duration == pytest.approx(2.5, abs=0.1)
    assert p.model_id == model.model_id and set(model.genres) == set(p.probabilities)


def test_classify_files_keeps_the_order_given_and_says_why_a_file_failed(library, model_path, tmp_path):
    silent = write_track(tmp_path / "quiet.wav", kind="silence")
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"not audio at all" * 100)
    paths = [library / "c" / "six.wav", broken, silent, tmp_path / "missing.ogg",
             library / "a" / "one.mp3"]
    got = list(tagger.load_model(model_path, "cpu").classify_files(paths, workers=2))
    assert [p.path for p in got] == [str(p) for p in paths]
    assert [p.status for p in got] == ["ok", "failed", "silent", "error", "ok"]    # missing: transient
    assert all(p.error for p in got[1:4]) and got[1].genre is None and got[1].probabilities == {}


def test_classify_files_walks_a_folder(library, model_path):
    got = list(tagger.load_model(model_path, "cpu").classify_files([library / "b", library / "c" / "six.wav"],
                                                                  workers=0))
    assert [Path(p.path).name for p in got] == ["four.opus", "three.ogg", "six.wav"]
    assert all(p.status == "ok" for p in got)


def test_load_model_by_shipped_name_and_default():
    fast = tagger.load_model("fast", "cpu")
    default = tagger.load_model()
    assert fast.path.name == "fast.pt" and default.path.name == "default.pt"
    assert fast.model_id != default.model_id


def test_load_model_of_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(tagger.UserError, match="nope.pt"):
        tagger.load_model(tmp_path / "nope.pt")


def test_scan_reports_each_track_as_it_is_decoded_before_its_batch_is_stored(library, model_path, tmp_path):
    events = []
    tagger.scan([library], tmp_path / "i.db", model_path, workers=0, batch_size=16,
                on_decoded=lambda path: events.append(("decoded", path)),
                on_result=lambda r: events.append(("stored", r.path)))
    assert [kind for kind, _ in events] == ["decoded"] * 7 + ["stored"] * 7    # one batch
    assert sorted(p for kind, p in events if kind == "decoded") == sorted(
        p for kind, p in events if kind == "stored")


def test_scan_query_write_and_restore_from_python(library, model_path, tmp_path):
    db = tmp_path / "lib.db"
    started, results = [], []
    stats = tagger.scan([library], db, model_path, exclude=["*.opus"], workers=1,
                        on_start=started.append, on_result=results.append)
    assert started == [6] and len(results) == 6
    assert (stats.classified, stats.unchanged, stats.failed) == (6, 0, 0)
    again = tagger.scan([library], db, model_path, exclude=["*.opus"], workers=1)
    assert (again.classified, again.unchanged) == (0, 6)

    with tagger.Index(db, read_only=True) as index:
        rows = list(index.query())
        top = rows[0]["genre"]
        assert {r["path"] for r in index.query(genre=top.upper())} == \
            {r["path"] for r in rows if r["genre"] == top} != set()
        with pytest.raises(tagger.UserError, match="unknown genre"):
            list(index.query(genre="polka"))

    flac = str(library / "a" / "two.flac")
    outcomes = []
    written = tagger.write_tags([flac], db, options=tagger.TagOptions(min_confidence=0.0,
                                                                     include_uncertain=True),
                                on_outcome=outcomes.append)
    assert written.written == 1 and [o.action for o in outcomes] == ["written"]
    assert read_tags(flac).genres == outcomes[0].new
    restored = tagger.restore_tags([library], db)
    assert restored.written == 1 and read_tags(flac).genres == []


def test_write_tags_under_a_folder_never_scanned_is_a_user_error(library, model_path, tmp_path):
    db = tmp_path / "lib.db"
    tagger.scan([library / "a"], db, model_path, workers=0)
    with pytest.raises(tagger.UserError, match="no indexed tracks there"):
        tagger.write_tags([library / "b"], db)


def test_scan_stops_when_asked_and_says_so(library, model_path, tmp_path):
    db = tmp_path / "lib.db"
    stats = tagger.scan([library], db, model_path, workers=1, batch_size=1,
                        should_stop=lambda: True)
    assert stats.interrupted and stats.classified < 7


def test_scan_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(tagger.UserError, match="no such file or folder"):
        tagger.scan([tmp_path / "nowhere"], tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()


LIGHT = """
import sys
sys.argv = {argv!r}
import tagger.cli
try:
    tagger.cli.main()
except SystemExit:
    pass
heavy = {{'torch', 'av', 'librosa', 'torchaudio'}}
if '--help' in sys.argv:            # help reads no index either
    heavy |= {{'numpy', 'sqlite_utils'}}
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & heavy)
print('HEAVY', heavy, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["tagger", "--help"], ["tagger", "query", "--format", "json"],
                                  ["tagger", "query", "--format", "m3u"],
                                  ["tagger", "query", "--genre", "jazz"], ["tagger", "write-tags", "--help"],
                                  ["tagger", "stats"], ["tagger", "stats", "--format", "json"]])
def test_light_commands_import_neither_torch_nor_av(argv, library, model_path, tmp_path):
    db = tmp_path / "lib.db"
    tagger.scan([library / "a"], db, model_path, workers=0)
    done = subprocess.run([sys.executable, "-c", LIGHT.format(argv=argv)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TAGGER_DB": str(db)})
    assert "HEAVY [" in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "HEAVY []"


def test_the_index_api_imports_neither_torch_nor_av(library, model_path, tmp_path):
    db = tmp_path / "lib.db"
    tagger.scan([library / "a"], db, model_path, workers=0)
    code = (f"import sys, tagger\nwith tagger.Index({str(db)!r}, read_only=True) as i:\n"
            "    n = len(list(i.query()))\n"
            "print(n, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'av', 'librosa'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split(None, 1) == ["2", "[]\n"], done.stderr


def test_the_readme_example_runs(library, tmp_path):
    """The README's "Python API" example, saved as a script file as a user would (decoders
    are spawned processes, which import the script again), on a generated file."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    song = write_track(tmp_path / "song.flac", seconds=4, kind="clicks")
    (tmp_path / "example.py").write_text(example)
    done = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert song.name in done.stdout and "8 classified, 0 unchanged, 0 failed" in done.stdout  # + Music


def test_the_readme_one_liner_runs(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(l.strip() for l in readme.splitlines() if l.strip().startswith('python -c "import tagger'))
    code = line[len('python -c "'):-1]
    write_track(tmp_path / "x.flac", seconds=3, kind="tone")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Prediction(path='{tmp_path / 'x.flac'}', status='ok'")


def test_scan_gives_the_same_whether_the_model_loads_while_decoding_or_before(library, model_path,
                                                                              tmp_path):
    """A checkpoint path loads in a thread while the decoders start; a Model is loaded
    already: the stored predictions are the same, bit for bit."""
    rows = []
    for model, db in ((model_path, tmp_path / "a.db"),
                      (tagger.load_model(model_path, "cpu"), tmp_path / "b.db")):
        got = []
        stats = tagger.scan([library], db, model, workers=2, device="cpu", on_result=got.append)
        assert stats.classified == len(got) > 0
        rows.append(sorted((p.path, p.probabilities) for p in got))
    assert rows[0] == rows[1]


def test_stored_gives_each_files_prediction_as_the_scan_stored_it(library, model_path, tmp_path):
    db = tmp_path / "i.db"
    link = tmp_path / "link.wav"
    link.symlink_to(library / "c" / "six.wav")      # stored by its real path, found by either
    silent = write_track(tmp_path / "quiet.wav", kind="silence")
    unseen = write_track(tmp_path / "new.wav")
    tagger.scan([library, silent], db, model_path, workers=0)
    model = tagger.load_model(model_path, "cpu")
    got = api.stored([link, library / "a" / "one.mp3", silent, unseen], db)
    assert list(got) == [str(link), str(library / "a" / "one.mp3"), str(silent)]     # unseen: none
    fresh = model.classify_file(library / "c" / "six.wav")
    p = got[str(link)]
    assert p.path == str(link) and p.status == "ok" and p.model_id == model.model_id
    assert p.genre == fresh.genre and p.probabilities == pytest.approx(fresh.probabilities, abs=1e-5)
    assert list(p.probabilities) == list(fresh.probabilities)                # best first
    assert p.uncertain == fresh.uncertain and p.uncertain_below == model.uncertain_below
    assert got[str(silent)].status == "silent" and got[str(silent)].genre is None


def test_stored_says_what_the_threshold_of_the_model_was(library, model_path, tmp_path):
    from conftest import make_checkpoint
    unsure = make_checkpoint(tmp_path / "unsure.pt", uncertain_below=0.99)
    db = tmp_path / "i.db"
    tagger.scan([library / "a"], db, unsure, workers=0)
    got = api.stored([library / "a" / "two.flac"], db)[str(library / "a" / "two.flac")]
    assert got.uncertain and got.uncertain_below == 0.99


def test_retagged_keeps_the_prediction_of_a_file_whose_tags_another_program_rewrote(library, model_path, tmp_path):
    db = tmp_path / "i.db"
    track = library / "a" / "two.flac"
    tagger.scan([track], db, model_path, workers=0)
    st = track.stat()
    from mutagen.flac import FLAC
    f = FLAC(track)
    f["genre"] = ["Something else entirely, with a longer value than before" * 40]
    f.save()
    api.retagged({track: (st.st_size, st.st_mtime_ns)}, db)
    started = []
    tagger.scan([track], db, model_path, workers=0, on_start=started.append)
    assert started == [0]                           # not classified again
    other = library / "a" / "one.mp3"               # never scanned: nothing to follow
    api.retagged({other: (1, 1)}, db)
    assert str(other) not in api.stored([other], db)
