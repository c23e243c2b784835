"""Fetch unlabelled music from Debian packages into the cache, for training that learns from
a teacher (distillation): real music of many kinds that no genre label comes with.

Each package is downloaded by name with `apt-get download` into a temporary folder (no root
needed), unpacked with `dpkg-deb -x`, and only the audio files tagger decodes (and that a
package's keep pattern selects: a game's data package holds sound effects too) are kept,
those inside zip archives (.pk3, .zip) too, in <dest>/<package>/<path inside the package>,
with the package's copyright file beside them as <dest>/<package>/copyright.
<dest>/manifest.json records each package's version, licence, files, seconds and bytes; a
package already there at the same version (and keep pattern) is skipped.
Wesnoth's music is kept out of training on purpose: any package whose name holds "wesnoth"
is refused.

    python scripts/fetch_unlabelled.py                  # every package in unlabelled_packages.txt
    python scripts/fetch_unlabelled.py nexuiz-music asc-music --dest /data/unlabelled
    python scripts/fetch_unlabelled.py ./some-music_1.0_all.deb       # a package file as is

<dest> defaults to "unlabelled" beside the feature cache (~/.cache/tagger/unlabelled, or
$TAGGER_CACHE/../unlabelled). Never commit what it fetches.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tagger.atomic import atomic_file  # noqa: E402
from tagger.basics import AUDIO_EXTENSIONS  # noqa: E402
from tagger.decode import quiet_ffmpeg  # noqa: E402
from tagger.recipe import default_cache_dir  # noqa: E402

PACKAGE_LIST = Path(__file__).with_name("unlabelled_packages.txt")
MANIFEST = "manifest.json"
REFUSED = "wesnoth"
ARCHIVES = (".pk3", ".zip")    # games that keep their music in zip files (Quake's .pk3)


class FetchError(Exception):
    """One package could not be fetched; the message is one line, with the fix."""


@dataclass(frozen=True)
class Package:
    name: str
    keep: str = "*"     # glob over a file's path inside the package ("*/music/*")


def read_list(path: Path = PACKAGE_LIST) -> list[Package]:
    """`name [keep-glob]` per line; '#' starts a comment."""
    packages = []
    for line in Path(path).read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            packages.append(Package(*fields[:2]))
    return packages


def default_dest() -> Path:
    return default_cache_dir().parent / "unlabelled"


def refused(name: str) -> bool:
    return REFUSED in name.lower()


# --- the manifest --------------------------------------------------------------------------

def load_manifest(dest: Path) -> dict:
    try:
        return json.loads((dest / MANIFEST).read_text())
    except FileNotFoundError:
        return {"packages": {}}
    except ValueError:
        raise SystemExit(f"Error: {dest / MANIFEST} is damaged: delete it (and {dest}) and fetch again")


def save_manifest(dest: Path, manifest: dict) -> None:
    with atomic_file(dest / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


def have(manifest: dict, dest: Path, name: str, version: str, keep: str) -> bool:
    """Is `name` already in `dest` at `version`, kept with the same pattern?"""
    entry = manifest["packages"].get(name) or {}
    return (entry.get("version"), entry.get("keep")) == (version, keep) and (dest / name).is_dir()


# --- licences ------------------------------------------------------------------------------

_PHRASES = [   # for copyright files that are not machine-readable (DEP-5)
    (r"Permission is hereby granted, free of charge", "MIT"),
    (r"GNU General Public License[^.]{0,80}?version (\d)(?:[^.]{0,40}?any (later))?", "GPL-{}{}"),
    (r"\bGNU General Public License\b|\bGPL\b", "GPL"),
    (r"Attribution[-, ]+Share-? ?Alike(?: licen[cs]e)?[ ]+(\d\.\d)", "CC-BY-SA-{}"),
    (r"Attribution[-, ]+Share-? ?Alike", "CC-BY-SA"),
    (r"Creative Commons Attribution(?![-, ]+Share)[ ]+(\d\.\d)", "CC-BY-{}"),
    (r"Artistic License", "Artistic"),
    (r"\bISC licen[cs]e", "ISC"),
    (r"\bCC0\b", "CC0"),
    (r"public domain", "public-domain"),
]


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        stanzas.append(fields)
    return stanzas


def _tails(path: str, least: int = 1) -> list[str]:
    """"a/b/c" -> ["a/b/c", "b/c", "c"]; `least` parts at the least."""
    parts = path.removeprefix("./").split("/")
    return ["/".join(parts[i:]) for i in range(len(parts) - least + 1)] or [path]


def _covers(patterns: list[str], path: str) -> bool:
    """Does a DEP-5 Files pattern (an upstream path, "data/music/*") match an installed path
    ("usr/share/games/x/music/a.ogg")? Packages move upstream folders, so a tail of the
    pattern of two parts or more matching a tail of the path is enough."""
    tails = _tails(path)
    return any(fnmatch.fnmatchcase(tail, pat)
               for pattern in patterns for pat in _tails(pattern, least=2) for tail in tails)


def licence(copyright_text: str, paths: list[str]) -> str:
    """The licences of the kept files: from the last DEP-5 Files stanza that covers each
    path, else the licences that a free-form copyright file names."""
    stanzas = [s for s in _stanzas(copyright_text) if "files" in s and "license" in s]
    found: list[str] = []
    if stanzas:
        for path in paths:
            covering = [s for s in stanzas if _covers(s["files"].split(), path)]
            if covering:
                name = covering[-1]["license"].splitlines()[0].strip()
                if name not in found:
                    found.append(name)
        return ", ".join(found) or "unknown (no Files stanza covers the audio)"
    for pattern, label in _PHRASES:
        for m in re.finditer(pattern, copyright_text, re.IGNORECASE):
            name = label.format(*("+" if g == "later" else g or "" for g in m.groups()))
            if name not in found and not any(f.startswith(name) for f in found):
                found.append(name)
    return ", ".join(found) or "unknown (read the copyright file)"


# --- one package ---------------------------------------------------------------------------

def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{args[0]} not found: run this on Debian or Ubuntu") from None


def _first_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    lines = [ln for ln in lines if ln.startswith("E:")] or lines
    return (lines[0] if lines else f"exit status {proc.returncode}").removeprefix("E: ")


def candidate_version(name: str) -> str | None:
    """The version apt would download, or None if apt does not know the package."""
    proc = _run(["apt-cache", "show", "--no-all-versions", name])
    m = re.search(r"^Version: (\S+)", proc.stdout, re.MULTILINE)
    return m.group(1) if proc.returncode == 0 and m else None


def download(name: str, folder: Path) -> Path:
    proc = _run(["apt-get", "download", name], cwd=folder)
    debs = list(folder.glob("*.deb"))
    if proc.returncode or len(debs) != 1:
        raise FetchError(f"apt-get download failed: {_first_error(proc)}")
    return debs[0]


def _field(deb: Path, name: str) -> str:
    proc = _run(["dpkg-deb", "-f", str(deb), name])
    if proc.returncode:
        raise FetchError(f"{deb.name} is not a Debian package: {_first_error(proc)}")
    return proc.stdout.strip()


def _seconds(path: Path) -> float | None:
    """The file's duration from its container, or None if FFmpeg cannot open it."""
    try:
        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            stream = container.streams.audio[0]
            return float(stream.duration * stream.time_base) if stream.duration else 0.0
    except (av.FFmpegError, IndexError, OSError):
        return None


