"""Audio on object storage (s3://, gs://, or any other fsspec protocol): list a prefix's audio
objects, read an object in blocks, and map the filesystem's errors to tagger's own.

fsspec (from the `[cluster]` extra) is imported only when a URI is used: local paths never
come here. Reading goes through fsspec's BlockCache over ranged reads (`cat_file`), the same
code path for every protocol (file:// and memory:// in the tests), so that a decoder's seeks
cost one request per block, not one per read, and only the blocks it touches are fetched.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from tagger.basics import AUDIO_EXTENSIONS
from tagger.crawl import SYSTEM_DIRS, _excluded
from tagger.errors import UserError

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(path: str | os.PathLike | bytes) -> bool:
    """True for "scheme://..." (s3://, gs://, file://, memory://), False for a local path."""
    return isinstance(path, str) and _URI.match(path) is not None


@dataclass(frozen=True)
class Listed:
    path: str             # the object's full URI
    size: int
    mtime_ns: int         # last modified, 0 when the store does not say
    version: str | None   # ETag (S3) or generation (GCS); None for local files


@contextmanager
def _user_errors(uri: str) -> Iterator[None]:
    """fsspec's errors about the protocol itself as one-line UserErrors."""
    protocol = uri.split("://", 1)[0]
    try:
        yield
    except ImportError as e:
        if (e.name or "").startswith("fsspec"):
            package, hint = "fsspec", "pip install 'tagger[cluster]'"
        else:
            from fsspec.registry import known_implementations
            package = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
            hint = f"pip install {package}" if package not in ("", "fsspec") else str(e)
        raise UserError(f"reading {protocol}:// needs {package or 'a package'}: {hint}",
                        path=uri) from None
    except ValueError as e:
        if "Protocol not known" not in str(e):
            raise
        raise UserError(f"unknown protocol {protocol}://: use s3://, gs://, file:// or "
                        "another protocol fsspec knows", path=uri) from None
    except FileNotFoundError:
        raise UserError("no such object or prefix", path=uri) from None
    except OSError as e:            # the store refused (no access, no such bucket)
        raise UserError(f"cannot list it ({e.strerror or e})", path=uri) from None


def default_block_size(size: int) -> int:
    """About size / 32, a power of two from 64 KiB to 1 MiB: the excerpt windows of a 3-minute
    track take 10-20 requests and 30-40 % of an m4a, flac or ogg at any bitrate (a fixed
    256 KiB read 88 % of a 2.2 MB m4a). FFmpeg reads an mp3 or opus through to its last
    window whatever the blocks (about 80 %)."""
    return min(2**20, max(2**16, 1 << max(0, (size // 32).bit_length() - 1)))


def filesystem(uri: str):
    """(fsspec filesystem, path within it) for a URI; UserError for a protocol it cannot read."""
    with _user_errors(uri):
        from fsspec.core import url_to_fs
        return url_to_fs(uri)


def stamp(info: dict) -> tuple[int, str | None]:
    """(mtime_ns, version) of an fsspec info dict: last modified from s3fs' "LastModified",
    gcsfs' "updated" or a local "mtime" (datetime, RFC 3339 text or seconds; else 0), and
    the version from s3fs' "ETag" (quotes stripped) or gcsfs' "generation" (else None)."""
    when = next((info[k] for k in ("LastModified", "updated", "mtime") if info.get(k)), None)
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if isinstance(when, datetime):
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        mtime_ns = (when - _EPOCH) // timedelta(microseconds=1) * 1000
    else:
        mtime_ns = round(float(when) * 1e9) if when else 0
    version = info.get("ETag") or info.get("generation")
    return mtime_ns, (str(version).strip('"') if version else None)


def list_objects(uri: str, exclude: Sequence[str] = ()) -> Iterator[Listed]:
    """Every audio object under the prefix `uri` (recursively, by name), or the one object it
    names. Like tagger.crawl: audio extensions only, hidden and system folders skipped, and
    `exclude` globs matching an object's or a folder's full URI or bare name leave it out.
    UserError when the protocol cannot be read or nothing is there."""
    fs, root = filesystem(uri)
    with _user_errors(uri):
        info = fs.info(root)
        found = fs.find(root, detail=True) if info["type"] == "directory" else {root: info}
    root = root.rstrip("/")
    for name in sorted(found):
        info = found[name]
        full = fs.unstrip_protocol(name)
        if os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS or _excluded(full, exclude):
            continue
        folders = name[len(root) + 1:].split("/")[:-1] if name != root else []
        if any(part.startswith(".") or part in SYSTEM_DIRS or _excluded(
                fs.unstrip_protocol("/".join([root, *folders[:i + 1]])), exclude)
               for i, part in enumerate(folders)):
            continue
        yield Listed(full, int(info.get("size") or 0), *stamp(info))


class ObjectFile(io.RawIOBase):
    """An object read through fsspec's BlockCache: each block is fetched once (one ranged
    request), when a read first touches it. `fetched` and `requests` count what was read."""

    def __init__(self, fs, path: str, size: int, block: int):
        from fsspec.caching import BlockCache
        self.fs, self.path, self.size = fs, path, size
        self.fetched = self.requests = 0
        self._cache = BlockCache(block, self._fetch, size)
        self._pos = 0

    def _fetch(self, start: int, end: int) -> bytes:
        data = self.fs.cat_file(self.path, start, min(end, self.size))
        self.requests += 1
        self.fetched += len(data)
        return data

    def readable(self) -> bool:
        return True

    seekable = readable

    def readinto(self, buffer) -> int:
        data = self._cache._fetch(self._pos, self._pos + len(buffer))
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def open_object(uri: str, block_size: int | None = None) -> ObjectFile:
    """The object `uri` as a binary file read in blocks of `block_size` bytes (by default
    default_block_size). Raises FileNotFoundError (or the store's OSError) when it cannot be
    read, IsADirectoryError for a prefix, UserError for a protocol that cannot be read."""
    fs, path = filesystem(uri)
    info = fs.info(path)
    if info["type"] == "directory":
        raise IsADirectoryError(uri)
    size = int(info["size"])
    return ObjectFile(fs, path, size, block_size or default_block_size(size))
