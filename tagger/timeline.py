"""A genre timeline: the model over a sliding window of the whole track, for DJ mixes,
concerts and medleys, where one label per track is wrong by nature.

Each window goes through the model as a track of its own (Classifier.classify: the same
log-mels, the model's calibration, and for the fused model the teacher's tags of that
window alone). The decoder (decode.sliding_windows) reads the file once, front to back;
`batch_size` windows at a time are held and classified, so memory stays bounded whatever
the track's length (a 3-hour mix included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tagger.decode import sliding_windows
from tagger.scanner import silent

if TYPE_CHECKING:
    from tagger.classify import Classifier


@dataclass(frozen=True)
class Window:
    start: float                        # seconds from the track's start
    end: float
    probabilities: dict[str, float]     # in the model's genre order; empty: a silent window


@dataclass(frozen=True)
class Timeline:
    path: str
    model_id: str
    genres: tuple[str, ...]
    window_seconds: float
    hop_seconds: float
    windows: list[Window]

    @property
    def overall(self) -> dict[str, float]:
        """The mean of the audible windows' probabilities, best first ({} if all silent)."""
        rows = [[w.probabilities[g] for g in self.genres] for w in self.windows if w.probabilities]
        if not rows:
            return {}
        mean = np.mean(rows, axis=0)
        return {g: float(p) for g, p in sorted(zip(self.genres, mean), key=lambda gp: -gp[1])}

    @property
    def genre(self) -> str | None:
        """The track's overall top genre."""
        return next(iter(self.overall), None)

    @property
    def duration(self) -> float:
        return self.windows[-1].end if self.windows else 0.0

    def as_dict(self) -> dict:
        """What `tagger show --timeline --format json` prints."""
        return {"path": self.path, "model_id": self.model_id,
                "window_seconds": self.window_seconds, "hop_seconds": self.hop_seconds,
                "windows": [{"start": w.start, "end": w.end, "probabilities": w.probabilities}
                            for w in self.windows]}


def timeline(classifier: Classifier, path: str | os.PathLike, window: float = 10.0,
             hop: float = 5.0, batch_size: int = 16,
             on_window: Callable[[float], None] | None = None) -> Timeline:
    """Classify `window`-second windows of `path` every `hop` seconds (see
    decode.sliding_windows for where they fall). A window with no sound above -80 dBFS gets
    no probabilities. on_window(end_seconds) is called as each batch is done. Raises
    DecodeError when the file cannot be decoded; ValueError for a window or hop <= 0."""
    if not window > 0 or not hop > 0:
        raise ValueError(f"window and hop must be over 0 seconds, not {window} and {hop}")
    rate = classifier.settings.sample_rate
    windows: list[Window] = []
    batch: list[tuple[int, np.ndarray]] = []

    def classify() -> None:
        loud = [not silent([w]) for _, w in batch]
        probs = iter(classifier.classify([[w] for (_, w), ok in zip(batch, loud) if ok])
                     if any(loud) else [])
        for (s, w), ok in zip(batch, loud):
            row = next(probs) if ok else None
            windows.append(Window(round(s / rate, 3), round((s + len(w)) / rate, 3),
                                  {} if row is None else
                                  {g: float(p) for g, p in zip(classifier.genres, row)}))
        batch.clear()
        if on_window:
            on_window(windows[-1].end)

    for start, wave in sliding_windows(path, rate, window, hop):
        batch.append((start, wave))
        if len(batch) >= batch_size:
            classify()
    if batch:
        classify()
    return Timeline(os.path.abspath(os.fsdecode(path)), classifier.model_id, tuple(classifier.genres),
                    window, hop, windows)


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def grid(t: Timeline, columns: int | None = None) -> tuple[np.ndarray, list[float]]:
    """(genres, columns) probabilities, genres in t.genres order, NaN where silent, and
    each column's start in seconds: one column per window, or `columns` groups of
    consecutive windows (each the mean of its audible windows) when there are more."""
    probs = np.array([[w.probabilities.get(g, np.nan) for g in t.genres] for w in t.windows],
                     dtype=float).reshape(len(t.windows), len(t.genres))
    n = len(t.windows) if columns is None else max(1, min(columns, len(t.windows)))
    bounds = [i * len(t.windows) // n for i in range(n + 1)]
    cells = np.full((len(t.genres), n), np.nan)
    for c, (a, b) in enumerate(zip(bounds, bounds[1:])):
        audible = probs[a:b][~np.isnan(probs[a:b]).any(axis=1)]
        if len(audible):
            cells[:, c] = audible.mean(axis=0)
    return cells, [t.windows[a].start for a in bounds[:-1]]
