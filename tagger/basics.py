"""What the light commands need without any heavy import (no torch, PyAV, numpy or
sqlite-utils): the audio file extensions, the devices a model can run on, the usable
cores, where the index lives."""

from __future__ import annotations

import os
from pathlib import Path

AUDIO_EXTENSIONS: frozenset[str] = frozenset({
    ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac",
    ".wav", ".aif", ".aiff", ".aifc", ".au",
})

DEVICES = ("auto", "cpu", "cuda", "mps")


def available_cores() -> int:
    """The cores this process may run on: the default number of workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not on Linux
        return os.cpu_count() or 1


DB_ENV_VAR = "TAGGER_DB"


def default_db_path() -> Path:
    """index.db in the user's data folder (~/.local/share/tagger on Linux)."""
    import platformdirs
    return Path(platformdirs.user_data_dir("tagger")) / "index.db"
