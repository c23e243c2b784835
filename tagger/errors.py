"""The project's own exceptions. Each edge wraps foreign errors in one of these."""

from __future__ import annotations


class TaggerError(Exception):
    """Base class: a one-line, user-facing reason, optionally about one path."""

    def __init__(self, reason: str, path: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class DecodeError(TaggerError):
    """A file could not be decoded (corrupt, not audio, unreadable, no audio stream).

    `transient` marks reasons that are not the file's content (permissions, I/O, memory):
    the next scan tries such a file again even if it has not changed.
    """

    def __init__(self, reason: str, path: str | None = None, transient: bool = False):
        super().__init__(reason, path)
        self.transient = transient


class CheckpointError(TaggerError):
    """A checkpoint is missing, malformed or tampered with."""


class DatabaseError(TaggerError):
    """The SQLite index cannot be opened or written: locked by another command, too new,
    damaged, misplaced (a folder, a path below a file), on a full or read-only disk."""


class UserError(TaggerError):
    """Bad arguments or configuration that the user can fix."""


class UsageError(UserError):
    """Arguments that cannot go together (`--failed --genre pop`) or a value out of range:
    the CLI shows them as a usage error, with exit code 2."""


class TagError(TaggerError):
    """A file's tags cannot be read or written (unsupported, corrupt, read-only, vanished)."""


class OutputError(TaggerError):
    """stdout cannot be written: its reader is gone (a closed pipe, errno EPIPE), or the
    disk is full (ENOSPC)."""

    def __init__(self, exc: OSError):
        super().__init__(f"cannot write the output ({exc.strerror or exc})")
        self.errno = exc.errno
