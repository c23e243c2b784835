"""write-tags --append: tagger's genre(s) join the values the file has (none twice, compared
case-insensitively and without surrounding spaces), and restore-tags takes out just those,
even after a hand edit of the other values. Files of every format with odd genre values,
made here with tagger.synth and mutagen."""

from __future__ import annotations

import shutil
from pathlib import Path

import mutagen
import mutagen.mp3
import pytest
from mutagen.id3 import ID3, TCON, TIT2
from mutagen.mp4 import MP4

from conftest import run
from tagfixtures import _audio, id3_tag, raw_frames, snapshot
from test_tags import index_as_scanned
from tagger import synth
from tagger.genres import GENRES
from tagger.writetags import TagOptions, restore_tags, write_tags

BARE = {"id3v2_version": "0", "write_xing": "0"}


def _id3(path: Path, text: list[str], version: int, sep: str | None = "/", encoding: int = 3) -> None:
    tags = ID3()
    tags.add(TIT2(encoding=3, text=["Fixture ✓"]))
    tags.add(TCON(encoding=encoding, text=text))
    tags.save(path, v2_version=version, v23_sep=sep)


def _v22(path: Path, text: bytes) -> None:
    path.write_bytes(id3_tag([("TT2", b"\x00Title"), ("TCO", b"\x00" + text)], 2) + path.read_bytes())


def _in_chunk(path: Path, text: list[str], version: int) -> None:
    f = mutagen.File(path)
    f.add_tags()
    f.tags.add(TIT2(encoding=3, text=["Fixture ✓"]))
    f.tags.add(TCON(encoding=3, text=text))
    f.save(v2_version=version)


def _vorbis(path: Path, fields: list[tuple[str, str]]) -> None:
    f = mutagen.File(path)
    f.tags.clear()
    f.tags.extend(fields)
    f.save()


def _mp4(path: Path, values: list[str]) -> None:
    f = MP4(path)
    f["©nam"] = ["Fixture ✓"]
    f["©gen"] = values
    f.save()


# name -> (how it is tagged, its genre values after `write-tags --append` (top genre Hip-Hop))
CASES = {
    "v24.mp3": (lambda p: _id3(p, ["Rock", "", "Música"], 4, encoding=1),
                ["Rock", "", "Música", "Hip-Hop"]),
    "slash23.mp3": (lambda p: _id3(p, ["Rock/Pop"], 3, encoding=0), ["Rock/Pop/Hip-Hop"]),
    "null23.mp3": (lambda p: _id3(p, ["Rock", "Pop"], 3, sep=None), ["Rock", "Pop", "Hip-Hop"]),
    "case23.mp3": (lambda p: _id3(p, ["Rock/hip-hop"], 3), ["Rock/hip-hop"]),
    "number.mp3": (lambda p: _id3(p, ["(7)"], 4), ["(7)"]),          # ID3v1's 7 is Hip-Hop
    "v22.mp3": (lambda p: _v22(p, b"(17)Rock"), ["(17)Rock/Hip-Hop"]),
    "v1only.mp3": (None, ["Rock", "Hip-Hop"]),                          # what a reader saw stays
    "bare.mp3": (lambda p: None, ["Hip-Hop"]),
    "v24.wav": (lambda p: _in_chunk(p, ["Jazz ", "Ελληνικά"], 4),
                ["Jazz ", "Ελληνικά", "Hip-Hop"]),
    "v23.aiff": (lambda p: _in_chunk(p, ["Rock"], 3), ["Rock/Hip-Hop"]),
    "odd.flac": (lambda p: _vorbis(p, [("TITLE", "x"), ("genre", "Rock"), ("genre", ""),
                                       ("ARTIST", "y"), ("GENRE", "Électro")]),
                 ["Rock", "", "Électro", "Hip-Hop"]),
    "case.ogg": (lambda p: _vorbis(p, [("GENRE", " HIP-HOP "), ("GENRE", "Jazz")]),
                 [" HIP-HOP ", "Jazz"]),
    "odd.opus": (lambda p: _vorbis(p, [("GENRE", "Ambient"), ("GENRE", "Música")]),
                 ["Ambient", "Música", "Hip-Hop"]),
    "odd.m4a": (lambda p: _mp4(p, ["Rock", "", "Ελληνικά"]),
                ["Rock", "", "Ελληνικά", "Hip-Hop"]),
    "plain.m4a": (lambda p: None, ["Hip-Hop"]),
}
UNCHANGED = [name for name, (_, after) in CASES.items() if "Hip-Hop" not in "/".join(after)]


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("odd-genres")
    made = {}
    for name, (tag, _) in CASES.items():
        mp3 = name.endswith(".mp3")
        path = synth.encode(folder / name, _audio(0.5), 22050, options=BARE if mp3 else None)
        if tag is None:                                     # ID3v1 only
            tags = ID3()
            tags.add(TCON(encoding=0, text=["Rock"]))
            tags.save(path, v1=2)
            mutagen.id3.delete(path, delete_v1=False, delete_v2=True)
        else:
            tag(path)
        made[name] = path
    return made


