"""write-tags and restore-tags: per format, nothing but the genre (and TAGGER_ fields) changes,
a restore gives back exactly what mutagen read before, and no interruption leaves a damaged
file. Fixture files are made by tagger.synth and mutagen, and copied before every write."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mutagen
import pytest

from conftest import run, write_track
from tagfixtures import copied, genres_of, make_fixtures, payload, snapshot
from tagger import tags
from tagger.crawl import crawl
from tagger.genres import GENRES
from tagger.index import SCHEMA_VERSION, Index, TrackResult, _migrate_1

MODEL_ID = "0123456789ab"
# Hip-Hop first, Jazz second: top-k 2 at 0.25 writes both, the default 0.5 writes Hip-Hop
PROBS = {g: 0.1 / 8 for g in GENRES} | {"hiphop": 0.6, "jazz": 0.3}
GENRE_FIELDS = {".mp3": "TCON", ".wav": "TCON", ".aiff": "TCON", ".flac": "GENRE",
                ".ogg": "GENRE", ".opus": "GENRE", ".m4a": "©gen"}


@pytest.fixture(scope="session")
def originals(tmp_path_factory) -> dict[str, Path]:
    return make_fixtures(tmp_path_factory.mktemp("tag-fixtures"))


@pytest.fixture
def lib(originals, tmp_path) -> Path:
    """A fresh copy of every fixture."""
    return copied(originals, tmp_path / "Music")


def index_as_scanned(db: Path, files, probs=PROBS) -> None:
    """Index files as a scan would have, with known probabilities."""
    with Index(db) as index:
        index.store([TrackResult(str(p), p.stat().st_size, p.stat().st_mtime_ns, MODEL_ID, "ok",
                                 dict(probs)) for p in files])


@pytest.fixture
def db(lib, tmp_path) -> Path:
    path = tmp_path / "index.db"
    index_as_scanned(path, sorted(lib.iterdir()))
    return path


def tagger_fields(path: Path) -> dict[str, list[str]]:
    """TAGGER_ fields as a mutagen reader finds them, by bare name."""
    f = mutagen.File(path)
    out = {}
    for key, value in f.tags.items():
        name = key.split(":")[-1].upper()
        if name.startswith("TAGGER_"):
            values = value.text if hasattr(value, "text") else value
            out[name] = [bytes(v).decode() if isinstance(v, bytes) else str(v) for v in values]
    return out


# -- the tag layer, per format ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["plain.mp3", "bare.mp3", "v1only.mp3", "v23.mp3", "ape.mp3",
                                  "plain.flac", "picture.flac", "tagged.ogg", "plain.ogg",
                                  "tagged.opus", "cover.m4a", "alac.m4a", "plain.wav",
                                  "tagged.wav", "plain.aiff", "v23.aiff"])
def test_round_trip_changes_only_the_genre(lib, originals, name):
    path, original = lib / name, originals[name]
    before = snapshot(original)
    state = tags.read(str(path))
    custom = tags.custom_fields(state, PROBS, MODEL_ID)
    tags.write_fields(str(path), state.planned(["Hip-Hop", "Jazz"], custom), custom_too=True)

    after = snapshot(path)
    v23 = before.get("id3_version") == (2, 3, 0)
    assert genres_of(path) == (["Hip-Hop/Jazz"] if v23 else ["Hip-Hop", "Jazz"])
    assert snapshot(path, managed=False) == snapshot(original, managed=False)
    assert after["payload"] == before["payload"]
    if "id3_version" in before and before["tags"] and name != "v1only.mp3":
        assert after["id3_version"] == before["id3_version"]       # the version is kept
    fields = tagger_fields(path)
    assert fields["TAGGER_MODEL"] == [MODEL_ID]
    assert fields["TAGGER_PROB_HIPHOP"] == ["0.6000"] and len(fields) == 1 + len(GENRES)

    tags.restore_fields(str(path), state.backup())
    assert snapshot(path) == before


def test_several_genres_are_one_field_with_several_values(lib):
    for name in ("plain.mp3", "plain.flac", "cover.m4a"):
        state = tags.read(str(lib / name))
        tags.write_fields(str(lib / name), state.planned(["Rock", "Pop"]), custom_too=False)
    id3 = mutagen.File(lib / "plain.mp3").tags
    assert len(id3.getall("TCON")) == 1 and id3.getall("TCON")[0].text == ["Rock", "Pop"]
    assert mutagen.File(lib / "plain.flac").tags.get("GENRE") == ["Rock", "Pop"]
    assert mutagen.File(lib / "cover.m4a").tags["©gen"] == ["Rock", "Pop"]
    assert "gnre" not in mutagen.File(lib / "cover.m4a").tags


def test_existing_genres_are_not_split_on_slash(lib):
    assert tags.read(str(lib / "v23.mp3")).genres == ["AC/DC"]
    assert tags.read(str(lib / "picture.flac")).genres == ["AC/DC"]


def test_mp3_with_only_id3v1_keeps_it(lib, originals):
    path = lib / "v1only.mp3"
    state = tags.read(str(path))
    assert state.genres == ["Rock"] and not state.tagged      # what a reader sees, from v1
    tags.write_fields(str(path), state.planned(["Jazz"]), custom_too=False)
    assert genres_of(path) == ["Jazz"]                        # ID3v2 wins over v1
    assert snapshot(path)["id3v1"] == snapshot(originals["v1only.mp3"])["id3v1"] != b""
    tags.restore_fields(str(path), state.backup())
    assert path.read_bytes() == originals["v1only.mp3"].read_bytes()


@pytest.mark.parametrize("name,flag,version", [("v23.mp3", 4, (2, 4, 0)), ("plain.mp3", 3, (2, 3, 0)),
                                               ("v23.aiff", 4, (2, 4, 0))])
def test_id3_version_changes_only_when_asked(lib, originals, name, flag, version):
    path = lib / name
    state = tags.read(str(path))
    tags.write_fields(str(path), state.planned(["Blues", "Jazz"]), custom_too=False, id3_version=flag)
    assert snapshot(path)["id3_version"] == version
    assert genres_of(path) == (["Blues/Jazz"] if flag == 3 else ["Blues", "Jazz"])
    tags.restore_fields(str(path), state.backup())
    # back to its own version with the same text; a v2.3 round trip can leave UTF-8 text
    # frames as UTF-16, which v2.3 needs
    restored, original = snapshot(path), snapshot(originals[name])
    assert restored["id3_version"] == original["id3_version"]
    assert mutagen.File(path).tags.pprint() == mutagen.File(originals[name]).tags.pprint()
    assert restored["payload"] == original["payload"]


@pytest.mark.parametrize("version,flag", [(4, 3), (3, 4)])
def test_an_id3_version_change_loses_no_frame(lib, version, flag):
    """mutagen's conversion drops the frames the other version lacks (sort names, mood,
    ReplayGain in RVA2; TSIZ, TRDA) and rounds TDRC and TDOR; tagger keeps them all."""
    from mutagen.id3 import (ID3, RVA2, TDOR, TDRC, TDRL, TIME, TIT2, TMCL, TMOO, TORY, TRDA,
                             TSIZ, TSOA, TSOP, TDAT, TYER)
    path = lib / "bare.mp3"
    frames = ([TSOP(encoding=3, text=["Beatles, The"]), TSOA(encoding=3, text=["White"]),
               TMOO(encoding=3, text=["calm"]), TDRL(encoding=3, text=["2009-09-09"]),
               TDRC(encoding=3, text=["2001-05-03T12:34:56"]), TDOR(encoding=3, text=["1968-11-22"]),
               TMCL(encoding=3, people=[["guitar", "George"]]),
               RVA2(desc="track", channel=1, gain=-6.5, peak=0.9)]
              if version == 4 else
              [TYER(encoding=0, text=["2001"]), TDAT(encoding=0, text=["0305"]),
               TIME(encoding=0, text=["1234"]), TORY(encoding=0, text=["1968"]),
               TSIZ(encoding=0, text=["12345"]), TRDA(encoding=0, text=["May 3"])])
    tag = ID3()
    for frame in [TIT2(encoding=3, text=["t"])] + frames:
        tag.add(frame)
    tag.save(path, v2_version=version)

    def frames_of(translate=False):
        tag = ID3(path, translate=translate)
        return tag.version, {k: v._pprint() for k, v in tag.items() if k != "TCON"}

    before = frames_of()
    state = tags.read(str(path))
    tags.write_fields(str(path), state.planned(["Jazz"]), custom_too=False, id3_version=flag)
    version_now, written = frames_of()
    translated = {"TYER", "TDAT", "TIME", "TORY"}       # into TDRC and TDOR, exactly
    assert version_now == (2, flag, 0) and set(before[1]) - translated <= set(written)
    tags.restore_fields(str(path), state.backup())
    assert frames_of() == before


def test_a_restore_gives_id3_frames_back_their_text_encoding(lib, originals):
    from mutagen.id3 import ID3, TCON, TXXX
    path = lib / "bare.mp3"
    tag = ID3()
    tag.add(TCON(encoding=0, text=["Rock"]))
    tag.add(TXXX(encoding=1, desc="TAGGER_MODEL", text=["old"]))
    tag.save(path, v2_version=3)
    before = path.read_bytes()
    state = tags.read(str(path))
    tags.write_fields(str(path), state.planned(["Jazz"], [("TXXX:TAGGER_MODEL", "new")]),
                      custom_too=True)
    tags.restore_fields(str(path), state.backup())
    assert path.read_bytes() == before


def test_a_restore_puts_vorbis_fields_back_in_their_places(lib):
    path = lib / "plain.flac"
    f = mutagen.File(path)
    f.tags[:] = [("TITLE", "t"), ("GENRE", "Rock"), ("ARTIST", "a"), ("genre", "Pop"),
                 ("ALBUM", "b"), ("TAGGER_MODEL", "old")]
    f.save()
    before = snapshot(path)
    state = tags.read(str(path))
    tags.write_fields(str(path), state.planned(["Jazz"], [("TAGGER_MODEL", "new")]),
                      custom_too=True)
    tags.restore_fields(str(path), state.backup())
    assert snapshot(path) == before
    old_record = {k: v for k, v in state.backup().items() if k != "positions"}
    tags.write_fields(str(path), state.planned(["Jazz"]), custom_too=True)
    tags.restore_fields(str(path), old_record)              # a record saved before positions were kept
    assert sorted(mutagen.File(path).tags) == sorted(before["tags"])


def test_a_restore_gives_mp4_freeform_fields_back_their_data_type(lib):
    from mutagen.mp4 import AtomDataType, MP4FreeForm
    path = lib / "cover.m4a"
    f = mutagen.File(path)
    f["----:com.apple.iTunes:TAGGER_MODEL"] = [MP4FreeForm(b"old", AtomDataType.IMPLICIT)]
    f.save()
    before = snapshot(path)
    state = tags.read(str(path))
    custom = [("----:com.apple.iTunes:TAGGER_MODEL", "new")]
    tags.write_fields(str(path), state.planned(["Jazz"], custom), custom_too=True)
    written = mutagen.File(path).tags["----:com.apple.iTunes:TAGGER_MODEL"]
    assert written[0].dataformat == AtomDataType.UTF8
    tags.restore_fields(str(path), state.backup())
    assert snapshot(path) == before


def test_unsupported_and_corrupt_files_raise_tag_error(tmp_path):
    au = write_track(tmp_path / "x.au", seconds=0.5)
    with pytest.raises(tags.TagError, match="not a file format tagger can tag"):
        tags.read(str(au))
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"fLaC" + os.urandom(300))
    with pytest.raises(tags.TagError) as info:
        tags.read(str(junk))
    assert info.value.path == str(junk)


def test_a_failed_edit_leaves_the_original_and_no_temp_file(lib, originals):
    path = lib / "picture.flac"

    def edit(temp: str) -> None:
        Path(temp).write_bytes(b"half")
        raise tags.TagError("boom")

    with pytest.raises(tags.TagError, match="boom"):
        tags.replace_safely(str(path), edit)
    assert path.read_bytes() == originals["picture.flac"].read_bytes()
    assert sorted(p.name for p in lib.iterdir()) == sorted(originals)


def test_write_through_a_symlink_keeps_the_link(lib, tmp_path):
    link = tmp_path / "link.flac"
    link.symlink_to(lib / "plain.flac")
    mode = 0o640
    os.chmod(lib / "plain.flac", mode)
    tags.write_fields(str(link), [("GENRE", "Jazz")], custom_too=False)
    assert link.is_symlink() and genres_of(lib / "plain.flac") == ["Jazz"]
    assert (lib / "plain.flac").stat().st_mode & 0o777 == mode


def test_a_failed_save_is_a_tag_error_with_the_reason(lib, originals, monkeypatch):
    """mutagen reports a failed save (a full disk) as its own error, not an OSError."""
    import errno
    from mutagen.flac import FLAC, error as FLACError

    def full_disk(self, *args, **kwargs):
        raise FLACError(OSError(errno.ENOSPC, "No space left on device")) \
            from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FLAC, "save", full_disk)
    path = lib / "picture.flac"
    with pytest.raises(tags.TagError) as info:
        tags.write_fields(str(path), [("GENRE", "Jazz")], custom_too=False)
    assert (info.value.path, info.value.reason) == (str(path), "No space left on device")
    assert path.read_bytes() == originals["picture.flac"].read_bytes()
    assert sorted(p.name for p in lib.iterdir()) == sorted(originals)



def cut_at_the_framing_byte(path: Path) -> Path:
    """Cut an Ogg Vorbis comment header at its framing byte, in place: mutagen
    then fails with IndexError, not one of its own errors."""
    from mutagen.ogg import OggPage
    with open(path, "rb+") as fh:
        OggPage(fh)                                    # the identification header
        old = [OggPage(fh)]
        while not old[-1].complete:
            old.append(OggPage(fh))
        packets = OggPage.to_packets(old)
        comments = packets[0]
        assert comments.startswith(b"\x03vorbis")
        at = 7 + 4 + int.from_bytes(comments[7:11], "little")      # past the vendor string
        count, at = int.from_bytes(comments[at:at + 4], "little"), at + 4
        for _ in range(count):
            at += 4 + int.from_bytes(comments[at:at + 4], "little")
        assert comments[at] == 1                        # the framing byte (padding may follow)
        new = OggPage.from_packets([comments[:at], *packets[1:]], old[0].sequence)
        for page in new:
            page.serial = old[0].serial
        OggPage.replace(fh, old, new)
    return path


def test_any_exception_mutagen_raises_is_a_tag_error(lib):
    path = cut_at_the_framing_byte(lib / "tagged.ogg")
    with pytest.raises(IndexError):
        mutagen.File(path)
    with pytest.raises(tags.TagError) as info:
        tags.read(str(path))
    assert (info.value.path, info.value.reason) == (
        str(path), "mutagen cannot read its tags (IndexError: bytearray index out of range)")


def test_an_exception_from_a_mutagen_save_is_a_tag_error(lib, originals, monkeypatch):
    """Whatever mutagen raises while saving is the file's skip reason."""
    import struct
    from mutagen.oggvorbis import OggVorbis

    def damaged(self, *args, **kwargs):
        raise struct.error("unpack requires a buffer of 27 bytes")

    monkeypatch.setattr(OggVorbis, "save", damaged)
    path = lib / "tagged.ogg"
    with pytest.raises(tags.TagError) as info:
        tags.write_fields(str(path), [("GENRE", "Jazz")], custom_too=False)
    assert info.value.reason == ("mutagen cannot write its tags "
                                 "(error: unpack requires a buffer of 27 bytes)")
    assert path.read_bytes() == originals["tagged.ogg"].read_bytes()
    assert sorted(p.name for p in lib.iterdir()) == sorted(originals)


