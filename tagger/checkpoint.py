"""The checkpoint: one file that alone rebuilds the model.

It is a torch.save'd dict of tensors and plain data (str, int, float, bool, list, dict):
feature settings, model settings, the genre list, training metrics and provenance beside
the weights (the per-band normalisation statistics are buffers of the model). It is loaded
with ``torch.load(weights_only=True)``, whose unpickler refuses anything but tensors and
plain containers, so a tampered file raises CheckpointError instead of running code.
The model id is the first 12 hex digits of the file's SHA-256.

Loading validates everything before anything runs on the model: what the zip archive
unpacks to (before torch inflates it), settings of the right type and in sane ranges, the
genre names, every tensor's shape and dtype against the model the settings build, and
finite weights. Each problem found is one line of the CheckpointError.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import reprlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tagger.atomic import atomic_torch_save
from tagger.errors import CheckpointError
from tagger.features import FeatureSettings
from tagger.genres import GENRES, normalise_genre
from tagger.model import GenreCRNN, ModelSettings
from tagger.modelfile import (MAX_CHECKPOINT_BYTES, MAX_PICKLE_BYTES, file_model_id,
                              file_problem, mib)

FORMAT = "tagger-checkpoint"
FORMAT_VERSION = 1
KEYS = {"format", "format_version", "features", "model", "genres", "state_dict", "metrics",
        "provenance"}

# Bounds on what a checkpoint may ask of the machine that loads it (the shipped model's
# own figures in brackets).
MAX_ARCHIVE_FILES = 10_000          # files in the zip archive: one per tensor (41)
MAX_WEIGHTS = MAX_CHECKPOINT_BYTES // 4     # numbers in the model the settings build (0.2 M)
MAX_WINDOW_VALUES = 1 << 25         # feature values of one excerpt window (0.4 M)
MAX_NESTING, MAX_ITEMS = 32, 1_000_000      # metrics and provenance (3 levels, 1,000 items)
FIX = "use another checkpoint (--model) or train one with `tagger train`"

# Each number's sane range, both ends included; a setting's type is its default's type.
RANGES = {
    "sample_rate": (8000, 192000), "n_fft": (64, 16384), "hop_length": (1, 16384),
    "n_mels": (1, 512), "f_min": (0.0, 96000.0), "f_max": (1.0, 96000.0),
    "segment_frames": (1, 1024), "segment_hop": (1, 1024), "excerpt_windows": (1, 16),
    "excerpt_seconds": (0.1, 300.0), "db_floor": (-200.0, -1.0),
    "n_genres": (2, 1000), "rnn_hidden": (1, 4096), "rnn_layers": (1, 8), "dropout": (0.0, 0.99),
    "temperature": (0.01, 100.0), "uncertain_below": (0.0, 1.0), "cnn_weight": (0.0, 1.0),
}
# Settings added after format version 1 was fixed: a checkpoint without them was made
# before they existed, and gets their defaults (no fusion, no calibration).
LATER = {"teacher_channels", "temperature", "uncertain_below", "cnn_weight"}
CHOICES = {"mel_scale": ("slaney", "htk"), "rnn": ("gru", "lstm")}
MAX_BLOCKS, MAX_WIDTH = 8, 1024     # model.channels: conv blocks, and each one's width
TEACHER_BLOCKS = 5                  # model.teacher_channels: the FCN's five blocks

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 40


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
        if net.fused:
            from tagger.teacher import flush_subnormals
            flush_subnormals(net.teacher)   # same tags, 10x faster on CPUs
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
        "model": {**dataclasses.asdict(ckpt.model), "channels": list(ckpt.model.channels),
                  "teacher_channels": list(ckpt.model.teacher_channels)},
        "genres": list(ckpt.genres),
        "metrics": ckpt.metrics,
        "provenance": ckpt.provenance,
        "state_dict": ckpt.state_dict,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    ckpt.model_id = file_model_id(path)
    return ckpt.model_id


def _show(value: Any) -> str:
    """A value as one short line (reprlib bounds its length and depth)."""
    return _repr.repr(value)


def _name(key: Any) -> str:
    return key if isinstance(key, str) and re.fullmatch(r"[\w.]{1,80}", key) else _show(key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value_problem(label: str, name: str, value: Any, default: Any) -> str | None:
    """Why value cannot be the setting `name`, whose default is `default` (None if it can)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, str):
        ok, want = value in CHOICES[name], "one of " + ", ".join(map(repr, CHOICES[name]))
    elif name == "teacher_channels":
        ok = (isinstance(value, (list, tuple)) and len(value) in (0, TEACHER_BLOCKS)
              and all(_is_int(c) and 1 <= c <= MAX_WIDTH for c in value))
        want = f"an empty list or a list of {TEACHER_BLOCKS} integers from 1 to {MAX_WIDTH}"
    elif isinstance(default, tuple):
        ok = (isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_BLOCKS
              and all(_is_int(c) and 1 <= c <= MAX_WIDTH for c in value))
        want = f"a list of 1 to {MAX_BLOCKS} integers from 1 to {MAX_WIDTH}"
    else:
        lo, hi = RANGES[name]
        number = _is_int(value) or (isinstance(default, float) and isinstance(value, float))
        ok = number and lo <= value <= hi           # NaN fails both comparisons
        want = f"{'an integer' if isinstance(default, int) else 'a number'} from {lo} to {hi}"
    return None if ok else f"{label} is {_show(value)}; expected {want}"


