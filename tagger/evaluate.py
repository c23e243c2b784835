"""Track-level evaluation of a model (and of the MFCC baseline, and of the teacher+LR
reference given a teacher) on clips of a split, and the report: JSON plus PNG figures,
written beside the checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tagger.atomic import atomic_file
from tagger.baseline import baseline_probabilities
from tagger.classify import track_probabilities
from tagger.dataset import Clip, genre_counts
from tagger.errors import UserError
from tagger.features import FeatureSettings, cut_segments
from tagger.metrics import confusion_matrix, summarise


@torch.inference_mode()
def predict(net: torch.nn.Module, mels: Sequence[Sequence[torch.Tensor]], settings: FeatureSettings,
            device: torch.device, tags: Sequence[torch.Tensor] | None = None,
            batch_tracks: int = 16, logits: bool = False):
    """(n_clips, n_genres) probabilities: the same window pooling as `scan` (a fused model
    also takes each clip's track tags). logits=True: (CNN-RNN window logits, tag window
    logits (zeros unless fused), owner) instead, for calibration."""
    was_training = net.training
    net.eval()
    out, owners = [], []
    for i in range(0, len(mels), batch_tracks):
        chunk = mels[i: i + batch_tracks]
        windows = [w.to(device) for track in chunk for w in track]
        owner = torch.tensor([j for j, track in enumerate(chunk) for _ in track], device=device)
        t = torch.stack(list(tags[i: i + batch_tracks])).to(device) if tags is not None else None
        if logits:
            segments, lengths = cut_segments(windows, settings)
            cnn, tag = net.branches(net.embed(segments, lengths), None if t is None else t[owner])
            out.append(torch.stack([cnn, torch.zeros_like(cnn) if tag is None else tag]).cpu())
            owners.append(owner.cpu() + i)
        else:
            out.append(track_probabilities(net, windows, owner, len(chunk), settings, t).cpu())
    net.train(was_training)
    if logits:
        both = torch.cat(out, dim=1)
        return both[0], both[1], torch.cat(owners)
    return torch.cat(out).numpy() if out else np.zeros((0, net.settings.n_genres))


def labels(clips: Sequence[Clip], genres: Sequence[str]) -> np.ndarray:
    return np.array([list(genres).index(c.genre) for c in clips], dtype=int)


def score(probs: np.ndarray, clips: Sequence[Clip], genres: Sequence[str]) -> dict:
    """Metrics (see metrics.summarise) of probabilities against the clips' genres."""
    y = labels(clips, genres)
    return summarise(confusion_matrix(y, probs.argmax(axis=1), len(genres)), genres)


def nll(probs: np.ndarray, clips: Sequence[Clip], genres: Sequence[str]) -> float:
    """Mean negative log-likelihood of the true genre under the pooled probabilities."""
    y = labels(clips, genres)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean()) if len(y) else 0.0


def baseline_score(train: tuple[Sequence[Clip], Sequence], evaluated: tuple[Sequence[Clip], Sequence],
                   genres: Sequence[str], seed: int) -> dict:
    """The MFCC + logistic-regression baseline fitted on `train`, scored on `evaluated`;
    each is (clips, their log-mel windows)."""
    probs = baseline_probabilities(train[1], labels(train[0], genres), evaluated[1], len(genres), seed)
    return score(probs, evaluated[0], genres)


def margin(model: dict, baseline: dict) -> dict:
    return {"accuracy": model["accuracy"] - baseline["accuracy"],
            "macro_f1": model["macro_f1"] - baseline["macro_f1"]}


def compare(model: dict, train: Sequence[Clip], evaluated: Sequence[Clip], mels: dict, genres: Sequence[str],
            seed: int, teacher_cache=None, model_probs: np.ndarray | None = None) -> dict:
    """The references fitted on the `train` clips and scored on the `evaluated` ones, with
    the model's margins: the MFCC baseline always ("baseline", "margin"); the teacher+LR
    reference ("teacher_reference", "teacher_margin", and with the model's probabilities
    "teacher_agreement": the share of clips where both pick the same genre) when a
    teacher_genres.TeacherCache is given. `mels` maps a clip's path to its log-mel windows."""
    base = baseline_score((train, [mels[c.path] for c in train]),
                          (evaluated, [mels[c.path] for c in evaluated]), genres, seed)
    out = {"baseline": base, "margin": margin(model, base)}
    if teacher_cache is not None:
        from tagger.teacher_genres import teacher_probabilities
        probs = teacher_probabilities([teacher_cache.get(c.path) for c in train], labels(train, genres),
                                      [teacher_cache.get(c.path) for c in evaluated], len(genres), seed)
        ref = score(probs, evaluated, genres)
        out |= {"teacher_reference": ref, "teacher_margin": margin(model, ref)}
        if model_probs is not None:
            out["teacher_agreement"] = float((model_probs.argmax(1) == probs.argmax(1)).mean())
    return out


def report_paths(base: Path) -> dict[str, Path]:
    """folder/model -> folder/model.report.json, model.confusion.png, model.curves.png."""
    return {name: base.with_name(f"{base.name}.{name}") for name in
            ("report.json", "confusion.png", "curves.png", "reliability.png")}


