"""Whole-or-nothing file writes: a hidden temporary file beside the target, flushed to disk,
then renamed over it, so that a crash or a full disk leaves the old file or the new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def check_target(path: Path, option: str, example: str) -> None:
    """A UserError, before any long work, if a file cannot be written at `path` (a folder, or
    in a folder that does not exist); `option` names the flag that gave it, `example` a
    file name to suggest."""
    from tagger.errors import UserError
    if path.is_dir():
        raise UserError(f"is a folder; pass a file name, such as {path / example}", str(path))
    if not path.parent.is_dir():
        raise UserError(f"no folder {path.parent}; create it, or pass another {option}", str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces `path` with the
    permissions a plain open() would give (mkstemp's are 0600), on an error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: object, path: Path) -> None:
    """torch.save(obj) to path through atomic_file: every torch.save in tagger goes here."""
    import torch        # here: atomic.py itself imports no torch (tagger --help, query)

    with atomic_file(path) as f:
        torch.save(obj, f)