def test_a_bug_in_tagger_or_a_memory_error_is_not_a_skip_reason(lib, monkeypatch):
    """Only what mutagen raises becomes a skip reason: tagger's own errors, and a
    MemoryError from anywhere, still stop the command."""
    from mutagen.oggvorbis import OggVorbis

    def bug(self, *args, **kwargs):
        raise ZeroDivisionError("tagger's own bug")

    monkeypatch.setattr(tags._VorbisFields, "put", bug)
    with pytest.raises(ZeroDivisionError):
        tags.write_fields(str(lib / "tagged.ogg"), [("GENRE", "Jazz")], custom_too=False)
    monkeypatch.undo()

    def out_of_memory(self, *args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(OggVorbis, "load", out_of_memory)
    with pytest.raises(MemoryError):
        tags.read(str(lib / "tagged.ogg"))

# -- the commands -------------------------------------------------------------------------------

def test_dry_run_prints_old_and_new_and_touches_nothing(lib, originals, db):
    result = run("write-tags", "--db", db, "--dry-run", "--overwrite")
    assert f"{lib / 'picture.flac'}: AC/DC -> Hip-Hop\n" in result.stdout
    assert f"{lib / 'plain.wav'}: (none) -> Hip-Hop\n" in result.stdout
    assert "Would write genres to 16 files: 0 unchanged, 0 below 50% confidence, 0 skipped." in result.stdout
    for name, original in originals.items():
        assert (lib / name).read_bytes() == original.read_bytes(), name
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM tag_backups").fetchone()[0] == 0


def test_write_only_missing_then_overwrite_then_restore(lib, originals, db):
    result = run("write-tags", "--db", db)
    # six fixtures already have a genre (v1only.mp3 in its ID3v1 tag)
    assert ("Wrote genres to 10 files: 0 unchanged, 6 kept (already had a genre), 0 below 50% "
            "confidence, 0 skipped.") in result.stdout
    assert genres_of(lib / "plain.wav") == ["Hip-Hop"] and genres_of(lib / "picture.flac") == ["AC/DC"]
    result = run("write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.25",
                 "--probabilities")
    assert "Wrote genres to 16 files: 0 unchanged" in result.stdout
    for name in originals:
        expect = ["Hip-Hop/Jazz"] if name.startswith("v23") else ["Hip-Hop", "Jazz"]
        assert genres_of(lib / name) == expect, name
        assert tagger_fields(lib / name)["TAGGER_MODEL"] == [MODEL_ID]
    again = run("write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.25",
                "--probabilities")
    assert "Wrote genres to 0 files: 16 unchanged" in again.stdout

    result = run("restore-tags", "--db", db)
    assert "Restored 16 files: 0 unchanged, 0 skipped." in result.stdout
    for name, original in originals.items():       # the first write's backup, not the second's
        assert snapshot(lib / name) == snapshot(original), name
    assert "Restored 0 files" in run("restore-tags", "--db", db).stdout


def test_threshold_genre_and_path_filters(lib, db):
    result = run("write-tags", "--db", db, "--min-confidence", "0.7", "--overwrite")
    assert "Wrote genres to 0 files: 0 unchanged, 16 below 70% confidence" in result.stdout
    result = run("write-tags", "--db", db, "--genre", "jazz", "--overwrite")
    assert "Wrote genres to 0 files" in result.stdout          # jazz is never the top genre
    result = run("write-tags", lib / "plain.flac", lib / "cover.m4a", "--db", db, "--overwrite",
                 "--genre", "Hip-Hop")
    assert "Wrote genres to 2 files" in result.stdout
    assert genres_of(lib / "cover.m4a") == ["Hip-Hop"] and genres_of(lib / "tagged.ogg") == ["Jazz", "Blues"]
    result = run("write-tags", lib / "nowhere", "--db", db, ok=1)
    assert result.stderr == f"Error: {lib / 'nowhere'}: no indexed tracks there; run `tagger scan` on it first\n"


def test_stale_vanished_read_only_and_unsupported_files_are_skipped(lib, originals, db, tmp_path):
    au = write_track(lib / "sound.au", seconds=0.5)
    index_as_scanned(db, [au])
    os.utime(lib / "plain.flac", ns=(1, 1))                   # changed since the scan
    (lib / "plain.ogg").unlink()                               # vanished
    os.chmod(lib / "plain.wav", 0o444)                         # read-only
    result = run("write-tags", "--db", db, "--overwrite")
    assert f"{lib / 'plain.flac'}: changed since it was scanned" in result.stderr
    assert f"{lib / 'plain.ogg'}: no longer exists" in result.stderr
    assert f"{lib / 'plain.wav'}: read-only; left unchanged" in result.stderr
    assert f"{lib / 'sound.au'}: not a file format tagger can tag" in result.stderr
    assert "Wrote genres to 13 files: 0 unchanged, 0 below 50% confidence, 4 skipped." in result.stdout
    for reason in ("changed since the scan: 1", "vanished: 1", "read-only: 1",
                   "unreadable or unwritable: 1"):
        assert f"  {reason}\n" in result.stdout
    assert (lib / "plain.flac").read_bytes() == originals["plain.flac"].read_bytes()
    assert (lib / "plain.wav").read_bytes() == originals["plain.wav"].read_bytes()
    assert genres_of(lib / "plain.mp3") == ["Hip-Hop"]


def test_a_failed_save_skips_the_file_and_goes_on(lib, originals, db, monkeypatch):
    import errno
    from mutagen.flac import FLAC, error as FLACError

    def full_disk(self, *args, **kwargs):
        raise FLACError(OSError(errno.ENOSPC, "No space left on device")) \
            from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FLAC, "save", full_disk)
    result = run("write-tags", "--db", db, "--overwrite")
    assert f"{lib / 'plain.flac'}: No space left on device\n" in result.stderr
    assert "Wrote genres to 14 files: 0 unchanged, 0 below 50% confidence, 2 skipped." in result.stdout
    assert (lib / "picture.flac").read_bytes() == originals["picture.flac"].read_bytes()
    assert genres_of(lib / "plain.mp3") == ["Hip-Hop"]



