"""A file's content fingerprint: its size and a hash of three fixed byte ranges (64 KiB at the
start, the middle and the end; a smaller file whole). Cheap enough to take for every new or
changed file, and what tells a moved file or a bare `touch` from new content.

Two files of one size that differ only outside those ranges share a fingerprint: tag editors
rewrite the start of a file (where the tags are) or change its size, and audio is re-encoded
whole, so for a music library that is not a concern.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from tagger.objects import is_uri

CHUNK = 64 * 1024


def fingerprint(path: str | os.PathLike) -> str | None:
    """32 hex digits (BLAKE2b), or None if the file cannot be read. A URI (tagger.objects)
    gives the fingerprint of the same bytes on disk, from three ranged reads."""
    if is_uri(path):
        return _object_fingerprint(path)
    try:
        with open(path, "rb") as f:
            def read(start: int, end: int) -> bytes:
                f.seek(start)
                return f.read(end - start)
            return _digest(os.fstat(f.fileno()).st_size, read)
    except OSError:
        return None


def _object_fingerprint(uri: str) -> str | None:
    from tagger.objects import filesystem
    try:
        fs, path = filesystem(uri)
        return _digest(fs.size(path), lambda start, end: fs.cat_file(path, start, end))
    except Exception:  # noqa: BLE001 - stores raise their own errors; a fingerprint is optional
        return None


def _digest(size: int, read: Callable[[int, int], bytes]) -> str:
    """The fingerprint of `size` bytes that read(start, end) gives ranges of."""
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    if size <= 3 * CHUNK:
        h.update(read(0, size))
    else:
        for start in (0, size // 2 - CHUNK // 2, size - CHUNK):
            h.update(read(start, start + CHUNK))
    return h.hexdigest()
