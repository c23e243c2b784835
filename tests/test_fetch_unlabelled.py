"""scripts/fetch_unlabelled.py, offline: tiny .deb packages built here with dpkg-deb from
audio that tagger.synth makes, never a download."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tagger import synth

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("fetch_unlabelled", ROOT / "scripts" / "fetch_unlabelled.py")
fu = sys.modules["fetch_unlabelled"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fu)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian, Ubuntu)")

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test music

Files: *
Copyright: 2026 tagger's tests
License: GPL-2+

Files: ./data/music/*
Copyright: 2026 tagger's tests
License: CC0-1.0
"""


def build_deb(folder: Path, name: str = "tagger-test-music", version: str = "1.0-1") -> Path:
    """A package holding a song, a sound effect, a song inside a .pk3, and what is not audio:
    a text file and a file named .ogg that FFmpeg cannot open."""
    root = folder / f"{name}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: tests <tests@example.org>\nDescription: test music\n")
    game = root / "usr/share/games/x"
    for sub in ("music", "sounds", "data"):
        (game / sub).mkdir(parents=True)
    synth.encode(game / "music/song.ogg", synth.tone(440, 2.0, channels=2), 22050)
    synth.encode(game / "sounds/bang.wav", synth.noise(0.5), 22050)
    (game / "music/notes.txt").write_text("not audio")
    (game / "music/fake.ogg").write_bytes(b"not an ogg file\n" * 20)
    theme = synth.encode(folder / "theme.ogg", synth.tone(220, 1.0, channels=2), 22050)
    with zipfile.ZipFile(game / "data/tracks.pk3", "w") as z:
        z.write(theme, "sound/cdtracks/theme.ogg")
        z.writestr("scripts/readme.txt", "not audio")
    doc = root / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    deb = folder / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def kept(dest: Path, name: str = "tagger-test-music") -> list[str]:
    return sorted(p.relative_to(dest / name).as_posix() for p in (dest / name).rglob("*") if p.is_file())