@pytest.fixture
def lib(odd, tmp_path) -> Path:
    folder = tmp_path / "Music"
    folder.mkdir()
    for name, path in odd.items():
        shutil.copyfile(path, folder / name)
    return folder


@pytest.fixture
def db(lib, tmp_path) -> Path:
    path = tmp_path / "index.db"
    index_as_scanned(path, sorted(lib.iterdir()))
    return path


def values(path: Path) -> list[str]:
    """The genre field's values as they are in the file: raw ID3 text (ID3v2 only, numbers
    and '/' as stored), every GENRE= field, every ©gen value."""
    f = mutagen.File(path)
    if path.suffix in (".mp3", ".wav", ".aiff"):
        if path.suffix == ".mp3":
            if path.read_bytes()[:3] != b"ID3":
                return []
            f = mutagen.mp3.MP3(path, translate=False, load_v1=False)
        frames = f.tags.getall("TCON") + f.tags.getall("TCO") if f.tags else []
        return [t for frame in frames for t in frame.text]
    if isinstance(f, MP4):
        return list(f.tags.get("©gen", []))
    return [v for k, v in f.tags if k.upper() == "GENRE"]


def tcon_bytes(path: Path) -> list:
    """An mp3's TCON frames, raw: id, flags and payload bytes (encoding and separators)."""
    data = path.read_bytes()
    return [fr for fr in raw_frames(data)[1] if fr[0] in (b"TCON", b"TCO")] if data[:3] == b"ID3" else []


def set_values(path: Path, new: list[str]) -> None:
    """A hand edit in another program: the genre field set to `new`, saved in the file's
    own conventions (ID3v2.3 joined by '/' if it was, else null-separated)."""
    f = mutagen.File(path)
    if isinstance(f.tags, ID3):
        version = f.tags.version[1]
        sep = "/" if version == 3 and len(values(path)) == 1 else None
        f.tags.setall("TCON", [TCON(encoding=3, text=new)])
        f.save(v2_version=version, v23_sep=sep)
    elif isinstance(f, MP4):
        f["©gen"] = new
        f.save()
    else:
        f["GENRE"] = new
        f.save()


def _reindex(db: Path, lib: Path, probs: dict) -> None:
    index_as_scanned(db, sorted(lib.iterdir()), probs)


@pytest.mark.parametrize("name", list(CASES))
def test_append_keeps_every_value_and_restore_gives_them_back_byte_for_byte(lib, odd, db, name):
    path = lib / name
    result = run("write-tags", "--db", db, "--append", path)
    assert values(path) == CASES[name][1]
    assert ("1 unchanged" if name in UNCHANGED else "Wrote genres to 1 files") in result.stdout
    assert snapshot(path, managed=False) == snapshot(odd[name], managed=False)
    if tcon_bytes(odd[name]):                   # the frame keeps its text encoding
        assert tcon_bytes(path)[0][2][0] == tcon_bytes(odd[name])[0][2][0]

    result = run("restore-tags", "--db", db, path)
    assert values(path) == values(odd[name])
    assert tcon_bytes(path) == tcon_bytes(odd[name])           # the very bytes: encoding, separators
    assert snapshot(path) == snapshot(odd[name])
    if name.endswith(".mp3"):
        assert path.read_bytes() == odd[name].read_bytes()


def test_a_second_append_adds_nothing_and_reports_unchanged(lib, db):
    run("write-tags", "--db", db, "--append")
    once = {p.name: p.read_bytes() for p in lib.iterdir()}
    result = run("write-tags", "--db", db, "--append")
    assert f"Wrote genres to 0 files: {len(CASES)} unchanged" in result.stdout
    assert {p.name: p.read_bytes() for p in lib.iterdir()} == once
    for name, (_, after) in CASES.items():
        assert values(lib / name) == after, name