def _settings(cls, data: Any, section: str, problems: list[str]):
    """The settings dataclass from its saved dict, or None after adding its problems."""
    if not isinstance(data, dict):
        problems.append(f"{section} is {_show(data)}; expected a mapping of settings")
        return None
    before = len(problems)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    problems += [f"{section}.{_name(k)} is not a setting this tagger knows (made by a newer "
                 "tagger?)" for k in data if k not in defaults]
    for name, default in defaults.items():
        if name not in data:
            if name not in LATER:
                problems.append(f"{section}.{name} is missing")
        elif problem := _value_problem(f"{section}.{name}", name, data[name], default):
            problems.append(problem)
    if len(problems) > before:
        return None
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _feature_problems(fs: FeatureSettings) -> list[str]:
    """What the settings' ranges alone cannot catch: settings that contradict each other, or
    that would make one excerpt window cost gigabytes."""
    problems, bins = [], fs.n_fft // 2 + 1
    if fs.hop_length > fs.n_fft:
        problems.append(f"features.hop_length ({fs.hop_length}) is longer than n_fft ({fs.n_fft})")
    if fs.n_mels > bins:
        problems.append(f"features.n_mels ({fs.n_mels}) is more than the {bins} frequency bins "
                        f"of n_fft {fs.n_fft}")
    if fs.f_max > fs.sample_rate / 2:
        problems.append(f"features.f_max ({fs.f_max}) is above half the sample rate "
                        f"({fs.sample_rate / 2})")
    if fs.f_min >= fs.f_max:
        problems.append(f"features.f_min ({fs.f_min}) is not below f_max ({fs.f_max})")
    frames = 1 + max(int(fs.excerpt_seconds * fs.sample_rate), fs.min_samples) // fs.hop_length
    segments = 1 + max(frames - fs.segment_frames, 0) // fs.segment_hop
    values = max(frames * bins, segments * fs.n_mels * fs.segment_frames)
    if values > MAX_WINDOW_VALUES:
        problems.append(f"features: one excerpt window needs {values:,} feature values, over the "
                        f"{MAX_WINDOW_VALUES:,} allowed (hop_length or segment_hop too small?)")
    return problems


