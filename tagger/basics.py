"""What the light commands need without any third-party import (no torch, no PyAV, no
numpy): the audio file extensions, the devices a model can run on, the usable cores."""

from __future__ import annotations

import os

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
