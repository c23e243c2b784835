"""Calibration: a temperature fitted on held-out tracks, the "uncertain" threshold, and how
well calibrated probabilities are (expected calibration error, reliability diagram).

Temperature scaling (Guo et al. 2017) divides every window's logits by one number T before
the softmax; the track's probabilities stay the mean over its windows, as `scan` computes
them. T is the one minimising the held-out tracks' negative log-likelihood, so it changes
how sure the model says it is, and almost never which genre comes first.
"""

from __future__ import annotations

import numpy as np
import torch

from tagger.classify import pool_windows
from tagger.recipe import UNCERTAIN_BELOW  # noqa: F401 - re-exported
BINS = 10


def track_nll(logits: torch.Tensor, owner: torch.Tensor, y: np.ndarray, temperature: float) -> float:
    probs = pool_windows(logits, owner, len(y), temperature).numpy()
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).mean())


def fit_fusion(cnn: torch.Tensor, tag: torch.Tensor, owner: torch.Tensor, y: np.ndarray
               ) -> tuple[float, float]:
    """The fused model's (cnn_weight, temperature) minimising the held-out tracks' NLL of
    (w * cnn + tag) / T: w on a grid of 0, 0.1 ... 1, each with its best T."""
    fits = [(w, fit_temperature(w * cnn + tag, owner, y)) for w in np.linspace(0.0, 1.0, 11)]
    w, t = min(fits, key=lambda f: track_nll(f[0] * cnn + tag, owner, y, f[1]))
    return round(float(w), 2), t


def fit_temperature(logits: torch.Tensor, owner: torch.Tensor, y: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the held-out tracks' NLL: a log-spaced grid, then a
    finer one around its best point (one parameter: no optimiser needed)."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = grid[int(np.argmin([track_nll(logits, owner, y, t) for t in grid]))]
    fine = best * np.exp(np.linspace(-0.05, 0.05, 41))
    best = fine[int(np.argmin([track_nll(logits, owner, y, t) for t in fine]))]
    return round(float(np.clip(best, 0.05, 20.0)), 4)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict:
    """Expected calibration error of the top probability (equal-width bins over [0, 1],
    weighted by their share of tracks), with each bin's count, confidence and accuracy."""
    top = probs.max(axis=1)
    right = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(top, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        conf = float(top[inside].mean()) if n else None
        acc = float(right[inside].mean()) if n else None
        if n:
            ece += n / len(y) * abs(acc - conf)
        rows.append({"from": float(edges[b]), "to": float(edges[b + 1]), "tracks": n,
                     "confidence": conf, "accuracy": acc})
    return {"ece": float(ece), "bins": rows}


def certainty_split(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """How the threshold divides the tracks: how many are uncertain, and the accuracy of
    each side (None for an empty side)."""
    top, right = probs.max(axis=1), probs.argmax(axis=1) == y
    sure = top >= threshold
    return {"threshold": threshold, "uncertain": int((~sure).sum()), "tracks": len(y),
            "accuracy_certain": float(right[sure].mean()) if sure.any() else None,
            "accuracy_uncertain": float(right[~sure].mean()) if (~sure).any() else None}


def probabilities(cnn: torch.Tensor, tag: torch.Tensor, owner: torch.Tensor, n_tracks: int,
                  temperature: float, cnn_weight: float = 1.0) -> torch.Tensor:
    """Tracks' probabilities from the branches' window logits, as the model computes them
    (GenreCRNN.forward, then classify.pool_windows); `tag` is zeros unless fused."""
    return pool_windows(cnn_weight * cnn + tag, owner, n_tracks, temperature)


def calibration_report(cnn: torch.Tensor, tag: torch.Tensor, owner: torch.Tensor, y: np.ndarray,
                       temperature: float, threshold: float, cnn_weight: float = 1.0) -> dict:
    """Before (T = 1, the branches' plain sum) and after (the fitted T and weight) on the
    same tracks; `tag` is zeros for a model that is not fused."""
    raw, fitted = cnn + tag, cnn_weight * cnn + tag
    before = probabilities(cnn, tag, owner, len(y), 1.0).numpy()
    after = probabilities(cnn, tag, owner, len(y), temperature, cnn_weight).numpy()
    return {"temperature": temperature, "cnn_weight": cnn_weight, "tracks": len(y),
            "accuracy_before": float((before.argmax(1) == y).mean()),
            "accuracy_after": float((after.argmax(1) == y).mean()),
            "nll_before": track_nll(raw, owner, y, 1.0),
            "nll_after": track_nll(fitted, owner, y, temperature),
            "before": reliability(before, y), "after": reliability(after, y),
            "uncertain": certainty_split(after, y, threshold)}