def _model_problems(ms: ModelSettings, fs: FeatureSettings | None, genres: Any) -> list[str]:
    problems = []
    if isinstance(genres, (list, tuple)) and ms.n_genres != len(genres):
        problems.append(f"model.n_genres ({ms.n_genres}) differs from the {len(genres)} genres")
    if fs is not None and ms.n_mels != fs.n_mels:
        problems.append(f"model.n_mels ({ms.n_mels}) differs from features.n_mels ({fs.n_mels})")
    elif fs is not None:
        # the first conv block strides by 2, each later one max-pools by 2 (model.conv_block)
        height, width = (fs.n_mels - 1) // 2 + 1, (fs.segment_frames - 1) // 2 + 1
        for _ in ms.channels[1:]:
            height, width = height // 2, width // 2
        if min(height, width) < 1:
            problems.append(f"a segment of {fs.n_mels} x {fs.segment_frames} (n_mels x "
                            f"segment_frames) is too small for {len(ms.channels)} conv blocks")
    return problems


def _genre_problems(genres: Any) -> list[str]:
    """Genre names are keys as `--genre` matches them: lower-case letters and digits."""
    if not isinstance(genres, (list, tuple)) or not genres:
        return [f"genres is {_show(genres)}; expected a list of genre names"]
    problems, seen = [], set()
    for i, genre in enumerate(genres):
        if (not isinstance(genre, str) or not 0 < len(genre) <= 64
                or normalise_genre(genre, (genre,)) != genre):
            problems.append(f"genres[{i}] is {_show(genre)}; expected a name of lower-case "
                            "letters and digits")
        elif genre in seen:
            problems.append(f"genres[{i}] {genre!r} is listed twice")
        else:
            seen.add(genre)
    return problems


def _plain_problem(section: str, value: Any) -> str | None:
    """Metrics and provenance: a mapping of plain data, small and shallow enough that every
    reader (reports, JSON) finishes; a pickle can share or loop references."""
    if not isinstance(value, dict):
        return f"{section} is not a mapping"
    stack, count = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_NESTING:
            return f"{section} is nested too deeply (over {MAX_NESTING} levels)"
        if count > MAX_ITEMS:
            return f"{section} holds over {MAX_ITEMS:,} items"
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return f"{section} has a key that is not a string"
            stack += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, (list, tuple)):
            stack += [(v, depth + 1) for v in item]
        elif not (item is None or isinstance(item, (str, int, float))):
            return f"{section} holds a {type(item).__name__}; expected plain data"
    return None


def _tensor_problems(state: Any, settings: ModelSettings) -> list[str]:
    """Every tensor against the model the settings build (on the meta device: no memory)."""
    if not isinstance(state, dict):
        return ["state_dict is not a mapping of tensors"]
    with torch.device("meta"):
        expected = GenreCRNN(settings).state_dict()
    total = sum(t.numel() for t in expected.values())
    if total > MAX_WEIGHTS:
        return [f"the settings make a model of {total:,} weights, over the {MAX_WEIGHTS:,} "
                "allowed"]
    problems = [f"{_name(k)} is not a weight of this model" for k in state if k not in expected]
    for key, want in expected.items():
        have = state.get(key)
        if key not in state:
            problems.append(f"{key} is missing")
        elif not isinstance(have, torch.Tensor) or have.layout != torch.strided:
            problems.append(f"{key} is not a tensor" if not isinstance(have, torch.Tensor)
                            else f"{key} is not a dense tensor")
        elif have.dtype != want.dtype:
            problems.append(f"{key} is {have.dtype}; the model needs {want.dtype}")
        elif have.shape != want.shape:
            problems.append(f"{key} has shape {tuple(have.shape)}; the settings need "
                            f"{tuple(want.shape)}")
    return problems


def _value_problems(state: dict[str, torch.Tensor]) -> list[str]:
    """NaN or infinite weights, negative variances or a zero spread would give NaN
    probabilities for every track. (The shapes are checked: the sizes are the model's.)"""
    floats = {k: t for k, t in state.items() if t.is_floating_point()}
    variances = {k: t for k, t in floats.items() if k.endswith("running_var")}
    every = torch.cat([t.reshape(-1) for t in floats.values()])
    if (torch.isfinite(every).all() and not any(bool((t < 0).any()) for t in variances.values())
            and all(bool((state[k] > 0).all()) for k in ("norm_std", "tag_std") if k in state)):
        return []                           # the usual case, in a few tensor operations
    problems = []
    for key, t in floats.items():
        if bad := int(t.numel() - torch.isfinite(t).sum()):
            problems.append(f"{key} holds {bad} NaN or infinite value{'s' * (bad > 1)}")
        elif key in variances and (bad := int((t < 0).sum())):
            problems.append(f"{key} holds {bad} negative value{'s' * (bad > 1)}")
    for key in ("norm_std", "tag_std"):
        if key in state and (bad := int((state[key] <= 0).sum())):
            problems.append(f"{key} holds {bad} value{'s' * (bad > 1)} <= 0 (it divides the "
                            "model's input)")
    return problems


