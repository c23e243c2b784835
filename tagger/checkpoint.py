"""The checkpoint: one file that alone rebuilds the model.

It is a torch.save'd dict of tensors and plain data (str, int, float, bool, list, dict):
feature settings, model settings, the genre list, training metrics and provenance beside
the weights (the per-band normalisation statistics are buffers of the model). It is loaded
with ``torch.load(weights_only=True)``, whose unpickler refuses anything but tensors and
plain containers, so a tampered file raises CheckpointError instead of running code.
The model id is the first 12 hex digits of the file's SHA-256.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tagger.atomic import atomic_file
from tagger.errors import CheckpointError
from tagger.features import FeatureSettings
from tagger.genres import GENRES
from tagger.model import GenreCRNN, ModelSettings
from tagger.modelfile import file_model_id

FORMAT = "tagger-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    features: FeatureSettings
    model: ModelSettings
    genres: tuple[str, ...]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""   # set when loaded from (or saved to) a file

    def build(self) -> GenreCRNN:
        """A GenreCRNN with these weights, in eval mode, on the CPU."""
        net = GenreCRNN(self.model)
        net.load_state_dict(self.state_dict)
        return net.eval()


def new_checkpoint(net: GenreCRNN, features: FeatureSettings, genres: tuple[str, ...] = GENRES,
                   metrics: dict | None = None, provenance: dict | None = None) -> Checkpoint:
    """Package a model (trained or not) with everything needed to rebuild and run it."""
    if net.settings.n_genres != len(genres):
        raise ValueError(f"model has {net.settings.n_genres} outputs but {len(genres)} genres given")
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return Checkpoint(features, net.settings, tuple(genres), state, metrics or {}, provenance or {})


def save(ckpt: Checkpoint, path: str | Path) -> str:
    """Write atomically (temp file + rename); returns the new model id."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "features": dataclasses.asdict(ckpt.features),
        "model": {**dataclasses.asdict(ckpt.model), "channels": list(ckpt.model.channels)},
        "genres": list(ckpt.genres),
        "metrics": ckpt.metrics,
        "provenance": ckpt.provenance,
        "state_dict": ckpt.state_dict,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        torch.save(payload, f)
    ckpt.model_id = file_model_id(path)
    return ckpt.model_id


def _settings(cls, data: Any, path: Path):
    if not isinstance(data, dict):
        raise CheckpointError(f"'{cls.__name__}' is not a mapping", str(path))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} fields {sorted(unknown)} "
                              "(made by a newer tagger?)", str(path))
    if "channels" in data:
        data = {**data, "channels": tuple(data["channels"])}
    return cls(**data)


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint without executing any code from it."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint file", str(path)) from None
    except IsADirectoryError:
        raise CheckpointError("is a directory, not a checkpoint file", str(path)) from None
    except PermissionError:
        raise CheckpointError("permission denied", str(path)) from None
    except pickle.UnpicklingError:
        raise CheckpointError("refused to load: the file holds objects other than tensors and "
                              "plain data (tampered with, or not a tagger checkpoint)",
                              str(path)) from None
    except Exception:  # RuntimeError (not a zip archive), EOFError, KeyError ...
        raise CheckpointError("not a tagger checkpoint (unreadable or truncated torch file)",
                              str(path)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not a tagger checkpoint", str(path))
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {payload.get('format_version')} is not "
                              f"supported (this tagger reads version {FORMAT_VERSION})", str(path))
    features = _settings(FeatureSettings, payload.get("features"), path)
    model = _settings(ModelSettings, payload.get("model"), path)
    genres = payload.get("genres")
    if not isinstance(genres, list) or len(genres) != model.n_genres:
        raise CheckpointError("genre list does not match the model", str(path))
    ckpt = Checkpoint(features, model, tuple(genres), payload.get("state_dict") or {},
                      payload.get("metrics") or {}, payload.get("provenance") or {},
                      file_model_id(path))
    try:
        ckpt.build()
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"weights do not fit the model settings ({str(exc)[:160]})",
                              str(path)) from None
    return ckpt
