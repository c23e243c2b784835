"""The report files of `train` and `evaluate`: where they go (never inside the installed
package), the JSON written whole or not at all, and the PNG figures beside it.

A report at folder/name is folder/name.report.json with name.confusion.png (what was scored),
and for training name.curves.png and name.reliability.png."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tagger.atomic import atomic_file
from tagger.dataset import Clip, Found, genre_counts
from tagger.errors import UserError

PACKAGE = Path(__file__).resolve().parent       # the installed tagger package: no reports there
FILES = ("report.json", "confusion.png", "curves.png", "reliability.png")


def inside_package(folder: Path) -> bool:
    return Path(folder).resolve().is_relative_to(PACKAGE)


def report_paths(base: Path, what: str = "the report") -> dict[str, Path]:
    """folder/name -> {"report.json": folder/name.report.json, "confusion.png": ...}, once the
    folder is known to take them (created if needed), before any long work starts. Refuses a
    folder inside the installed package (the shipped models live there)."""
    base = Path(base)
    if inside_package(base.parent):
        raise UserError(f"{base.parent}: inside the installed tagger package, where {what} may "
                        "not go; choose another folder")
    writable_folder(base.parent, what)
    return {name: base.with_name(f"{base.name}.{name}") for name in FILES}


def default_base(model_path: Path, part: str) -> Path:
    """Where `evaluate` reports on a checkpoint by default: MODEL.PART beside it, else (its
    folder not writable, or inside the installed package) in the current folder."""
    folder = Path(model_path).parent
    if inside_package(folder) or not os.access(folder, os.W_OK):
        folder = Path.cwd()
    return folder / f"{Path(model_path).stem}.{part}"


def data_section(folder: Path, found: Found, used: Sequence[Clip], failed: dict[str, str]) -> dict:
    """A report's "data": the clips of `folder` used, by genre, and those left out: unreadable
    (path -> reason), unlabelled (no genre, or one the model does not know), duplicates."""
    kept = [c for c in used if c.path not in failed]
    used_paths = {c.path for c in used}
    return {"folder": str(folder), "clips": len(kept), "genres": genre_counts(kept),
            "unreadable": failed,
            "unlabelled": found.unlabelled + [c.path for c in found.clips if c.path not in used_paths],
            "duplicates": found.duplicates}


def write_report(report: dict, base: Path) -> list[str]:
    """Write `report` (a training report, or an evaluation one) and its figures at `base`;
    report["files"] (not in the JSON) lists what was written."""
    from tagger.figures import confusion_png, curves_png, reliability_png
    paths = report_paths(base)
    write_json(report, paths["report.json"])
    files = [paths["report.json"]]
    runs = report.get("runs", [])
    scored = report if not runs else runs[0] if len(runs) == 1 else None
    if "cross_validation" in report:
        m = report["cross_validation"]["pooled"]
        title = f"{report['split']}: test folds pooled, accuracy {m['accuracy']:.3f}"
    elif scored is not None and "model" in scored:
        m = scored["model"]
        title = (f"{scored['split']}, {scored['evaluated_on']}: accuracy {m['accuracy']:.3f}, "
                 f"macro F1 {m['macro_f1']:.3f}")
    else:
        m = None                            # --split all: nothing held out
    if m is not None:
        confusion_png(*present_only(m["confusion"], m["genres"]), title, paths["confusion.png"])
        files.append(paths["confusion.png"])
    if runs:
        curves_png([r["history"] for r in runs], [r["split"] for r in runs], paths["curves.png"])
        files.append(paths["curves.png"])
    if len(runs) == 1 and "calibration" in runs[0]:
        c = runs[0]["calibration"]
        reliability_png(c, f"{runs[0]['split']}: {c['tracks']} {c['measured_on']} clips "
                        f"(calibration fitted on {c['fitted_on']})", paths["reliability.png"])
        files.append(paths["reliability.png"])
    report["files"] = [str(f) for f in files]
    return report["files"]


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


def read_calibration(report: Path | None) -> tuple[float, float] | None:
    """(temperature, cnn_weight) of a training report's single run, or None."""
    if report is None:
        return None
    try:
        c = json.loads(Path(report).read_text())["runs"][0]["calibration"]
        temperature, weight = float(c["temperature"]), float(c["cnn_weight"])
        if not (0.05 <= temperature <= 20 and 0 <= weight <= 1):
            raise ValueError("out of range")
        return temperature, weight
    except OSError as exc:
        raise UserError(f"{report}: cannot read the report ({exc.strerror})") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{report}: not the .report.json of a training run with a calibration "
                        "(one made with --split filtered or random)") from None
