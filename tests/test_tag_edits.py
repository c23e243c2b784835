"""write-tags and restore-tags beside other tools: restore-tags leaves a file whose genre or
TAGGER_ fields another program changed since tagger wrote them (unless --force); the summary
tells kept, unchanged and below-threshold files apart; --probabilities writes the TAGGER_
fields of tracks whose genre is kept or below the threshold. Fixtures: tests/tagfixtures.py."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import mutagen
import pytest
import sqlite_utils
from mutagen.id3 import TCON, TIT2
from mutagen.mp4 import MP4FreeForm

from conftest import run
from tagfixtures import genres_of, snapshot
from test_tags import MODEL_ID, db, index_as_scanned, lib, originals, tagger_fields  # noqa: F401
from tagger import tags
from tagger.index import SCHEMA_VERSION, Index, MIGRATIONS
from tagger.writetags import restore_tags

CHANGED = "changed since tagger wrote it"
EDITED = ("plain.mp3", "v23.aiff", "picture.flac", "tagged.ogg", "tagged.opus", "cover.m4a")


def set_field(path: Path, value: str, key: str = "genre") -> None:
    """What Picard, beets or a hand edit does: mutagen sets one field and saves the file."""
    f = mutagen.File(path)
    if hasattr(f.tags, "getall"):                          # ID3, saved at the tag's version
        version = f.tags.version[1]
        if key == "TAGGER_MODEL":
            f.tags["TXXX:TAGGER_MODEL"].text = [value]
        else:
            frame = TCON(encoding=3, text=[value]) if key == "genre" else TIT2(encoding=3, text=[value])
            f.tags.setall(frame.FrameID, [frame])
        f.save(v2_version=version)
        return
    mp4 = path.suffix == ".m4a"
    if key == "TAGGER_MODEL" and mp4:
        key, value = "----:com.apple.iTunes:TAGGER_MODEL", MP4FreeForm(value.encode())
    f[{"genre": "©gen" if mp4 else "GENRE"}.get(key, key)] = [value]
    f.save()


# -- item 4: restore-tags must not wipe later edits ----------------------------------------------

def test_restore_leaves_a_genre_another_program_set_unless_forced(lib, originals, db):
    run("write-tags", "--db", db, "--overwrite", "--probabilities")
    for name in EDITED:
        set_field(lib / name, "Rock")
    set_field(lib / "plain.flac", "Fixture 2", key="TITLE")        # another field: still tagger's
    edited = {name: snapshot(lib / name) for name in EDITED}

    dry = run("restore-tags", "--db", db, "--dry-run")
    for name in EDITED:
        assert f"{lib / name}: {CHANGED}" in dry.stderr, name
    assert f"Would restore 10 files: 0 unchanged, {len(EDITED)} skipped." in dry.stdout
    assert f"  {CHANGED}: {len(EDITED)}\n" in dry.stdout

    result = run("restore-tags", "--db", db)
    assert f"Restored 10 files: 0 unchanged, {len(EDITED)} skipped." in result.stdout
    for name in EDITED:
        assert snapshot(lib / name) == edited[name], name      # the edit is kept, untouched
        assert genres_of(lib / name) == ["Rock"]
    assert genres_of(lib / "plain.flac") == []
    for name in set(originals) - set(EDITED) - {"plain.flac"}:
        assert snapshot(lib / name) == snapshot(originals[name]), name

    result = run("restore-tags", "--db", db, "--force")
    assert f"Restored {len(EDITED)} files: 0 unchanged, 0 skipped." in result.stdout
    for name in EDITED:
        assert snapshot(lib / name) == snapshot(originals[name]), name


@pytest.mark.parametrize("name", ["plain.mp3", "picture.flac", "cover.m4a"])
def test_a_changed_tagger_field_is_a_later_edit_too(lib, db, name):
    run("write-tags", lib / name, "--db", db, "--overwrite", "--probabilities")
    set_field(lib / name, "someone else", key="TAGGER_MODEL")
    result = run("restore-tags", "--db", db)
    assert f"{lib / name}: {CHANGED}" in result.stderr
    assert tagger_fields(lib / name)["TAGGER_MODEL"] == ["someone else"]


def test_the_api_restores_a_changed_file_with_force(lib, originals, db):
    run("write-tags", lib / "picture.flac", "--db", db, "--overwrite")
    set_field(lib / "picture.flac", "Rock")
    outcomes = []
    stats = restore_tags(db=db, dry_run=True, on_outcome=outcomes.append)
    assert [(o.action, o.reason.startswith(CHANGED)) for o in outcomes] == [("skipped", True)]
    assert stats.skipped == {CHANGED: 1}
    stats = restore_tags(db=db, force=True)
    assert stats.written == 1
    assert snapshot(lib / "picture.flac") == snapshot(originals["picture.flac"])


def test_a_write_after_another_programs_edit_keeps_that_edit_for_restore(lib, db):
    """tagger wrote Hip-Hop; Picard set Rock; write-tags --overwrite writes Hip-Hop again:
    restore-tags gives back Picard's Rock, not the genre before tagger's first write."""
    path = lib / "picture.flac"
    run("write-tags", path, "--db", db, "--overwrite")
    set_field(path, "Rock")
    index_as_scanned(db, [path])                      # the scan that follows any change
    run("write-tags", path, "--db", db, "--overwrite", "--probabilities")
    assert genres_of(path) == ["Hip-Hop"]
    assert "Restored 1 files" in run("restore-tags", "--db", db).stdout
    assert genres_of(path) == ["Rock"] and "TAGGER_MODEL" not in tagger_fields(path)


def test_the_same_fields_in_another_form_are_still_what_tagger_wrote(lib, originals, db):
    """Two genres in one v2.4 frame that another program saved as v2.3 ("Hip-Hop/Jazz"), or
    Vorbis comments in another order with another case: still tagger's."""
    run("write-tags", "--db", db, "--overwrite", "--top-k", "2", "--min-confidence", "0.25",
        "--probabilities")
    f = mutagen.File(lib / "plain.mp3")
    f.tags.update_to_v23()
    f.save(v2_version=3)
    f = mutagen.File(lib / "plain.flac")
    f.tags[:] = [(k.lower(), v) for k, v in reversed(list(f.tags))]
    f.save()
    result = run("restore-tags", "--db", db)
    assert "Restored 16 files: 0 unchanged, 0 skipped." in result.stdout, result.stderr
    assert genres_of(lib / "plain.flac") == []