def _unpack(archive: Path) -> None:
    """Replace a zip archive by a folder of the same name that holds its audio members."""
    folder = archive.with_name(archive.name + ".unpacked")
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.infolist():
                if not member.is_dir() and Path(member.filename).suffix.lower() in AUDIO_EXTENSIONS:
                    z.extract(member, folder)
    except zipfile.BadZipFile:
        return                  # not a zip after all: leave it, it is not audio either
    archive.unlink()
    if folder.exists():
        folder.rename(archive)


def add_deb(deb: Path, dest: Path, keep: str = "*",
            manifest: dict | None = None) -> tuple[str, bool]:
    """Unpack `deb` and keep its audio in dest/<package>, and save the manifest. Returns the
    package's name and False if it was already there at this version (nothing done)."""
    name, version = _field(deb, "Package"), _field(deb, "Version")
    if refused(name):
        raise FetchError(f"refused: {REFUSED.title()}'s music is kept out of training on purpose")
    manifest = load_manifest(dest) if manifest is None else manifest
    if have(manifest, dest, name, version, keep):
        return name, False
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=dest) as tmp:
        root, out = Path(tmp) / "root", Path(tmp) / name
        proc = _run(["dpkg-deb", "-x", str(deb), str(root)])
        if proc.returncode:
            raise FetchError(f"dpkg-deb -x failed: {_first_error(proc)}")
        copyright_file = root / "usr/share/doc" / name / "copyright"
        if not copyright_file.is_file():
            raise FetchError(f"no /usr/share/doc/{name}/copyright in the package: "
                             "its licence is unknown")
        for archive in [p for p in root.rglob("*") if p.suffix.lower() in ARCHIVES and p.is_file()]:
            _unpack(archive)
        kept, seconds, size, undecodable = [], 0.0, 0, 0
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in AUDIO_EXTENSIONS or not fnmatch.fnmatchcase(rel, keep):
                continue
            length = _seconds(path)
            if length is None:
                undecodable += 1
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
            kept.append(rel)
            seconds += length
            size += target.stat().st_size
        if not kept:
            raise FetchError(f"no audio that tagger decodes matches {keep!r} in the package")
        shutil.copyfile(copyright_file, out / "copyright")
        entry = {"version": version, "keep": keep, "files": len(kept), "seconds": round(seconds, 1),
                 "bytes": size, "undecodable": undecodable,
                 "licence": licence(copyright_file.read_text(errors="replace"), kept)}
        old = dest / name
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    manifest["packages"][name] = entry
    save_manifest(dest, manifest)
    return name, True