def test_append_top_k_adds_each_missing_genre_once(lib, odd, db):
    run("write-tags", "--db", db, "--append", "--top-k", "2", "--min-confidence", "0.25")
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Hip-Hop", "Jazz"]
    assert values(lib / "slash23.mp3") == ["Rock/Pop/Hip-Hop/Jazz"]
    assert values(lib / "null23.mp3") == ["Rock", "Pop", "Hip-Hop", "Jazz"]
    assert values(lib / "case23.mp3") == ["Rock/hip-hop/Jazz"]
    assert values(lib / "v24.wav") == ["Jazz ", "Ελληνικά", "Hip-Hop"]      # "Jazz " is Jazz
    assert values(lib / "case.ogg") == [" HIP-HOP ", "Jazz"]
    assert values(lib / "odd.m4a") == ["Rock", "", "Ελληνικά", "Hip-Hop", "Jazz"]
    again = run("write-tags", "--db", db, "--append", "--top-k", "2", "--min-confidence", "0.25")
    assert f"0 files: {len(CASES)} unchanged" in again.stdout
    # top-1 now: tagger's Jazz goes, the file's own values stay
    run("write-tags", "--db", db, "--append")
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Hip-Hop"]
    assert values(lib / "case23.mp3") == ["Rock/hip-hop"]
    run("restore-tags", "--db", db)
    for name in CASES:
        assert snapshot(lib / name) == snapshot(odd[name]), name


EDITED = {      # name -> (the hand edit after --append, what restore-tags leaves)
    "v24.mp3": (["", "Música", "Hip-Hop", "Blues"], ["", "Música", "Blues"]),
    "slash23.mp3": (["Pop/Hip-Hop/Blues"], ["Pop/Blues"]),
    "null23.mp3": (["Pop", "Hip-Hop", "Blues"], ["Pop", "Blues"]),
    "v23.aiff": (["Hip-Hop/Rock/Blues"], ["Rock/Blues"]),
    "odd.flac": (["", "Électro", "Hip-Hop", "Blues"], ["", "Électro", "Blues"]),
    "odd.opus": (["Hip-Hop", "Música"], ["Música"]),
    "odd.m4a": (["Rock", "Hip-Hop", "Ελληνικά", "Blues"], ["Rock", "Ελληνικά", "Blues"]),
}


def test_restore_after_a_hand_edit_takes_out_only_taggers_values(lib, odd, db):
    run("write-tags", "--db", db, "--append")
    for name, (edit, _) in EDITED.items():
        set_values(lib / name, edit)
        assert values(lib / name) == edit, name
    dry = run("restore-tags", "--db", db, "--dry-run")
    assert f"{lib / 'v24.mp3'}: Música; Hip-Hop; Blues -> Música; Blues\n" in dry.stdout
    assert f"{lib / 'odd.opus'}: Hip-Hop; Música -> Música\n" in dry.stdout
    result = run("restore-tags", "--db", db)
    assert "0 skipped" in result.stdout
    for name, (_, left) in EDITED.items():
        assert values(lib / name) == left, name
        assert snapshot(lib / name, managed=False) == snapshot(odd[name], managed=False), name
    for name in set(CASES) - set(EDITED):
        assert snapshot(lib / name) == snapshot(odd[name]), name


def test_a_hand_edit_of_taggers_own_value_needs_force(lib, odd, db):
    run("write-tags", "--db", db, "--append", "--top-k", "2", "--min-confidence", "0.25")
    set_values(lib / "v24.mp3", ["Rock", "", "Música", "Hip-Hop", "Blues"])     # Jazz taken out
    set_values(lib / "odd.flac", ["Rock", "", "Électro", "Hip-Hop", "jazz"])    # Jazz recased
    result = run("restore-tags", "--db", db, "--dry-run")
    assert "2 skipped" in result.stdout
    assert f"{lib / 'v24.mp3'}: changed since tagger wrote it" in result.stderr
    result = run("restore-tags", "--db", db)
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Hip-Hop", "Blues"]
    run("restore-tags", "--db", db, "--force")
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Blues"]         # what is tagger's
    assert values(lib / "odd.flac") == ["Rock", "", "Électro", "jazz"]        # goes, no more


