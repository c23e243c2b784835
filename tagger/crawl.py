"""Walk the library: audio files by extension, hidden and system folders skipped, symlinks
to folders followed without ever looping, dangling links and unreadable folders passed over,
paths too long for the system reported."""

from __future__ import annotations

import errno
import fnmatch
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tagger.basics import AUDIO_EXTENSIONS

SYSTEM_DIRS = frozenset({"@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information",
                         "lost+found", "__MACOSX"})


@dataclass(frozen=True)
class Candidate:
    path: str        # absolute, normalised; may hold surrogate escapes for non-UTF-8 names
    size: int
    mtime_ns: int
    error: str | None = None   # why it cannot be read (a path too long): a failure, not a track


def real_path(path: str, folders: dict[str, str] | None = None) -> str:
    """The one path the index keeps for a file: symlinks resolved (os.path.realpath), and the
    name in Unicode's NFC form where the file system gives the same file under both forms
    (macOS); a file system that keeps NFC and NFD names apart (Linux) keeps the name as is.
    `folders` caches the real paths of folders across calls (a walk's files share them)."""
    folder, name = os.path.split(path)
    if folders is None:
        folders = {}
    if (real_folder := folders.get(folder)) is None:
        real_folder = folders[folder] = os.path.realpath(folder)
    real = os.path.join(real_folder, name)
    if os.path.islink(real):
        real = os.path.realpath(real)
    nfc = unicodedata.normalize("NFC", real)
    if nfc != real:
        try:
            if os.path.samefile(nfc, real):
                return nfc
        except (OSError, ValueError):
            pass
    return real


def _excluded(path: str, patterns: Iterable[str]) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _too_long(path: str, what: str) -> Candidate:
    """A file or folder the system refuses to open by its path (ENAMETOOLONG)."""
    size = f"{len(os.fsencode(path)):,} bytes"
    if what == "folder":
        reason = f"folder not scanned: its path is too long for the system ({size}); move or rename it"
    else:
        reason = f"path too long for the system ({size}); move or rename the file"
    return Candidate(path, 0, 0, reason)


def crawl(roots: Iterable[str | os.PathLike], exclude: Iterable[str] = ()) -> Iterator[Candidate]:
    """Yield every audio file under roots (a root may also be one file), sorted within each
    folder, a folder's files where its name sorts. `exclude` globs match the absolute path or
    the bare name of a file or folder. A file or folder whose path is too long for the system
    comes as a Candidate with an error. The walk keeps a stack, not the call stack: any depth."""
    exclude = tuple(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def file_candidate(path: str) -> Candidate | None:
        if os.path.splitext(path)[1].lower() not in AUDIO_EXTENSIONS or _excluded(path, exclude):
            return None
        try:
            st = os.stat(path)
        except OSError as e:        # dangling link, vanished, no permission on the folder
            if e.errno != errno.ENAMETOOLONG or path in seen_files:
                return None
            seen_files.add(path)
            return _too_long(path, "file")
        if not os.path.isfile(path) or path in seen_files:
            return None
        seen_files.add(path)
        return Candidate(path, st.st_size, st.st_mtime_ns)

    def listing(folder: str) -> Iterator[os.DirEntry] | Candidate | None:
        """The folder's entries in name order; None if it was seen before or cannot be read."""
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:    # a symlink loop, or the same folder reached twice
                return None
            seen_dirs.add(key)
            with os.scandir(folder) as it:
                return iter(sorted(it, key=lambda e: e.name))
        except OSError as e:
            return _too_long(folder, "folder") if e.errno == errno.ENAMETOOLONG else None

    def walk(root: str) -> Iterator[Candidate]:
        stack = [listing(root)]     # one open listing per level (or what stands for one)
        while stack:
            top = stack[-1]
            entry = next(top, None) if isinstance(top, Iterator) else None
            if entry is None:
                stack.pop()
                if isinstance(top, Candidate):
                    yield top
                continue
            if entry.name.startswith(".") or entry.name in SYSTEM_DIRS:
                continue
            try:
                is_dir = entry.is_dir()   # follows symlinks; False for dangling ones
            except OSError:
                continue
            if is_dir:
                if not _excluded(entry.path, exclude):
                    stack.append(listing(entry.path))
            elif (found := file_candidate(entry.path)) is not None:
                yield found

    for root in roots:
        root = os.path.abspath(os.fspath(root))
        if os.path.isdir(root):
            yield from walk(root)
        elif (found := file_candidate(root)) is not None:
            yield found