def test_a_file_that_makes_mutagen_fail_any_way_is_skipped_and_the_run_goes_on(lib, originals, db):
    damaged = cut_at_the_framing_byte(lib / "tagged.ogg")
    index_as_scanned(db, [damaged])
    result = run("write-tags", "--db", db, "--overwrite")
    reason = "mutagen cannot read its tags (IndexError: bytearray index out of range)"
    assert result.stderr == f"{damaged}: {reason}\n"
    assert "Wrote genres to 15 files: 0 unchanged, 0 below 50% confidence, 1 skipped." in result.stdout
    assert "  unreadable or unwritable: 1\n" in result.stdout
    assert genres_of(lib / "tagged.opus") == genres_of(lib / "v23.mp3") == ["Hip-Hop"]

    written = cut_at_the_framing_byte(lib / "plain.ogg")     # damaged after write-tags
    result = run("restore-tags", "--db", db)
    assert result.stderr == f"{written}: {reason}\n"
    assert "Restored 14 files: 0 unchanged, 1 skipped." in result.stdout
    for name in set(originals) - {"plain.ogg", "tagged.ogg"}:
        assert snapshot(lib / name) == snapshot(originals[name]), name

def test_scan_after_write_tags_classifies_nothing_again(lib, originals, model_path, tmp_path):
    db = tmp_path / "scanned.db"
    run("scan", lib, "--db", db, "--model", model_path, "--workers", "0")
    run("write-tags", "--db", db, "--min-confidence", "0", "--overwrite", "--probabilities")
    assert "Nothing to do: 16 unchanged." in run("scan", lib, "--db", db, "--model", model_path,
                                                "--workers", "0").stdout
    run("restore-tags", "--db", db)
    assert "Nothing to do: 16 unchanged." in run("scan", lib, "--db", db, "--model", model_path,
                                                "--workers", "0").stdout
    for name, original in originals.items():
        assert snapshot(lib / name) == snapshot(original), name