def test_a_new_prediction_after_a_hand_edit_replaces_only_taggers_value(lib, odd, db):
    run("write-tags", "--db", db, "--append")
    set_values(lib / "v24.mp3", ["Rock", "", "Música", "Hip-Hop", "Blues"])
    set_values(lib / "odd.flac", ["Blues", "Rock", "Hip-Hop"])
    jazz = {g: 0.1 / 8 for g in GENRES} | {"jazz": 0.6, "hiphop": 0.3}
    _reindex(db, lib, jazz)
    run("write-tags", "--db", db, "--append")
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Blues", "Jazz"]
    assert values(lib / "odd.flac") == ["Blues", "Rock", "Jazz"]
    assert values(lib / "slash23.mp3") == ["Rock/Pop/Jazz"]                      # not edited
    run("restore-tags", "--db", db)
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Blues"]
    assert values(lib / "odd.flac") == ["Blues", "Rock"]
    assert snapshot(lib / "slash23.mp3") == snapshot(odd["slash23.mp3"])


def test_append_after_a_replacing_write_brings_the_files_genre_back(lib, odd, db):
    run("write-tags", "--db", db, "--overwrite", lib / "v24.mp3", lib / "odd.m4a")
    assert values(lib / "v24.mp3") == ["Hip-Hop"]
    run("write-tags", "--db", db, "--append", lib / "v24.mp3", lib / "odd.m4a")
    assert values(lib / "v24.mp3") == ["Rock", "", "Música", "Hip-Hop"]
    assert values(lib / "odd.m4a") == ["Rock", "", "Ελληνικά", "Hip-Hop"]
    run("write-tags", "--db", db, "--overwrite", lib / "v24.mp3")             # and back again
    assert values(lib / "v24.mp3") == ["Hip-Hop"]
    run("restore-tags", "--db", db)
    for name in ("v24.mp3", "odd.m4a"):
        assert snapshot(lib / name) == snapshot(odd[name]), name


def test_append_with_probabilities_and_the_api(lib, odd, db):
    stats = write_tags([lib / "odd.opus", lib / "case.ogg"], db,
                       options=TagOptions(append=True, probabilities=True))
    assert stats.written == 2                   # case.ogg: its TAGGER_ fields only
    f = mutagen.File(lib / "odd.opus")
    assert f["GENRE"] == ["Ambient", "Música", "Hip-Hop"] and f["TAGGER_MODEL"]
    assert values(lib / "case.ogg") == [" HIP-HOP ", "Jazz"]
    stats = write_tags([lib / "odd.opus", lib / "case.ogg"], db,
                       options=TagOptions(append=True, probabilities=True))
    assert stats.unchanged == 2
    restore_tags([lib], db)
    for name in ("odd.opus", "case.ogg"):
        assert snapshot(lib / name) == snapshot(odd[name]), name


def test_append_dry_run_and_usage(lib, odd, db):
    result = run("write-tags", "--db", db, "--append", "--dry-run", lib / "v24.mp3")
    assert f"{lib / 'v24.mp3'}: Rock; Música -> Rock; Música; Hip-Hop" in result.stdout
    assert (lib / "v24.mp3").read_bytes() == odd["v24.mp3"].read_bytes()
    result = run("write-tags", "--db", db, "--append", "--overwrite", ok=2)
    assert "--append" in result.output and "--overwrite" in result.output
    assert "--append" in run("write-tags", "--help").stdout


def test_a_genre_a_reader_already_sees_in_id3v1_is_not_copied(lib, odd, db):
    rock = {g: 0.1 / 8 for g in GENRES} | {"rock": 0.6, "jazz": 0.3}
    _reindex(db, lib, rock)
    result = run("write-tags", "--db", db, "--append", lib / "v1only.mp3")
    assert "0 files: 1 unchanged" in result.stdout
    assert (lib / "v1only.mp3").read_bytes() == odd["v1only.mp3"].read_bytes()


def test_append_uses_the_users_words_and_never_adds_one_the_file_has(lib, db, tmp_path):
    """The config file's [genres] words are what --append adds; a word the file already has,
    in another case, is not added again; restore gives the file back."""
    import os
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "tagger" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[genres]\nhiphop = ["Hip Hop", "Rap"]\n')
    flac, opus = lib / "odd.flac", lib / "odd.opus"
    _vorbis(opus, [("GENRE", "rap"), ("GENRE", "Ambient")])
    index_as_scanned(db, [opus])                        # as scanned after that edit
    before = {p: snapshot(p) for p in (flac, opus)}
    run("write-tags", flac, opus, "--db", db, "--append")
    assert values(flac) == ["Rock", "", "Électro", "Hip Hop", "Rap"]
    assert values(opus) == ["rap", "Ambient", "Hip Hop"]
    run("restore-tags", flac, opus, "--db", db)
    assert {p: snapshot(p) for p in (flac, opus)} == before