def _archive_problem(path: Path) -> str | None:
    """What the zip archive torch.save writes would unpack to, read from its directory
    before torch inflates anything: a few KB can declare gigabytes."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return "refused to load: not a torch zip archive, so not a tagger checkpoint"
    if len(entries) > MAX_ARCHIVE_FILES:
        return f"holds {len(entries):,} files; a checkpoint has at most {MAX_ARCHIVE_FILES:,}"
    total = sum(e.file_size for e in entries)
    if total > MAX_CHECKPOINT_BYTES:
        return (f"expands to {mib(total)} when unpacked; a checkpoint may hold at most "
                f"{mib(MAX_CHECKPOINT_BYTES)} (a zip bomb?)")
    for e in entries:
        if e.filename.endswith("data.pkl") and e.file_size > MAX_PICKLE_BYTES:
            return (f"its settings and metrics ({e.filename}) unpack to {mib(e.file_size)}; "
                    f"at most {mib(MAX_PICKLE_BYTES)}")
    return None


def _read(path: Path) -> Any:
    """The unpickled payload: tensors and plain data only, within the size caps."""
    try:
        problem = file_problem(path) or _archive_problem(path)
        if problem:
            raise CheckpointError(problem, str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint file", str(path)) from None
    except PermissionError:
        raise CheckpointError("permission denied", str(path)) from None
    except pickle.UnpicklingError:
        raise CheckpointError("refused to load: the file holds objects other than tensors and "
                              "plain data (tampered with, or not a tagger checkpoint)",
                              str(path)) from None
    except Exception:  # RuntimeError (a damaged record), EOFError, KeyError, OSError ...
        raise CheckpointError("not a tagger checkpoint (unreadable or truncated torch file)",
                              str(path)) from None


def _refuse(problems: list[str], path: Path, shown: int = 20) -> None:
    """One CheckpointError for all the problems found, one line each (the first 20)."""
    if len(problems) == 1:
        raise CheckpointError(f"{problems[0]}; {FIX}", str(path))
    if problems:
        lines = problems[:shown] + [f"... and {len(problems) - shown} more"] * (len(problems) > shown)
        raise CheckpointError(f"{len(problems)} problems; {FIX}:\n" +
                              "\n".join(f"  {line}" for line in lines), str(path))


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint without executing any code from it."""
    path = Path(path)
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not a tagger checkpoint", str(path))
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {_show(payload.get('format_version'))}"
                              f" is not supported (this tagger reads version {FORMAT_VERSION})",
                              str(path))
    problems = [f"{_name(k)} is not part of a tagger checkpoint (made by a newer tagger?)"
                for k in payload if k not in KEYS]
    features = _settings(FeatureSettings, payload.get("features"), "features", problems)
    model = _settings(ModelSettings, payload.get("model"), "model", problems)
    genres = payload.get("genres")
    problems += _genre_problems(genres)
    if features is not None:
        problems += _feature_problems(features)
    if model is not None:
        problems += _model_problems(model, features, genres)
    payload.setdefault("metrics", {})
    payload.setdefault("provenance", {})
    problems += [p for section in ("metrics", "provenance")
                 if (p := _plain_problem(section, payload[section]))]
    _refuse(problems, path)
    _refuse(_tensor_problems(payload.get("state_dict"), model), path)
    _refuse(_value_problems(payload["state_dict"]), path)
    return Checkpoint(features, model, tuple(genres), payload["state_dict"], payload["metrics"],
                      payload["provenance"], file_model_id(path))