def test_a_write_killed_before_the_index_heard_of_it_is_not_stale(lib, db):
    """The window between the rename and the index update: the file is tagger's own."""
    path = str(lib / "plain.flac")
    state = tags.read(path)
    with Index(db) as index:
        index.save_backup(path, state.backup())
        tags.write_fields(path, state.planned(["Hip-Hop"]), custom_too=False,
                          before_replace=lambda s: index.note_written(path, (s.st_size, s.st_mtime_ns)))
    result = run("write-tags", lib / "plain.flac", "--db", db)
    assert "Wrote genres to 0 files: 1 unchanged, 0 below 50% confidence, 0 skipped." in result.stdout
    run("restore-tags", "--db", db)
    assert genres_of(lib / "plain.flac") == []


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


def _killed(*args):
    raise Killed


@pytest.mark.parametrize("killed,after", [("restore-tags", []), ("restore-tags", ["restore-tags"]),
                                          ("write-tags", ["restore-tags"])])
def test_a_command_killed_before_the_index_heard_of_it_leaves_nothing_stale(lib, db, monkeypatch,
                                                                           killed, after):
    """The same window in restore-tags, or in write-tags followed by restore-tags: the index
    catches up with the file tagger wrote, and a later write-tags does not call it changed."""
    path = lib / "plain.flac"
    if killed == "restore-tags":
        run("write-tags", path, "--db", db)
    with monkeypatch.context() as patch:
        patch.setattr(Index, "moved_on", _killed)        # the first thing after the rename
        with pytest.raises(Killed):
            run(killed, path, "--db", db)
    for command in after:
        run(command, "--db", db)
    assert genres_of(path) == []
    result = run("write-tags", path, "--db", db)
    assert "Wrote genres to 1 files: 0 unchanged, 0 below 50% confidence, 0 skipped." in result.stdout
    run("restore-tags", "--db", db)
    assert genres_of(path) == []
    with Index(db) as index:
        assert index.file_version(str(path)) == (path.stat().st_size, path.stat().st_mtime_ns)


