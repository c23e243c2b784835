"""Which checkpoint file to use and its model id, without importing torch (so that a rescan
of an unchanged library never pays for loading the model)."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import stat
import zipfile
from importlib import resources
from pathlib import Path

from tagger.errors import UserError

ENV_VAR = "TAGGER_MODEL"
# The most a checkpoint may hold, on disk or unpacked (the shipped one holds 0.9 MB): far
# above any model tagger trains, far below what would exhaust a laptop's memory.
MAX_CHECKPOINT_BYTES = 256 << 20
# A checkpoint's settings, metrics and provenance, pickled (data.pkl; the shipped one 10 KB):
# torch's pure-Python unpickler takes at worst 3 s and 160 MB for 2 MiB.
MAX_PICKLE_BYTES = 2 << 20


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MiB"


def file_problem(path: str | Path) -> str | None:
    """Why path cannot hold a checkpoint, from its metadata alone (None if it can): reading
    a FIFO or a device would never end, and a huge file would take minutes to hash."""
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size > MAX_CHECKPOINT_BYTES:
        return f"is {mib(info.st_size)}; a tagger checkpoint is at most {mib(MAX_CHECKPOINT_BYTES)}"
    return None


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 in hex, read 1 MiB at a time: tagger's one file hash (model ids,
    feature cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_model_id(path: str | Path) -> str:
    """The first 12 hex digits of the file's SHA-256: a new model makes old predictions stale."""
    return file_sha256(path)[:12]


# The models shipped inside the package, by the name --model also takes (models/<name>.pt
# in a source checkout, which tagger/data/<name>.pt links to; see models/MODEL_CARD.md).
SHIPPED = ("default", "fast")


def default_model_path(name: str = "default") -> Path | None:
    """A model shipped inside the package, or None if an installation lost it."""
    candidate = resources.files("tagger") / "data" / f"{name}.pt"
    return Path(str(candidate)) if candidate.is_file() else None


def resolve_model(option: Path | None) -> tuple[Path, str]:
    """(checkpoint path, model id) for a --model option: a checkpoint file, or the name of a
    shipped model ("default", "fast") when no file of that name is in the current folder;
    no option means the shipped default."""
    name = str(option) if option is not None and str(option) in SHIPPED else None
    if option is not None and (name is None or os.path.lexists(option)):
        path = option
    else:
        path = default_model_path(name or "default")
    if path is None:
        raise UserError(f"the {name or 'default'} model is missing from this installation "
                        f"(tagger/data/{name or 'default'}.pt); reinstall tagger, or pass "
                        f"--model PATH (or set {ENV_VAR}) to a tagger checkpoint file")
    try:
        problem = file_problem(path)
        if problem:
            raise UserError(f"{path}: {problem}; --model takes a tagger checkpoint file")
        return path, file_model_id(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the model ({exc.strerror})") from None


class _PlainData(pickle.Unpickler):
    """Unpickles a checkpoint's data.pkl without torch: its plain data as they are, every
    tensor as None. Refuses any class that is neither (nothing from the file runs)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name.startswith("_rebuild_"):
            return lambda *args, **kwargs: None
        if module == "torch" and name.endswith("Storage"):
            return None                     # named by the tensors' storage records only
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid):
        return None


def excerpt_settings(path: str | Path) -> tuple[int, int, float] | None:
    """(sample rate, excerpt windows, seconds per window) of a checkpoint, read without
    importing torch, so that decoding can start while torch and the model load. None when
    the file does not say (checkpoint.load, which validates everything, then says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
            if info.file_size > MAX_PICKLE_BYTES:
                return None
            payload = _PlainData(io.BytesIO(archive.read(info))).load()
        f = payload["features"]
        settings = (f["sample_rate"], f["excerpt_windows"], f["excerpt_seconds"])
        if not (type(settings[0]) is int and type(settings[1]) is int
                and type(settings[2]) is float):
            return None
        return settings
    except Exception:   # noqa: BLE001 - anything unreadable is for checkpoint.load to explain
        return None