def evaluate_model(data_dir: Path, model_path: Path, part: str = "valid", device: str = "auto",
                   cache_dir: Path | None = None, report_base: Path | None = None,
                   on_clip: Callable[[Clip, str | None], None] = lambda c, e: None,
                   teacher=None) -> dict:
    """Score a checkpoint on one part ("train", "valid", "test" or "all") of the split it was
    trained with (its provenance names it; the artist-filtered one when it does not), with
    the MFCC baseline fitted on that split's training part beside it (and the teacher+LR
    reference when `teacher`, a teacher.Teacher, is given). Writes the report
    and the confusion-matrix figure at report_base (default: beside the checkpoint)."""
    from tagger.checkpoint import load
    from tagger.classify import pick_device
    from tagger.dataset import PARTS, FeatureCache, find_clips, load_features, make_splits, parse_split
    from tagger.recipe import default_cache_dir
    from tagger.teacher import weights_digest

    if part not in (*PARTS, "all"):
        raise UserError(f"unknown part {part!r}; choose one of {', '.join((*PARTS, 'all'))}")
    ckpt = load(model_path)
    if report_base is None:
        folder = model_path.parent if os.access(model_path.parent, os.W_OK) else Path.cwd()
        report_base = folder / f"{model_path.stem}.{part}"
    writable_folder(report_base.parent, "the report")
    dev = pick_device(device)
    found = find_clips(data_dir)
    usable = [c for c in found.clips if c.genre in ckpt.genres]
    cache = FeatureCache(cache_dir or default_cache_dir(), ckpt.features)  # the model's own settings
    clips, mels_list = load_features(usable, cache, on_clip)
    mels = {c.path: m for c, m in zip(clips, mels_list)}
    kind, k = parse_split(str(ckpt.provenance.get("split", "filtered")))
    if kind == "folds":
        raise UserError("this checkpoint came from cross-validation, which has no single split; "
                        "use --split all")
    seed = int(ckpt.provenance.get("seed", 0))
    split = make_splits(clips, kind, k, seed)[0]
    recorded = ckpt.provenance.get("parts")     # the clip names of each part, as trained
    if isinstance(recorded, dict):              # (a random split depends on the clips present)
        split.parts = {p: [c for c in clips if c.name in set(recorded.get(p, []))] for p in PARTS}
    evaluated = clips if part == "all" else split.parts[part]
    if not evaluated and kind == "all":
        raise UserError("this model was trained on every clip (--split all), so nothing is held "
                        "out; --split all scores it on its own training clips")
    if not evaluated:
        raise UserError(f"{data_dir}: none of its clips is in the {part} part of the {split.name} split")
    genres = list(ckpt.genres)
    net = ckpt.build()
    tags = None
    if net.fused:       # the teacher inside the checkpoint, its outputs cached by its weights
        net.teacher.sha256 = weights_digest(net.teacher)
        track_cache = teacher_cache(net.teacher, cache, track=True)
        tags = [track_cache.get(c.path)[0] for c in evaluated]
    probs = predict(net.to(dev), [mels[c.path] for c in evaluated], ckpt.features, dev, tags)
    report = {"model": str(model_path), "model_id": ckpt.model_id, "data_folder": str(data_dir),
              "split": split.name if part != "all" else "all clips", "evaluated_on": part,
              "evaluated_genres": genre_counts(evaluated), "unreadable": len(usable) - len(clips),
              "unlabelled": len(found.unlabelled) + len(found.clips) - len(usable),
              "metrics": score(probs, evaluated, genres)}
    if part in ("valid", "test") and len({c.genre for c in split.train}) > 1:
        report |= compare(report["metrics"], split.train, evaluated, mels, genres, seed,
                          teacher_cache(teacher, cache), probs)
    paths = report_paths(report_base)
    write_json(report, paths["report.json"])
    from tagger.figures import confusion_png
    m = report["metrics"]
    confusion_png(*present_only(m["confusion"], genres),
                  f"{report['split']}, {part}: accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}",
                  paths["confusion.png"])
    report["files"] = [str(paths["report.json"]), str(paths["confusion.png"])]
    return report


def teacher_cache(teacher, features, track: bool = False):
    """The teacher's tag cache beside the feature cache `features` (None without a teacher)."""
    if teacher is None:
        return None
    from tagger.teacher_genres import TeacherCache
    return TeacherCache(features.dir.parent, teacher, features.settings, track)


def present_only(matrix: Sequence[Sequence[int]], genres: Sequence[str]) -> tuple[list, list]:
    """The rows and columns of genres that occur in the truth or the predictions."""
    keep = [i for i, row in enumerate(matrix) if sum(row) or sum(r[i] for r in matrix)]
    return [[matrix[i][j] for j in keep] for i in keep], [genres[i] for i in keep]


def write_json(data: dict, path: Path) -> None:
    """Atomically, so that a report is whole or absent."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def writable_folder(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove it takes a file, before any long work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{folder}: cannot write {what} there ({exc.strerror or exc})") from None
