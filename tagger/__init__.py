"""tagger: genre probabilities for a local music library, from the audio itself.

The Python API (see the README's "Python API"): load_model, Model, Prediction, scan, prune,
ScanStats, Index, IndexStats, write_tags, restore_tags, TagOptions, TagStats, write_report (the
HTML report), and the errors they raise (TaggerError and its kinds). Importing tagger imports
none of them until first used, so that scripts and the light commands start fast; torch loads
with the first model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "tagger.api", "Model": "tagger.api", "Prediction": "tagger.api",
    "scan": "tagger.api", "prune": "tagger.api", "ScanStats": "tagger.scanner",
    "Index": "tagger.index", "IndexStats": "tagger.index", "TrackResult": "tagger.index",
    "write_tags": "tagger.writetags", "restore_tags": "tagger.writetags",
    "TagOptions": "tagger.writetags", "TagStats": "tagger.writetags", "Outcome": "tagger.writetags",
    "TaggerError": "tagger.errors", "UserError": "tagger.errors", "DatabaseError": "tagger.errors",
    "CheckpointError": "tagger.errors", "DecodeError": "tagger.errors", "TagError": "tagger.errors",
    "GENRES": "tagger.genres", "write_report": "tagger.htmlreport",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value         # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'tagger' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from tagger.api import Model, Prediction, load_model, prune, scan
    from tagger.errors import (CheckpointError, DatabaseError, DecodeError, TagError,
                               TaggerError, UserError)
    from tagger.genres import GENRES
    from tagger.htmlreport import write_report
    from tagger.index import Index, IndexStats, TrackResult
    from tagger.scanner import ScanStats
    from tagger.writetags import Outcome, TagOptions, TagStats, restore_tags, write_tags
