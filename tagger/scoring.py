"""Scoring a model on clips, the one path `train` (each run's held-out part) and `evaluate`
share: its track probabilities (the same window pooling as `scan`), and the scoring block of
both reports, beside the MFCC baseline and the teacher+LR reference fitted on the training
clips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tagger.baseline import baseline_probabilities
from tagger.classify import track_probabilities
from tagger.dataset import Clip, genre_counts
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


def score_clips(probs: np.ndarray, evaluated: Sequence[Clip], genres: Sequence[str],
                train: Sequence[Clip] | None = None, mels: dict | None = None, seed: int = 0,
                teacher=None) -> dict:
    """The scoring block of a report, the same keys in a training run and in `evaluate`:
    "evaluated_genres" (clips per genre) and "model" (metrics.summarise of `probs`, (n_clips,
    n_genres): accuracy, macro F1, per-genre precision/recall/F1, confusion). Given the
    `train` clips (two genres or more) and `mels` (a clip's path -> its log-mel windows),
    also the references fitted on them and the model's margins over each (accuracy, macro
    F1): "baseline" and "margin" (MFCC + logistic regression); with `teacher` (a
    teacher_genres.TeacherCache), "teacher_reference", "teacher_margin" and
    "teacher_agreement" (the share of clips where the model and the reference agree)."""
    model = score(probs, evaluated, genres)
    out = {"evaluated_genres": genre_counts(evaluated), "model": model}
    if train is None or len({c.genre for c in train}) < 2:
        return out

    def versus(ref_probs: np.ndarray) -> tuple[dict, dict]:
        ref = score(ref_probs, evaluated, genres)
        return ref, {k: model[k] - ref[k] for k in ("accuracy", "macro_f1")}

    y = labels(train, genres)
    out["baseline"], out["margin"] = versus(baseline_probabilities(
        [mels[c.path] for c in train], y, [mels[c.path] for c in evaluated], len(genres), seed))
    if teacher is not None:
        from tagger.teacher_genres import teacher_probabilities
        ref = teacher_probabilities([teacher.get(c.path) for c in train], y,
                                    [teacher.get(c.path) for c in evaluated], len(genres), seed)
        out["teacher_reference"], out["teacher_margin"] = versus(ref)
        out["teacher_agreement"] = float((probs.argmax(1) == ref.argmax(1)).mean())
    return out


def teacher_cache(teacher, features, track: bool = False):
    """The teacher's tag cache beside the feature cache `features` (None without a teacher)."""
    if teacher is None:
        return None
    from tagger.teacher_genres import TeacherCache
    return TeacherCache(features.dir.parent, teacher, features.settings, track)
