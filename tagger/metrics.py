"""Evaluation arithmetic on track-level predictions: pure functions over label arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def summarise(matrix: np.ndarray, genres: Sequence[str]) -> dict:
    """Accuracy, macro F1 and per-genre precision/recall/F1/support from a confusion matrix.

    Macro F1 averages over the genres that occur in the truth or in the predictions (as
    scikit-learn does by default); a genre never predicted has precision 0, one absent from
    the truth recall 0.
    """
    matrix = np.asarray(matrix)
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    total = int(matrix.sum())
    return {
        "tracks": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_genre": {g: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, g in enumerate(genres) if present[i]},
        "confusion": matrix.tolist(),
        "genres": list(genres),
    }


def spread(values: Sequence[float]) -> dict:
    """Mean, standard deviation (ddof 1), min and max across folds."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}