def fetch(package: Package, dest: Path, manifest: dict) -> tuple[str, bool]:
    """Download and add one package (see add_deb). Raises FetchError."""
    if refused(package.name):
        raise FetchError(f"refused: {REFUSED.title()}'s music is kept out of training on purpose")
    if package.name.endswith(".deb"):          # a package file already on disk
        return add_deb(Path(package.name), dest, package.keep, manifest)
    version = candidate_version(package.name)
    if version is None and os.geteuid() == 0:
        _run(["apt-get", "update"])
        version = candidate_version(package.name)
    if version is None:
        raise FetchError("apt does not know this package: check the name, "
                         "or run `sudo apt-get update`")
    if have(manifest, dest, package.name, version, package.keep):
        return package.name, False
    with tempfile.TemporaryDirectory(prefix="fetch-unlabelled.") as tmp:
        return add_deb(download(package.name, Path(tmp)), dest, package.keep, manifest)


def describe(entry: dict) -> str:
    return (f"{entry['version']}: {entry['files']} files, {entry['seconds'] / 60:.1f} min, "
            f"{entry['bytes'] / 1e6:.1f} MB, {entry['licence']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*",
                        help="package names or .deb files (default: the list file)")
    parser.add_argument("--list", type=Path, default=PACKAGE_LIST, help="the package list file")
    parser.add_argument("--dest", type=Path, default=None, help="where the audio goes")
    args = parser.parse_args(argv)
    quiet_ffmpeg()
    listed = {p.name: p for p in read_list(args.list)}
    packages = [listed.get(n, Package(n)) for n in args.packages] or list(listed.values())
    dest = args.dest or default_dest()
    manifest = load_manifest(dest)
    names, failed, start = [], 0, time.monotonic()
    for package in packages:
        try:
            name, fresh = fetch(package, dest, manifest)
        except (FetchError, OSError) as e:          # a full disk, a file that cannot be read
            failed += 1
            print(f"Error: {package.name}: {e}", flush=True)
            continue
        names.append(name)
        state = "fetched" if fresh else "already fetched"
        print(f"{name} {state} {describe(manifest['packages'][name])}", flush=True)
    entries = [manifest["packages"][name] for name in names]
    hours, gb = sum(e["seconds"] for e in entries) / 3600, sum(e["bytes"] for e in entries) / 1e9
    print(f"{len(entries)} packages in {dest}: {sum(e['files'] for e in entries)} files, "
          f"{hours:.2f} h, {gb:.2f} GB ({time.monotonic() - start:.0f} s)"
          + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