def run_main(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = fu.main(list(args))
    return rc, out.getvalue()


def test_a_wesnoth_package_is_refused_even_when_asked_for_by_name(tmp_path):
    dest = tmp_path / "unlabelled"
    rc, out = run_main("wesnoth-1.16-music", "Wesnoth-Music", "--dest", str(dest))
    assert rc == 1
    assert out.splitlines()[:2] == [
        "Error: wesnoth-1.16-music: refused: Wesnoth's music is kept out of training on purpose",
        "Error: Wesnoth-Music: refused: Wesnoth's music is kept out of training on purpose"]
    assert not dest.exists()


def test_the_package_list_parses_and_names_no_wesnoth_package():
    packages = fu.read_list()
    assert len(packages) >= 10 and not any(fu.refused(p.name) for p in packages)
    assert fu.Package("hedgewars-data", "*/Music/*") in packages
    assert fu.Package("nexuiz-music") in packages            # keeps all its audio


@needs_dpkg
def test_a_deb_leaves_only_the_audio_tagger_decodes_with_its_copyright(tmp_path):
    dest = tmp_path / "unlabelled"
    name, fresh = fu.add_deb(build_deb(tmp_path), dest)
    assert (name, fresh) == ("tagger-test-music", True)
    assert kept(dest) == ["copyright",
                          "usr/share/games/x/data/tracks.pk3/sound/cdtracks/theme.ogg",
                          "usr/share/games/x/music/song.ogg",
                          "usr/share/games/x/sounds/bang.wav"]
    assert (dest / name / "copyright").read_text() == COPYRIGHT
    entry = json.loads((dest / "manifest.json").read_text())["packages"][name]
    audio = [p for p in (dest / name).rglob("*") if p.is_file() and p.name != "copyright"]
    assert entry == {"version": "1.0-1", "licence": "GPL-2+, CC0-1.0", "files": 3, "keep": "*",
                     "seconds": pytest.approx(3.5, abs=0.1), "undecodable": 1,
                     "bytes": sum(p.stat().st_size for p in audio)}
    assert [p.name for p in dest.iterdir()] != [] and not list(dest.glob(".*"))   # no temporary left


@needs_dpkg
def test_a_keep_pattern_leaves_a_games_sound_effects_out(tmp_path):
    dest = tmp_path / "unlabelled"
    fu.add_deb(build_deb(tmp_path), dest, keep="*/music/*")
    assert kept(dest) == ["copyright", "usr/share/games/x/music/song.ogg"]
    entry = fu.load_manifest(dest)["packages"]["tagger-test-music"]
    assert (entry["files"], entry["licence"], entry["keep"]) == (1, "CC0-1.0", "*/music/*")


@needs_dpkg
def test_a_package_already_there_at_its_version_is_skipped_and_a_new_one_replaces_it(tmp_path):
    dest = tmp_path / "unlabelled"
    deb = build_deb(tmp_path / "v1")
    fu.add_deb(deb, dest)
    song = dest / "tagger-test-music/usr/share/games/x/music/song.ogg"
    before = song.stat().st_mtime_ns, (dest / "manifest.json").read_bytes()
    assert fu.add_deb(deb, dest) == ("tagger-test-music", False)
    assert (song.stat().st_mtime_ns, (dest / "manifest.json").read_bytes()) == before

    assert fu.add_deb(build_deb(tmp_path / "v2", version="1.1-1"), dest, keep="*/music/*")[1]
    assert kept(dest) == ["copyright", "usr/share/games/x/music/song.ogg"]
    assert fu.load_manifest(dest)["packages"]["tagger-test-music"]["version"] == "1.1-1"


@needs_dpkg
def test_one_bad_package_costs_one_line_and_the_rest_are_fetched(tmp_path):
    dest, good = tmp_path / "unlabelled", build_deb(tmp_path)
    (tmp_path / "broken.deb").write_bytes(b"!<arch>\nnot really\n")
    wesnoth = build_deb(tmp_path / "w", name="wesnoth-music").rename(tmp_path / "w" / "music.deb")
    rc, out = run_main(str(tmp_path / "broken.deb"), str(wesnoth), str(good), "--dest", str(dest))
    lines = out.splitlines()
    assert rc == 1 and len(lines) == 4
    assert lines[0].startswith(f"Error: {tmp_path / 'broken.deb'}: broken.deb is not a Debian package: ")
    assert lines[1] == f"Error: {wesnoth}: refused: Wesnoth's music is kept out of training on purpose"
    assert lines[2].startswith("tagger-test-music fetched 1.0-1: 3 files, 0.1 min, ")
    assert lines[3].startswith(f"1 packages in {dest}: 3 files, ")
    assert list(fu.load_manifest(dest)["packages"]) == ["tagger-test-music"]
    rc, out = run_main(str(good), "--dest", str(dest))
    assert rc == 0 and out.startswith("tagger-test-music already fetched 1.0-1: ")


def test_licences_from_a_free_form_copyright_file():
    gpl = ("This program is free software; you can redistribute it and/or modify it under the terms "
           "of the GNU General Public License as published by the Free Software Foundation; either "
           "version 2 of the License, or (at your option) any later version.")
    assert fu.licence(gpl, ["a.ogg"]) == "GPL-2+"
    assert fu.licence(gpl.split(", or")[0] + ".", ["a.ogg"]) == "GPL-2"
    assert fu.licence("licenced under the Creative Commons Attribution ShareAlike licence 3.0",
                      ["a.ogg"]) == "CC-BY-SA-3.0"
    assert fu.licence("All rights reserved.", ["a.ogg"]) == "unknown (read the copyright file)"


def test_a_damaged_manifest_stops_with_one_line_and_the_fix(tmp_path):
    (tmp_path / "manifest.json").write_text('{"packages": {"asc-mu')
    with pytest.raises(SystemExit, match=r"^Error: .*manifest.json is damaged: delete it"):
        fu.main(["asc-music", "--dest", str(tmp_path)])