def version_4_record(db: Path, path: Path, written: bool) -> None:
    """The undo record an older tagger (index schema 4) kept: what the file held before it
    wrote, and the size and mtime of the file it wrote; not the fields it wrote."""
    state = tags.read(str(path))
    st_before = path.stat()
    new = tags.write_fields(str(path), state.planned(["Hip-Hop"]), custom_too=False)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO tag_backups (path, real_path, dev, ino, fields, saved_at, written_size,"
                 " written_mtime_ns) VALUES (?, ?, ?, ?, ?, 'x', ?, ?)",
                 [str(path), str(path), new.st_dev, new.st_ino, json.dumps(state.backup()),
                  new.st_size if written else None, new.st_mtime_ns if written else None])
    conn.execute("UPDATE tracks SET size = ?, mtime_ns = ? WHERE path = ? AND size = ?",
                 [new.st_size, new.st_mtime_ns, str(path), st_before.st_size])
    conn.commit()
    conn.close()


def test_an_older_record_restores_a_file_still_as_tagger_wrote_it_else_needs_force(lib, originals, db):
    for name in ("picture.flac", "cover.m4a"):
        version_4_record(db, lib / name, written=True)
    os.utime(lib / "cover.m4a", ns=(1, 1))        # its date changed: tagger cannot tell what
    result = run("restore-tags", "--db", db)
    assert f"{lib / 'cover.m4a'}: {CHANGED}, or may have" in result.stderr
    assert "--force" in result.stderr
    assert "Restored 1 files: 0 unchanged, 1 skipped." in result.stdout
    assert snapshot(lib / "picture.flac") == snapshot(originals["picture.flac"])
    assert genres_of(lib / "cover.m4a") == ["Hip-Hop"]
    assert "Restored 1 files" in run("restore-tags", "--db", db, "--force").stdout
    assert genres_of(lib / "cover.m4a") == ["Jazz"]