def test_leftover_temp_files_are_hidden_ignored_and_cleaned(lib, db):
    leftover = lib / f"{tags.TEMP_PREFIX}abc123{tags.TEMP_SUFFIX}"
    shutil.copyfile(lib / "plain.mp3", leftover)
    assert leftover.name.startswith(".")
    assert str(leftover) not in {c.path for c in crawl([lib])}
    result = run("write-tags", "--db", db)
    assert "Removed 1 temporary file(s) left by an interrupted write." in result.stderr
    assert not leftover.exists()


def test_a_running_writer_locks_out_write_tags(db):
    with Index(db) as index, index.writer_lock():
        result = run("write-tags", "--db", db, ok=1)
    assert "another tagger command (scan, write-tags or restore-tags) is writing" in result.stderr


def test_user_errors(tmp_path, db):
    result = run("write-tags", "--db", tmp_path / "none.db", ok=1)
    assert result.stderr == f"Error: {tmp_path / 'none.db'}: no index there yet; run `tagger scan FOLDER` first\n"
    assert run("write-tags", "--db", db, "--genre", "polka", ok=1).stderr.startswith(
        "Error: unknown genre 'polka'")
    run("write-tags", "--db", db, "--top-k", "0", ok=2)


def test_help_has_examples():
    for command in ("write-tags", "restore-tags"):
        assert "Example:" in run(command, "--help").stdout


