"""`evaluate`: score a checkpoint on one part of the split it was trained with, in the
report schema of a training run (scoring.score_clips), with the report and its confusion
figure written by tagger.reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tagger.dataset import Clip
from tagger.errors import UserError


def evaluate_model(data_dir: Path, model_path: Path, part: str = "valid", device: str = "auto",
                   cache_dir: Path | None = None, report_base: Path | None = None,
                   on_clip: Callable[[Clip, str | None], None] = lambda c, e: None,
                   teacher=None) -> dict:
    """Score a checkpoint on one part ("train", "valid", "test", or "all": every clip) of the
    split it was trained with (its provenance names it; the artist-filtered one when it does
    not). A held-out part ("valid", "test") is scored beside the MFCC baseline fitted on
    that split's training part (and the teacher+LR reference when `teacher`, a
    teacher.Teacher, is given). Writes the report and the confusion figure at report_base
    (default: reports.default_base; never inside the installed package) and returns the
    report, its "files" listing them."""
    from tagger import __version__
    from tagger.checkpoint import load
    from tagger.classify import pick_device
    from tagger.dataset import PARTS, FeatureCache, find_clips, load_features, make_splits, parse_split
    from tagger.recipe import default_cache_dir
    from tagger.reports import data_section, default_base, report_paths, write_report
    from tagger.scoring import predict, score_clips, teacher_cache
    from tagger.teacher import weights_digest

    if part not in (*PARTS, "all"):
        raise UserError(f"unknown part {part!r}; choose one of {', '.join((*PARTS, 'all'))}")
    model_path = Path(model_path)
    base = Path(report_base) if report_base is not None else default_base(model_path, part)
    report_paths(base)                          # a folder that takes the report, before the work
    ckpt = load(model_path)
    kind, k = parse_split(str(ckpt.provenance.get("split", "filtered")))
    if kind == "all" and part in ("valid", "test"):       # said before any clip is read
        raise UserError(nothing_held_out(model_path, data_dir, part))
    dev = pick_device(device)
    found = find_clips(data_dir)
    usable = [c for c in found.clips if c.genre in ckpt.genres]
    cache = FeatureCache(cache_dir or default_cache_dir(), ckpt.features)  # the model's own settings
    failed: dict[str, str] = {}

    def read(clip: Clip, error: str | None) -> None:
        if error:
            failed[clip.path] = error
        on_clip(clip, error)

    clips, mels_list = load_features(usable, cache, read)
    mels = {c.path: m for c, m in zip(clips, mels_list)}
    if kind == "folds":
        raise UserError("this checkpoint came from cross-validation, which has no single split; "
                        "use --part all")
    seed = int(ckpt.provenance.get("seed", 0))
    split = make_splits(clips, kind, k, seed)[0]
    recorded = ckpt.provenance.get("parts")     # the clip names of each part, as trained
    if isinstance(recorded, dict):              # (a random split depends on the clips present)
        split.parts = {p: [c for c in clips if c.name in set(recorded.get(p, []))] for p in PARTS}
    evaluated = clips if part == "all" else split.parts[part]
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
    held_out = part in ("valid", "test")
    report = {"tagger_version": __version__, "checkpoint": str(model_path), "model_id": ckpt.model_id,
              "data": data_section(data_dir, found, usable, failed),
              "split": split.name if part != "all" else "all clips", "evaluated_on": part,
              **score_clips(probs, evaluated, genres, split.train if held_out else None, mels, seed,
                            teacher_cache(teacher, cache))}
    trained_on = {c.path for c in split.train}
    if part in ("all", "train") and (n := sum(c.path in trained_on for c in evaluated)):
        report["training_clips_included"] = n
    write_report(report, base)
    return report


def nothing_held_out(model_path: Path, data_dir: Path, part: str) -> str:
    """Why a model trained on every clip (--split all) has no `part`, and what to run instead."""
    from tagger.modelfile import SHIPPED, default_model_path
    shipped = next((name for name in SHIPPED if (p := default_model_path(name)) is not None
                    and p.resolve() == model_path.resolve()), None)
    what = f"the shipped {shipped} model" if shipped else "this model"
    card = " (models/MODEL_CARD.md gives the figures of its recipe)" if shipped else ""
    return (f"{what} was trained on every clip (--split all), so no {part} clip is held out to "
            f"score it on{card}; to measure a recipe, train a model that holds clips out "
            f"(`tagger train {data_dir} --out mine.pt`) and evaluate that with --model mine.pt, "
            f"or pass --part all to score this one on its own training clips")