def test_a_version_4_index_migrates_and_a_recovery_keeps_what_tagger_wrote(lib, db, tmp_path):
    old = tmp_path / "v4.db"
    conn = sqlite3.connect(old)
    for migrate in MIGRATIONS[:4]:
        migrate(sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO tag_backups (path, real_path, fields, saved_at) VALUES ('/m/a', '/m/a',"
                 " '{}', 'x')")
    conn.commit()
    conn.close()
    with Index(old) as index:
        assert index.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert list(index.backups()) == [("/m/a", {})] and index.written_fields("/m/a") is None

    run("write-tags", lib / "picture.flac", "--db", db, "--overwrite")
    set_field(lib / "picture.flac", "Rock")
    new = tmp_path / "recovered.db"
    run("check", "--db", db, "--recover", new)
    assert f"{lib / 'picture.flac'}: {CHANGED}" in run("restore-tags", "--db", new).stderr


# -- item 11: the write-tags summary, --verbose, and --probabilities ----------------------------

KEPT = {"v1only.mp3": "Rock", "v23.mp3": "AC/DC", "picture.flac": "AC/DC", "tagged.ogg": "Jazz; Blues",
        "cover.m4a": "Jazz", "v23.aiff": "Rock"}


def test_the_summary_tells_kept_from_unchanged(lib, db):
    result = run("write-tags", "--db", db, "--dry-run", "--verbose")
    for name, genre in KEPT.items():
        assert f"{lib / name}: {genre} (kept: already has a genre)\n" in result.stdout, name
    assert ("Would write genres to 10 files: 0 unchanged, 6 kept (already had a genre), "
            "0 below 50% confidence, 0 skipped.") in result.stdout
    assert "(kept" not in run("write-tags", "--db", db, "--dry-run").stdout
    run("write-tags", "--db", db)
    result = run("write-tags", "--db", db, "--verbose")
    assert ("Wrote genres to 0 files: 10 unchanged, 6 kept (already had a genre), "
            "0 below 50% confidence, 0 skipped.") in result.stdout
    assert f"{lib / 'plain.wav'}: Hip-Hop (unchanged: already holds this)\n" in result.stdout
    result = run("write-tags", "--db", db, "--min-confidence", "0.7", "--verbose")
    assert "Wrote genres to 0 files: 0 unchanged, 16 below 70% confidence, 0 skipped." in result.stdout
    assert f"{lib / 'plain.wav'}: below 70% confidence\n" in result.stdout


def test_probabilities_are_written_where_the_genre_is_kept(lib, originals, db):
    result = run("write-tags", "--db", db, "--probabilities", "--verbose")
    assert f"{lib / 'cover.m4a'}: Jazz (kept: already has a genre; wrote the TAGGER_ fields)\n" \
        in result.stdout
    assert ("Wrote genres to 10 files: 0 unchanged, 6 kept (already had a genre), "
            "0 below 50% confidence, 0 skipped.") in result.stdout
    assert "Wrote only the TAGGER_ fields to 6 files (genre kept or below the threshold)." \
        in result.stdout
    for name in originals:
        assert tagger_fields(lib / name)["TAGGER_PROB_HIPHOP"] == ["0.6000"], name
        if name in KEPT:
            assert genres_of(lib / name) == genres_of(originals[name]), name
            assert snapshot(lib / name, managed=False) == snapshot(originals[name], managed=False)
    again = run("write-tags", "--db", db, "--probabilities")
    assert "Wrote genres to 0 files: 10 unchanged, 6 kept" in again.stdout
    assert "TAGGER_ fields" not in again.stdout
    assert "Restored 16 files: 0 unchanged, 0 skipped." in run("restore-tags", "--db", db).stdout
    for name in originals:
        assert snapshot(lib / name) == snapshot(originals[name]), name


def test_probabilities_are_written_below_the_threshold(lib, originals, db):
    result = run("write-tags", "--db", db, "--probabilities", "--min-confidence", "0.7",
                 "--overwrite", "--dry-run", "--verbose")
    assert f"{lib / 'plain.wav'}: below 70% confidence; would write the TAGGER_ fields\n" \
        in result.stdout
    assert "Would write only the TAGGER_ fields to 16 files" in result.stdout
    for name in originals:
        assert (lib / name).read_bytes() == originals[name].read_bytes(), name
    result = run("write-tags", "--db", db, "--probabilities", "--min-confidence", "0.7", "--overwrite")
    assert "Wrote genres to 0 files: 0 unchanged, 16 below 70% confidence, 0 skipped." in result.stdout
    for name in originals:
        assert tags.read(str(lib / name)).genres == tags.read(str(originals[name])).genres, name
        assert tagger_fields(lib / name)["TAGGER_MODEL"] == [MODEL_ID], name
    run("restore-tags", "--db", db)
    for name in originals:
        assert snapshot(lib / name) == snapshot(originals[name]), name


def test_a_new_genre_beside_kept_tagger_fields_reads_back(lib, db):
    """A FLAC with tagger's fields after its genre, then other genres without
    --probabilities: the TAGGER_ fields stay where they are, and the copy verifies."""
    path = lib / "plain.flac"
    run("write-tags", path, "--db", db, "--overwrite", "--probabilities", "--top-k", "2",
        "--min-confidence", "0.25")
    result = run("write-tags", path, "--db", db, "--overwrite")
    assert "Wrote genres to 1 files" in result.stdout, result.output
    assert genres_of(path) == ["Hip-Hop"] and tagger_fields(path)["TAGGER_MODEL"] == [MODEL_ID]


def test_a_dry_run_lists_a_file_that_would_get_only_the_tagger_fields(lib, originals, db):
    result = run("write-tags", "--db", db, "--probabilities", "--dry-run")
    assert f"{lib / 'cover.m4a'}: TAGGER_ fields only (genre kept: Jazz)\n" in result.stdout
    for name in originals:
        assert (lib / name).read_bytes() == originals[name].read_bytes(), name
