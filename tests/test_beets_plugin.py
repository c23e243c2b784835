"""The beets plugin (beetsplug/audiogenre.py), end to end: the real `beet` command in a
subprocess on a temporary beets library of generated files, with a small random model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("beets")

from beets.library import Item, Library                 # noqa: E402
from mediafile import MediaFile                          # noqa: E402

from tagger.genres import DISPLAY_NAMES, GENRES          # noqa: E402

from conftest import run, write_track                    # noqa: E402

ROOT = Path(__file__).parents[1]


class Beets:
    """A beets setup in a temporary folder: its library, its config (plugins: audiogenre),
    and tagger's index beside them."""

    def __init__(self, tmp_path: Path, model: Path, copy: bool = False, **options):
        self.copy = copy
        self.home = tmp_path / "beets"
        self.home.mkdir()
        self.library = self.home / "library.db"
        self.index = tmp_path / "tagger.db"
        self.configure(model=str(model), db=str(self.index), workers=0, **options)

    def configure(self, **options) -> None:
        config = {"directory": str(self.home / "music"), "library": str(self.library),
                  "plugins": ["audiogenre"], "import": {"copy": self.copy, "move": False,
                                                        "write": True, "log": None},
                  "audiogenre": options}
        (self.home / "config.yaml").write_text(json.dumps(config))      # JSON is YAML

    def add(self, *paths: Path, **fields) -> None:
        """Items made from the files by beets' own library API (no plugin involved)."""
        lib = Library(str(self.library), str(self.home / "music"))
        for path in paths:
            try:
                item = Item.from_path(str(path))
            except Exception:                   # a file beets cannot read: a bare item
                item = Item(path=os.fsencode(path), title=path.stem)
            item.update({"title": item.title or path.stem, **fields})
            lib.add(item)
        lib._close()

    def beet(self, *args: str, ok: bool = True, **env: str) -> str:
        env = {**os.environ, **env, "BEETSDIR": str(self.home),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "beets", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done.stdout + done.stderr

    def items(self) -> dict[str, dict]:
        """Each item's fields, by file name."""
        lib = Library(str(self.library), str(self.home / "music"))
        items = {Path(os.fsdecode(i.path)).name: dict(i) for i in lib.items()}
        lib._close()
        return items


@pytest.fixture
def tracks(tmp_path) -> list[Path]:
    return [write_track(tmp_path / "in" / "one.flac", kind="tone", freq=330.0),
            write_track(tmp_path / "in" / "two.mp3", kind="noise", seed=2),
            write_track(tmp_path / "in" / "three.ogg", kind="clicks", channels=2, seed=3)]


def query(index: Path) -> dict[str, dict]:
    rows = json.loads(run("query", "--format", "json", "--db", index).stdout)
    return {Path(r["path"]).name: r for r in rows}


def test_audiogenre_stores_what_tagger_query_gives(tmp_path, model_path, tracks):
    beets = Beets(tmp_path, model_path)
    beets.add(*tracks)
    out = beets.beet("audiogenre")
    assert "classifying 3 of 3 files" in out
    rows, items = query(beets.index), beets.items()
    assert set(rows) == set(items) == {"one.flac", "two.mp3", "three.ogg"}
    for name, row in rows.items():
        item = items[name]
        assert item["audiogenre"] == DISPLAY_NAMES[row["genre"]]
        assert float(item["audiogenre_confidence"]) == pytest.approx(row["confidence"])
        assert item["audiogenre_model"] == row["model_id"]
        for genre in GENRES:
            assert float(item[f"audiogenre_{genre}"]) == pytest.approx(row["probabilities"][genre])
        assert "genres" not in item or not item["genres"]          # write_genre is off
    listing = beets.beet("ls", "-f", "$audiogenre|$audiogenre_confidence|$title")
    assert f"{items['two.mp3']['audiogenre']}|{float(items['two.mp3']['audiogenre_confidence']):.3f}|two" \
        in listing.splitlines()
    genre, confidence = rows["one.flac"]["genre"], rows["one.flac"]["confidence"]
    found = beets.beet("ls", "-f", "$title", f"audiogenre:{DISPLAY_NAMES[genre]}",
                       f"audiogenre_confidence:{confidence - 0.001:.3f}..").split()
    assert "one" in found
    higher = beets.beet("ls", "-f", "$title", f"audiogenre_confidence:{confidence + 0.001:.3f}..")
    assert "one" not in higher.split()          # a numeric range, not a substring


def test_a_second_run_and_a_library_tagger_scanned_cost_nothing(tmp_path, model_path, tracks):
    beets = Beets(tmp_path, model_path)
    beets.add(*tracks[:2])
    run("scan", tracks[0], "--db", beets.index, "--model", model_path, "--workers", "0")
    assert "classifying 1 of 2 files" in beets.beet("audiogenre")     # tagger scanned the other
    before = beets.items()
    again = beets.beet("audiogenre")
    assert "classifying" not in again and beets.items() == before
    assert "classifying 2 of 2 files" in beets.beet("audiogenre", "--force")


def test_pretend_stores_nothing(tmp_path, model_path, tracks):
    beets = Beets(tmp_path, model_path, write_genre=True)
    beets.add(*tracks)
    out = beets.beet("audiogenre", "--pretend")
    assert out.count("would store ") == 3 and out.count("would set genre") == 3
    assert not any(k.startswith("audiogenre") or v for i in beets.items().values()
                   for k, v in i.items() if k.startswith(("audiogenre", "genres")))
    assert all(not MediaFile(t).genres for t in tracks)


def test_write_genre_sets_beets_genre_keeps_a_humans_unless_overwrite(tmp_path, model_path, tracks):
    words = {g: [f"My {g}", "Music"] for g in GENRES}       # the user's words for each genre
    beets = Beets(tmp_path, model_path, write_genre=True, map=words)
    beets.add(tracks[0])
    beets.add(*tracks[1:], genres=["Folk"])
    mine = MediaFile(tracks[1])
    mine.genres = ["Folk"]
    mine.save()
    out = beets.beet("audiogenre")
    rows, items = query(beets.index), beets.items()
    top = rows["one.flac"]["genre"]
    assert items["one.flac"]["audiogenre"] == f"My {top}, Music"
    assert MediaFile(tracks[0]).genres == [f"My {top}", "Music"]     # beets wrote the file
    assert "genre kept: Folk" in out and MediaFile(tracks[1]).genres == ["Folk"]
    assert "classifying" not in beets.beet("audiogenre")     # the index followed beets' write
    beets.configure(model=str(model_path), db=str(beets.index), workers=0, write_genre=True,
                    overwrite=True)
    beets.beet("audiogenre")
    assert MediaFile(tracks[1]).genres == [DISPLAY_NAMES[rows["two.mp3"]["genre"]]]


def test_uncertain_tracks_get_no_genre(tmp_path, model_path, tracks):
    beets = Beets(tmp_path, model_path)
    beets.add(tracks[0])
    beets.beet("audiogenre")
    assert beets.items()["one.flac"]["audiogenre"]
    beets.configure(model=str(model_path), db=str(beets.index), workers=0, min_confidence=0.999)
    out = beets.beet("audiogenre")
    assert "uncertain" in out and "below 100%" in out
    item = beets.items()["one.flac"]
    assert "audiogenre" not in item and float(item["audiogenre_confidence"]) < 0.999


def test_a_corrupt_or_silent_file_is_reported_and_the_others_tagged(tmp_path, model_path, tracks):
    broken = tmp_path / "in" / "broken.mp3"
    broken.write_bytes(b"not audio at all" * 100)
    quiet = write_track(tmp_path / "in" / "quiet.wav", kind="silence")
    beets = Beets(tmp_path, model_path)
    beets.add(tracks[0], broken, quiet)
    out = beets.beet("audiogenre")
    assert "broken" in out and "failed" in out and "silent" in out
    items = beets.items()
    assert items["one.flac"]["audiogenre"]
    assert not any(k.startswith("audiogenre") for n in ("broken.mp3", "quiet.wav") for k in items[n])


@pytest.mark.parametrize("options, error", [
    ({"map": {"polka": "Polka"}}, "audiogenre: map: unknown genre 'polka'; use one of blues,"),
    ({"min_confidence": 1.5}, "audiogenre: min_confidence must be between 0 and 1"),
    ({"top_k": 0}, "audiogenre: top_k must be 1 or more")])
def test_a_bad_option_is_a_one_line_error(tmp_path, model_path, tracks, options, error):
    beets = Beets(tmp_path, model_path, **options)
    beets.add(tracks[0])
    out = beets.beet("audiogenre", ok=False)
    assert error in out and "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_import_hook_classifies_items_as_they_are_imported(tmp_path, model_path, tracks):
    for track in tracks:        # untitled, beets would take them for duplicates of each other
        tags = MediaFile(track)
        tags.title = track.stem
        tags.save()
    beets = Beets(tmp_path, model_path, copy=True, auto=True, write_genre=True)
    beets.beet("import", "-A", "-s", "-q", str(tmp_path / "in"))
    rows, items = query(beets.index), beets.items()
    assert set(items) == {"one.flac", "two.mp3", "three.ogg"}
    for name, item in items.items():        # classified where beets put them, in its folder
        assert item["path"].startswith(os.fsencode(beets.home / "music"))
        assert rows[name]["path"] == os.fsdecode(item["path"])
        assert item["audiogenre"] == DISPLAY_NAMES[rows[name]["genre"]]
        assert MediaFile(os.fsdecode(item["path"])).genres == [item["audiogenre"]]
    assert all(not MediaFile(t).genres for t in tracks)                 # the originals: untouched
    assert "classifying" not in beets.beet("audiogenre")


def test_top_k_sets_several_genres_best_first(tmp_path, model_path, tracks):
    beets = Beets(tmp_path, model_path, write_genre=True, top_k=3, min_confidence=0.0)
    beets.add(tracks[0])
    beets.beet("audiogenre")
    probabilities = query(beets.index)["one.flac"]["probabilities"]
    best = sorted(probabilities, key=probabilities.get, reverse=True)[:3]
    assert MediaFile(tracks[0]).genres == [DISPLAY_NAMES[g] for g in best]
    assert beets.items()["one.flac"]["audiogenre"] == DISPLAY_NAMES[best[0]]


def test_the_index_and_model_paths_may_start_with_a_tilde(tmp_path, model_path, tracks):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "m.pt").write_bytes(model_path.read_bytes())
    beets = Beets(tmp_path, model_path)
    beets.configure(model="~/m.pt", db="~/idx.db", workers=0)
    beets.add(tracks[0])
    beets.beet("audiogenre", HOME=str(tmp_path / "home"))
    assert query(tmp_path / "home" / "idx.db")["one.flac"]["genre"]
    assert beets.items()["one.flac"]["audiogenre"]


def test_without_a_map_the_words_of_taggers_config_file_are_used(tmp_path, model_path, tracks):
    """The [genres] of tagger's config file name the genres, as write-tags writes them."""
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tagger" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[genres]\n" + "".join(f'{g} = ["Mine {g}"]\n' for g in GENRES))
    beets = Beets(tmp_path, model_path)
    beets.add(tracks[0])
    beets.beet("audiogenre")
    top = query(beets.index)["one.flac"]["genre"]
    assert beets.items()["one.flac"]["audiogenre"] == f"Mine {top}"
    config.write_text("[genres]\nnot_a_genre = 'x'\n")
    error = beets.beet("audiogenre", "-f", ok=False)
    assert "error: audiogenre: " in error and "config.toml: line 2" in error