def test_a_version_1_index_migrates(tmp_path, lib):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    import sqlite_utils
    _migrate_1(sqlite_utils.Database(conn))
    conn.execute("INSERT INTO tracks (path, size, mtime_ns, model_id, status) VALUES ('/a', 1, 2, 'm', 'ok')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Index(path) as index:
        assert index.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "tag_backups" in index.db.table_names()
        assert index.file_version("/a") == (1, 2)


# -- interruptions against a real process ---------------------------------------------------------

N_BIG = 24


@pytest.fixture(scope="module")
def big_originals(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Files big enough (about 4 MB) that a kill lands in the middle of writes."""
    folder = tmp_path_factory.mktemp("big-originals")
    wav = write_track(folder / "base.wav", seconds=45.0, channels=2, sample_rate=22050)
    flac = write_track(folder / "base.flac", seconds=20.0, channels=2, kind="noise")
    return folder, {"wav": payload(wav), "flac": payload(flac)}


def big_library(big_originals, root: Path) -> tuple[list[Path], Path]:
    folder, _ = big_originals
    files = []
    for i in range(N_BIG):
        ext = ("wav", "flac")[i % 2]
        files.append(root / f"{i:02d}.{ext}")
        shutil.copyfile(folder / f"base.{ext}", files[-1])
    db = root / "index.db"
    index_as_scanned(db, files)
    return files, db


def start_write(db: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-m", "tagger", "write-tags", "--db", str(db),
                             "--probabilities"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_a_write(folder: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not any(n.startswith(tags.TEMP_PREFIX) for n in os.listdir(folder)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.001)      # each of the 24 writes copies a 4 MB file: one of them shows


def check_every_file(files, big_originals) -> int:
    """Each file is its original bytes or a complete tagged file with the same audio."""
    folder, payloads = big_originals
    written = 0
    for path in files:
        original = folder / f"base{path.suffix}"
        if path.stat().st_size == original.stat().st_size and path.read_bytes() == original.read_bytes():
            continue
        assert genres_of(path) == ["Hip-Hop"], path
        assert tagger_fields(path)["TAGGER_MODEL"] == [MODEL_ID]
        assert payload(path) == payloads[path.suffix[1:]], path
        written += 1
    return written


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.05])
def test_sigkill_mid_write_never_damages_a_file(big_originals, tmp_path, delay):
    files, db = big_library(big_originals, tmp_path)
    proc = start_write(db)
    wait_for_a_write(tmp_path, proc)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    written = check_every_file(files, big_originals)
    assert written < N_BIG
    for name in os.listdir(tmp_path):            # what a kill leaves is hidden, and not audio
        if name.startswith(tags.TEMP_PREFIX):
            assert not any(c.path.endswith(name) for c in crawl([tmp_path]))
    result = run("write-tags", "--db", db, "--probabilities")
    assert f"Wrote genres to {N_BIG - written} files: {written} unchanged" in result.stdout
    assert check_every_file(files, big_originals) == N_BIG
    assert not [n for n in os.listdir(tmp_path) if n.startswith(tags.TEMP_PREFIX)]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_after_the_current_file(big_originals, tmp_path, signum):
    files, db = big_library(big_originals, tmp_path)
    proc = start_write(db)
    wait_for_a_write(tmp_path, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted: run the same command again to finish" in err
    written = check_every_file(files, big_originals)
    assert 0 < written < N_BIG
    assert not [n for n in os.listdir(tmp_path) if n.startswith(tags.TEMP_PREFIX)]
