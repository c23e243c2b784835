"""PNG figures for training and evaluation reports (matplotlib, no display needed)."""

from __future__ import annotations

import os
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


def timeline_png(timeline, path: Path) -> None:
    """A tagger.timeline.Timeline as a heatmap, genre (best overall first) by time, each
    window centred on its middle; silent windows left blank. Replaces `path` whole."""
    from matplotlib.ticker import FuncFormatter
    from tagger.atomic import atomic_file
    from tagger.errors import UserError
    from tagger.timeline import clock, grid
    plt = _pyplot()
    cells, _ = grid(timeline)
    order = [timeline.genres.index(g) for g in timeline.overall] or list(range(len(timeline.genres)))
    centres = [(w.start + w.end) / 2 for w in timeline.windows]
    edges = [0.0, *((a + b) / 2 for a, b in zip(centres, centres[1:])), timeline.duration]
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.32 * len(order)), dpi=110)
    mesh = ax.pcolormesh(edges, np.arange(len(order) + 1), np.ma.masked_invalid(cells[order]),
                         cmap="magma", vmin=0, vmax=1)
    ax.set_yticks(np.arange(len(order)) + 0.5, [DISPLAY_NAMES.get(timeline.genres[i], timeline.genres[i])
                                                for i in order])
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: clock(x)))
    ax.set_xlabel("time")
    fig.colorbar(mesh, ax=ax, label="probability", fraction=0.03, pad=0.01)
    top = timeline.genre
    name = (os.path.basename(timeline.path).encode("utf-8", "surrogateescape")
            .decode("utf-8", "replace").replace("$", r"\$"))     # not mathtext
    ax.set_title(f"{name}: {DISPLAY_NAMES.get(top, top) if top else 'silent'}"
                 f" overall ({timeline.window_seconds:g} s windows every {timeline.hop_seconds:g} s)",
                 fontsize=9)
    fig.tight_layout()
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png")
    except OSError as exc:
        raise UserError(f"cannot write the figure ({exc.strerror or exc}); pass another --png",
                        str(path)) from None
    finally:
        plt.close(fig)
