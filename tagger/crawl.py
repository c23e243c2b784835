"""Walk the library: audio files by extension, hidden and system folders skipped, symlinks
to folders followed without ever looping, dangling links and unreadable folders passed over."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tagger.decode import AUDIO_EXTENSIONS

SYSTEM_DIRS = frozenset({"@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information",
                         "lost+found", "__MACOSX"})


@dataclass(frozen=True)
class Candidate:
    path: str        # absolute, normalised; may hold surrogate escapes for non-UTF-8 names
    size: int
    mtime_ns: int


def _excluded(path: str, patterns: Iterable[str]) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in patterns)


def crawl(roots: Iterable[str | os.PathLike], exclude: Iterable[str] = ()) -> Iterator[Candidate]:
    """Yield every audio file under roots (a root may also be one file), sorted within each
    folder. `exclude` globs match the absolute path or the bare name of a file or folder."""
    exclude = tuple(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def file_candidate(path: str) -> Candidate | None:
        if os.path.splitext(path)[1].lower() not in AUDIO_EXTENSIONS or _excluded(path, exclude):
            return None
        try:
            st = os.stat(path)
        except OSError:             # dangling link, vanished, no permission on the folder
            return None
        if not os.path.isfile(path) or path in seen_files:
            return None
        seen_files.add(path)
        return Candidate(path, st.st_size, st.st_mtime_ns)

    def walk(folder: str) -> Iterator[Candidate]:
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:    # a symlink loop, or the same folder reached twice
                return
            seen_dirs.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.name in SYSTEM_DIRS:
                continue
            try:
                is_dir = entry.is_dir()   # follows symlinks; False for dangling ones
            except OSError:
                continue
            if is_dir:
                if not _excluded(entry.path, exclude):
                    yield from walk(entry.path)
            elif (found := file_candidate(entry.path)) is not None:
                yield found

    for root in roots:
        root = os.path.abspath(os.fspath(root))
        if os.path.isdir(root):
            yield from walk(root)
        elif (found := file_candidate(root)) is not None:
            yield found
