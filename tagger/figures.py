"""PNG figures for training and evaluation reports (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tagger.genres import DISPLAY_NAMES


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def confusion_png(matrix: Sequence[Sequence[int]], genres: Sequence[str], title: str,
                  path: Path) -> None:
    """Counts in each cell, rows (true genre) shaded by recall."""
    plt = _pyplot()
    m = np.asarray(matrix)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    names = [DISPLAY_NAMES.get(g, g) for g in genres]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(genres), 0.8 + 0.55 * len(genres)), dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(genres)):
        for j in range(len(genres)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(genres)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(genres)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves_png(histories: Sequence[Sequence[dict]], labels: Sequence[str], path: Path) -> None:
    """Training loss, validation loss and validation accuracy per epoch, one line per run."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for history, label, colour in zip(histories, labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9):
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["train_loss"] for h in history], color=colour, label=f"{label} train")
        if history and history[0]["valid_loss"] is not None:        # --split all has none
            loss_ax.plot(epochs, [h["valid_loss"] for h in history], color=colour, linestyle="--",
                         label=f"{label} valid")
            acc_ax.plot(epochs, [h["valid_accuracy"] for h in history], color=colour, label=label)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss (train solid, valid dashed)")
    acc_ax.set(xlabel="epoch", ylabel="track accuracy", title="validation accuracy", ylim=(0, 1))
    if len(labels) <= 5:
        loss_ax.legend(fontsize=7)
        if acc_ax.lines:
            acc_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def reliability_png(calibration: dict, title: str, path: Path) -> None:
    """Accuracy against confidence per bin of the top probability (dot area: tracks in the
    bin), before and after the calibration (calibrate.calibration_report); the diagonal is
    perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    weight = calibration.get("cnn_weight", 1.0)
    fitted = f"T = {calibration['temperature']:.2f}" + (f", CNN weight {weight:g}" if weight != 1 else "")
    for key, label, colour in (("before", "T = 1", "tab:red"), ("after", fitted, "tab:blue")):
        rows = [b for b in calibration[key]["bins"] if b["tracks"]]
        ax.plot([b["confidence"] for b in rows], [b["accuracy"] for b in rows], color=colour,
                label=f"{label}: ECE {calibration[key]['ece']:.3f}")
        ax.scatter([b["confidence"] for b in rows], [b["accuracy"] for b in rows], color=colour,
                   s=[12 + 6 * b["tracks"] for b in rows], zorder=3)     # area: tracks in bin
    ax.set(xlabel="top probability (mean in bin)", ylabel="accuracy in bin", xlim=(0, 1),
           ylim=(0, 1.02))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
