"""Training the CNN-RNN on a GTZAN-style folder, readable top to bottom.

1. find the clips and make the split(s) (artist-filtered, random, or K folds);
2. log-mel windows of every clip from the feature cache: the very features `scan` computes;
3. per run: per-band normalisation statistics from the training clips; each epoch draws
   random crops of consecutive segments from every training clip, augments them (random
   gain, SpecAugment-style frequency and time masks, mixup), and takes AdamW steps with
   class-balanced cross-entropy, a warm-up and a cosine schedule; after each epoch the
   validation clips are classified whole (as `scan` does) and training stops when the
   validation track accuracy has not improved for `patience` epochs (counted, and the best
   epoch chosen, from `min_epochs` on: early epochs at a high learning rate give lucky
   spikes on a small validation set);
4. the best epoch's weights become the checkpoint; the report compares them with the MFCC
   baseline on the same split (and with the teacher+LR reference, given a teacher).

After every epoch the whole training state goes to `<out>.resume` (atomically), so that
`--resume` continues an interrupted run exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tagger import __version__
from tagger.atomic import atomic_torch_save
from tagger.checkpoint import new_checkpoint, save
from tagger.classify import pick_device
from tagger.dataset import (Clip, FeatureCache, Found, Split, check_genres, describe_missing,
                            find_clips, genre_counts, load_features, make_splits, missing_genres)
from tagger.errors import UserError
from tagger.features import FeatureSettings
from tagger.genres import GENRES
from tagger.metrics import spread, summarise
from tagger.model import GenreCRNN, ModelSettings
from tagger.calibrate import (UNCERTAIN_BELOW, calibration_report, fit_fusion, fit_temperature,
                              probabilities)
from tagger.recipe import TrainSettings, default_cache_dir
from tagger.reports import data_section, report_paths, write_report
from tagger.scoring import labels, nll, predict, score, score_clips, teacher_cache

STATE_FORMAT = "tagger-train-state"


class Reporter:
    """What training tells its caller; the CLI draws it with rich. Defaults do nothing."""

    def features(self, done: int, total: int, clip: Clip, error: str | None) -> None: ...
    def run_start(self, index: int, runs: int, split: Split, epochs: int, start_epoch: int) -> None: ...
    def epoch(self, row: dict, improved: bool) -> None: ...
    def run_end(self, result: dict) -> None: ...
    def note(self, text: str) -> None: ...


# --- batches --------------------------------------------------------------------------------

def random_crop(mel: torch.Tensor, n_segments: int, frames: int, gen: torch.Generator) -> torch.Tensor:
    """A random run of up to n_segments consecutive segments from one window's log-mel
    (n_mels, F) at any frame offset -> (n_mels, n * frames), n >= 1."""
    n = max(1, min(n_segments, mel.shape[1] // frames))
    offset = int(torch.randint(0, mel.shape[1] - n * frames + 1, (1,), generator=gen))
    return mel[:, offset: offset + n * frames]


def augment(crop: torch.Tensor, fill: torch.Tensor, ts: TrainSettings, floor: float,
            gen: torch.Generator) -> torch.Tensor:
    """Random gain (in dB, kept above the floor), then frequency and time masks set to the
    per-band mean `fill` (n_mels,), which the model's normalisation maps to zero."""
    x = crop.clone()
    if ts.gain_db:
        x = (x + (torch.rand(1, generator=gen).item() * 2 - 1) * ts.gain_db).clamp_(min=floor)
    n_mels, n_frames = x.shape
    for _ in range(ts.freq_masks):
        width = int(torch.randint(0, ts.freq_mask_bands + 1, (1,), generator=gen))
        start = int(torch.randint(0, n_mels - width + 1, (1,), generator=gen))
        x[start: start + width] = fill[start: start + width, None]
    for _ in range(ts.time_masks):
        width = int(torch.randint(0, min(ts.time_mask_frames, n_frames // 4) + 1, (1,), generator=gen))
        start = int(torch.randint(0, n_frames - width + 1, (1,), generator=gen))
        x[:, start: start + width] = fill[:, None]
    return x


def make_batch(crops: Sequence[torch.Tensor], fs: FeatureSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops (n_mels, n_i * segment_frames) -> segments (B, S, n_mels, frames), lengths (B,)."""
    f = fs.segment_frames
    lengths = torch.tensor([c.shape[1] // f for c in crops])
    batch = crops[0].new_full((len(crops), int(lengths.max()), crops[0].shape[0], f), fs.db_floor)
    for i, c in enumerate(crops):
        batch[i, : lengths[i]] = c.reshape(c.shape[0], -1, f).permute(1, 0, 2)
    return batch, lengths


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def class_weights(y: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the classes present (absent ones: 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def normalisation(mels: Sequence[Sequence[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and standard deviation (n_mels,) over every frame of the given clips."""
    frames = torch.cat([w for clip in mels for w in clip], dim=1).double()
    return frames.mean(1).float(), frames.std(1).clamp(min=1e-3).float()


# --- one run (one split) ----------------------------------------------------------------------

@dataclass
class RunState:
    """Everything a run needs to continue after an interruption."""
    epoch: int = 0                       # epochs completed
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "accuracy": -1.0, "loss": math.inf})
    best_state: dict | None = None
    stale: int = 0
    seconds: float = 0.0


@dataclass
class Examples:
    """What a run trains on: per example its log-mel windows and genre (-1: unlabelled);
    its track tags (the fused model's second input, distillation's auxiliary target); and
    soft genre targets (distillation: the teacher's, through the genre map)."""
    mels: list[list[torch.Tensor]]
    y: np.ndarray
    tags: torch.Tensor | None = None
    soft: torch.Tensor | None = None


def label_loss(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor, lam: float,
               weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy against the mix of two labels (lam = 1: no mixup);
    unlabelled examples (-1) count for nothing."""
    def ce(target: torch.Tensor) -> torch.Tensor:
        if not bool((target >= 0).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, weight=weights, ignore_index=-1)
    return lam * ce(y) + (1 - lam) * ce(y_mix) if lam != 1.0 else ce(y)


def objective(net: GenreCRNN, aux: torch.nn.Module | None, x: torch.Tensor, lengths: torch.Tensor,
              tags: torch.Tensor | None, soft: torch.Tensor | None, y: torch.Tensor,
              y_mix: torch.Tensor, lam: float, weights: torch.Tensor, ts: TrainSettings) -> torch.Tensor:
    """The loss of one (mixed) batch. Labels only: cross-entropy; the fused model adds each
    branch's own (so that neither leans on the other). Distillation (soft targets): the
    teacher's softened genre probabilities at ts.distil_temperature (Hinton et al.'s T^2
    scaling), plus ts.label_weight x the labels' cross-entropy, plus ts.tag_weight x the
    auxiliary head's binary cross-entropy against the teacher's 50 tags."""
    pooled = net.embed(x, lengths)
    cnn, tag = net.branches(pooled, tags if net.fused else None)
    if soft is None:
        if tag is None:
            return label_loss(cnn, y, y_mix, lam, weights)
        return sum(label_loss(z, y, y_mix, lam, weights) * w for z, w in
                   ((cnn + tag, 1.0), (cnn, ts.branch_loss), (tag, ts.branch_loss)))
    logits = cnn if tag is None else cnn + tag
    t = ts.distil_temperature
    kd = -(soft * F.log_softmax(logits / t, dim=-1)).sum(-1).mean() * t * t
    loss = kd + ts.label_weight * label_loss(logits, y, y_mix, lam, weights)
    if aux is not None:
        loss = loss + ts.tag_weight * F.binary_cross_entropy_with_logits(aux(net.dropout(pooled)), tags)
    return loss


def train_run(split: Split, mels: dict[str, list[torch.Tensor]], fs: FeatureSettings,
              ms: ModelSettings, ts: TrainSettings, device: torch.device, run_index: int,
              reporter: Reporter, saved: dict | None, save_state,
              tags: dict[str, torch.Tensor] | None = None, teacher_state: dict | None = None,
              examples: Examples | None = None) -> tuple[GenreCRNN, RunState]:
    """Train on split.train (or on `examples` built from it), early-stopping on split.valid;
    returns the best epoch's model. A fused model (ms.teacher_channels) also takes `tags`
    (a clip's path -> its track tags) and starts from the teacher's weights
    `teacher_state`, which stay frozen. Distillation examples (with soft targets) also
    train an auxiliary tag head, which the checkpoint leaves out."""
    genres = list(GENRES)
    valid_clips = split.valid
    valid_mels = [mels[c.path] for c in valid_clips]
    if examples is None:
        examples = Examples([mels[c.path] for c in split.train], labels(split.train, genres),
                            torch.stack([tags[c.path] for c in split.train]) if tags else None)

    torch.manual_seed(ts.seed * 1000 + run_index)
    gen = torch.Generator().manual_seed(ts.seed * 1000 + run_index)
    net = GenreCRNN(ms)
    mean, std = normalisation(examples.mels)
    net.norm_mean.copy_(mean)
    net.norm_std.copy_(std)
    valid_tags = None
    if net.fused:
        net.teacher.load_state_dict(teacher_state)
        valid_tags = [tags[c.path] for c in valid_clips]
        net.tag_mean.copy_(examples.tags.mean(0))
        net.tag_std.copy_(examples.tags.std(0).clamp(min=1e-3))
    aux = (torch.nn.Linear(net.head.in_features, examples.tags.shape[1])
           if examples.soft is not None else None)
    trained = torch.nn.ModuleList([net] + ([aux] if aux is not None else [])).to(device)
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=ts.lr,
                            weight_decay=ts.weight_decay)
    weights = class_weights(examples.y[examples.y >= 0], len(genres)).to(device)
    n = len(examples.y)
    steps_per_epoch = math.ceil(n * ts.crops_per_clip / ts.batch_size)
    total_steps = steps_per_epoch * ts.epochs

    state = RunState()
    if saved is not None:
        trained.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state = RunState(saved["epoch"], saved["history"], saved["best"], saved["best_state"],
                         saved["stale"], saved["seconds"])

    while state.epoch < ts.epochs and state.stale < ts.patience:
        started = time.perf_counter()
        trained.train()
        order = torch.randperm(n * ts.crops_per_clip, generator=gen) % n
        total_loss, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * ts.batch_size: (step + 1) * ts.batch_size].tolist()
            if len(idx) < 2:
                continue                                    # batch norm needs two crops
            crops = []
            for i in idx:
                windows = examples.mels[i]
                w = windows[int(torch.randint(0, len(windows), (1,), generator=gen))]
                crop = random_crop(w, ts.crop_segments, fs.segment_frames, gen)
                crops.append(augment(crop, mean, ts, fs.db_floor, gen))
            x, lengths = make_batch(crops, fs)
            x = x.to(device)
            y = torch.as_tensor(examples.y[idx], device=device)
            for g in opt.param_groups:
                g["lr"] = lr_at(state.epoch * steps_per_epoch + step, total_steps,
                                ts.warmup_epochs * steps_per_epoch, ts.lr)
            t = examples.tags[idx].to(device) if examples.tags is not None else None
            q = examples.soft[idx].to(device) if examples.soft is not None else None
            lam, perm = 1.0, torch.arange(len(idx))
            if ts.mixup_alpha > 0:
                lam = float(torch.distributions.Beta(ts.mixup_alpha, ts.mixup_alpha).sample())
                lam = max(lam, 1 - lam)
                perm = torch.randperm(len(idx), generator=gen)
                x = lam * x + (1 - lam) * x[perm.to(device)]
                lengths = torch.maximum(lengths, lengths[perm])
                t, q = (None if v is None else lam * v + (1 - lam) * v[perm.to(device)] for v in (t, q))
            loss = objective(net, aux, x, lengths, t, q, y, y[perm.to(device)], lam, weights, ts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)

        row = {"epoch": state.epoch + 1, "train_loss": total_loss / max(seen, 1),
               "valid_loss": None, "valid_accuracy": None, "valid_macro_f1": None,
               "lr": opt.param_groups[0]["lr"]}
        if valid_clips:
            probs = predict(net, valid_mels, fs, device, valid_tags)
            metrics = score(probs, valid_clips, genres)
            row |= {"valid_loss": nll(probs, valid_clips, genres), "valid_accuracy": metrics["accuracy"],
                    "valid_macro_f1": metrics["macro_f1"]}
        row["seconds"] = time.perf_counter() - started
        state.epoch += 1
        state.seconds += row["seconds"]
        state.history.append(row)
        if not valid_clips:         # --split all: nothing to stop on; the last epoch is kept
            improved = state.epoch == ts.epochs
        else:
            improved = (state.epoch >= min(ts.min_epochs, ts.epochs) and (row["valid_accuracy"], -row["valid_loss"])
                        > (state.best["accuracy"], -state.best["loss"]))
        if improved:
            state.best = {"epoch": row["epoch"], "accuracy": row["valid_accuracy"] or 0.0,
                          "loss": row["valid_loss"] or 0.0}
            state.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            state.stale = 0
        elif valid_clips and state.epoch >= ts.min_epochs:
            state.stale += 1
        save_state({"model": trained.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "epoch": state.epoch, "history": state.history,
                    "best": state.best, "best_state": state.best_state, "stale": state.stale,
                    "seconds": state.seconds})
        reporter.epoch(row, improved)

    if state.best_state is not None:
        net.load_state_dict(state.best_state)
    return net.cpu().eval(), state


# --- distillation -----------------------------------------------------------------------------

def view_bank(clips: Sequence[Clip], folders: Sequence[Path], teacher, cache: FeatureCache,
              fs: FeatureSettings, ts: TrainSettings, reporter: Reporter) -> tuple[dict, list[str]]:
    """The views of every labelled clip and of every readable audio file in `folders`
    (path -> distil.Views), and those files' paths."""
    from tagger.crawl import crawl
    from tagger.decode import DecodeError
    from tagger.distil import ViewBank
    extra = [c.path for c in crawl(folders) if c.error is None]
    if not extra:
        raise UserError(f"{', '.join(map(str, folders))}: no audio files for --unlabelled")
    bank = ViewBank(cache.dir.parent, teacher, fs, ts.views)
    reporter.note(f"Views: {ts.views} of each of {len(clips)} clips and {len(extra)} unlabelled "
                  "files, the teacher run on each (cached for later runs).")
    views, kept, started = {}, [], time.perf_counter()
    for n, path in enumerate([c.path for c in clips] + extra, start=1):
        try:
            views[path] = bank.get_views(path)
        except (DecodeError, OSError) as exc:
            reporter.note(f"{path}: left out ({getattr(exc, 'reason', None) or exc})")
            continue
        if n > len(clips):
            kept.append(path)
        if n % 100 == 0:
            reporter.note(f"  {n} files, {time.perf_counter() - started:.0f} s")
    return views, kept


def distillation_examples(split: Split, views: dict, extra: Sequence[str], ts: TrainSettings) -> Examples:
    """Every view of the split's training clips (labelled) and of the unlabelled files, with
    the teacher's tags and its soft genre targets through the genre map fitted on the
    training clips' clean views alone."""
    from tagger.distil import genre_map, soft_targets
    y_train = labels(split.train, GENRES)
    clean = np.stack([views[c.path].tags[0].numpy() for c in split.train])
    to_log_probs = genre_map(clean, y_train, len(GENRES), ts.seed)
    mels, ys, view_tags = [], [], []
    for path, label in [*zip((c.path for c in split.train), y_train), *((p, -1) for p in extra)]:
        v = views[path]
        mels += v.mels
        ys += [int(label)] * len(v.mels)
        view_tags.append(v.tags)
    all_tags = torch.cat(view_tags)
    soft = soft_targets(to_log_probs(all_tags.numpy()), ts.distil_temperature)
    return Examples(mels, np.array(ys), all_tags, soft)


# --- calibration ---------------------------------------------------------------------------

def branch_logits(net: GenreCRNN, clips: Sequence[Clip], mels: dict, tags: dict | None,
                  fs: FeatureSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clips' window logits of each branch and their owners (scoring.predict's
    logits=True): what calibration fits and what the report's probabilities come from."""
    return predict(net, [mels[c.path] for c in clips], fs, torch.device("cpu"),
                   None if tags is None else [tags[c.path] for c in clips], logits=True)


def calibrated(net: GenreCRNN, valid: Sequence[Clip], logits: tuple | None,
               calibration: tuple[float, float] | None, uncertain_below: float) -> ModelSettings:
    """The net's settings with its temperature, and for a fused model its CNN-RNN branch's
    weight, fitted on the validation clips' `logits` when there are any (else
    `calibration`: (temperature, weight), or none), and the uncertain threshold."""
    weight, temperature = 1.0, 1.0
    if logits is not None:
        cnn, tag, owner = logits
        y = labels(valid, GENRES)
        if net.fused:
            weight, temperature = fit_fusion(cnn, tag, owner, y)
        else:
            temperature = fit_temperature(cnn, owner, y)
    elif calibration:
        temperature, weight = calibration
    return dataclasses.replace(net.settings, temperature=temperature, uncertain_below=uncertain_below,
                               cnn_weight=weight if net.fused else 1.0)


# --- the whole job ------------------------------------------------------------------------------

def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def _job_key(clips: Sequence[Clip], split_desc: str, ts: TrainSettings, fs: FeatureSettings,
             ms: ModelSettings, more: Sequence = ()) -> str:
    text = json.dumps([[c.name for c in clips], split_desc, dataclasses.asdict(ts),
                       dataclasses.asdict(fs), dataclasses.asdict(ms), list(more)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train(data_dir: Path, out: Path, split: str = "filtered", folds: int = 5,
          ts: TrainSettings = TrainSettings(), fs: FeatureSettings = FeatureSettings(),
          ms: ModelSettings = ModelSettings(), device: str = "auto", cache_dir: Path | None = None,
          resume: bool = False, reporter: Reporter = Reporter(), teacher=None,
          calibration: tuple[float, float] | None = None, uncertain_below: float = UNCERTAIN_BELOW,
          unlabelled: Sequence[Path] = ()) -> dict:
    """Train (one split) or cross-validate (folds); returns the report, which is also
    written beside `out` with its figures. Only a single-split run writes a checkpoint.
    With `teacher` (a teacher.Teacher), each run's report has the teacher+LR reference;
    a fused model (ms.teacher_channels) needs it.

    Each run with a validation part fits its temperature there (calibrate.fit_temperature;
    a fused model also its CNN-RNN branch's weight: fit_fusion); a run without one (--split
    all) takes `calibration`, (temperature, weight), as given (from the report of a run
    that held clips out; default none). `uncertain_below` goes into the checkpoint either way.

    With `unlabelled` folders (and the teacher), each run distils: it trains on a bank of
    ts.views augmented views of its training clips and of every audio file in those
    folders, against the teacher's outputs for each view (tagger.distil)."""
    started = time.perf_counter()
    if (ms.teacher_channels or unlabelled) and teacher is None:
        raise UserError(f"{'a fused model' if ms.teacher_channels else 'distillation'} learns "
                        "from the teacher: pass --teacher (msd_fcn's best_model.pth)")
    if calibration is not None and split != "all":
        raise UserError("--calibration-from is for --split all; the other splits fit the "
                        "calibration on their validation clips")
    dev = pick_device(device)
    found: Found = find_clips(data_dir)
    if not found.clips:
        raise UserError(f"{data_dir}: no audio clips with a genre found (expected genre folders "
                        f"such as blues/, or names such as blues.00000.wav)")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out takes the checkpoint's file name")
    base = out.with_name(out.stem)          # the report and figures beside the checkpoint
    report_paths(base, "the checkpoint and its report")

    genres_found = sorted({c.genre for c in found.clips}, key=GENRES.index)
    check_genres(make_splits(found.clips, split, folds, ts.seed), genres_found, split)  # before decoding
    cache = FeatureCache(cache_dir or default_cache_dir(), fs)
    failed: dict[str, str] = {}
    loaded = 0

    def on_clip(clip: Clip, error: str | None) -> None:
        nonlocal loaded
        loaded += 1
        if error:
            failed[clip.path] = error
        reporter.features(loaded, len(found.clips), clip, error)

    clips, mels_list = load_features(found.clips, cache, on_clip)
    if cache.write_error:
        reporter.note(f"Could not write the feature cache ({cache.write_error}); going on without it.")
    mels = {c.path: m for c, m in zip(clips, mels_list)}
    tags, teacher_state = None, None
    if ms.teacher_channels:
        reporter.note(f"Running the teacher over {len(clips)} clips (cached for later runs).")
        track_cache = teacher_cache(teacher, cache, track=True)
        tags = {c.path: track_cache.get(c.path)[0] for c in clips}
        teacher_state = teacher.state_dict()
    views, extra = None, []
    if unlabelled:
        views, extra = view_bank(clips, unlabelled, teacher, cache, fs, ts, reporter)
    splits = make_splits(clips, split, folds, ts.seed)
    genres_seen = sorted({c.genre for c in clips}, key=GENRES.index)
    if len(genres_seen) < 2:
        raise UserError(f"{data_dir}: only one genre ({', '.join(genres_seen) or 'none'}) among the "
                        "clips; a genre model needs at least two")
    for s in splits:
        for part in ("train", "valid") if split != "all" else ("train",):
            if len(s.parts[part]) < 2:
                raise UserError(f"split {s.name}: only {len(s.parts[part])} {part} clips; "
                                "a run needs at least two (try --split random, or more data)")
    check_genres(splits, genres_seen, split)       # the clips that decoded

    key = _job_key(clips, splits[0].name, ts, fs, ms,
                   [getattr(teacher, "sha256", None), *sorted(extra)])
    state_file = resume_path(out)
    done_runs: list[dict] = []
    saved, final_state, final_ms = None, None, ms
    if resume and state_file.exists():
        try:
            payload = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception:
            raise UserError(f"{state_file}: unreadable training state; delete it and start again") from None
        if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
            raise UserError(f"{state_file}: not a tagger training state; delete it and start again")
        if payload.get("key") != key:
            raise UserError(f"{state_file}: saved by a run with other data, split or settings; "
                            "delete it or run without --resume")
        done_runs, saved, final_state = payload["done_runs"], payload["current"], payload["final"]
        if payload.get("final_calibration"):
            final_ms = dataclasses.replace(ms, **payload["final_calibration"])
    elif resume:
        reporter.note(f"Nothing to resume at {state_file}; starting afresh.")

    genres = list(GENRES)
    for i, s in enumerate(splits):
        if i < len(done_runs):
            continue

        def save_state(current: dict) -> None:
            atomic_torch_save({"format": STATE_FORMAT, "key": key, "done_runs": done_runs,
                                "current": current, "final": None}, state_file)

        reporter.run_start(i, len(splits), s, ts.epochs, saved["epoch"] if saved else 0)
        if gaps := missing_genres(s, genres_seen):
            reporter.note(f"{s.name}: {describe_missing(s, gaps)}; its figures leave them out.")
        examples = distillation_examples(s, views, extra, ts) if views else None
        net, state = train_run(s, mels, fs, ms, ts, dev, i, reporter, saved, save_state,
                               tags, teacher_state, examples)
        saved = None
        part = "test" if s.test else "valid" if s.valid else None
        held = {p: branch_logits(net, s.parts[p], mels, tags, fs)    # each part once
                for p in dict.fromkeys(("valid", part)) if p and s.parts[p]}
        net.settings = ms_run = calibrated(net, s.valid, held.get("valid"), calibration,
                                           uncertain_below)
        result = {"split": s.name, "parts": s.counts(), "evaluated_on": part,
                  "train_genres": genre_counts(s.train), "best_epoch": state.best["epoch"],
                  "epochs_run": state.epoch, "seconds_per_epoch": state.seconds / max(state.epoch, 1),
                  "history": state.history}
        if part:
            probs = probabilities(*held[part], len(s.parts[part]), ms_run.temperature,
                                  ms_run.cnn_weight).numpy()
            result |= score_clips(probs, s.parts[part], genres, s.train, mels, ts.seed,
                                  teacher_cache(teacher, cache))
        if gaps:
            result["missing_genres"] = gaps
        if s.missing:
            result["missing_from_lists"] = s.missing
            result["unlisted_clips"] = s.unlisted
        done_runs.append(result)
        reporter.run_end(result)
        final_state, final_ms = net.state_dict(), net.settings
        if s.valid:     # measured on the evaluated part: honest in cross-validation (the
            # test fold), on the very clips that fitted it otherwise (the validation part)
            result["calibration"] = {"fitted_on": "valid", "measured_on": part, **calibration_report(
                *held[part], labels(s.parts[part], GENRES), ms_run.temperature,
                ms_run.uncertain_below, ms_run.cnn_weight)}
        atomic_torch_save({"format": STATE_FORMAT, "key": key, "done_runs": done_runs,
                            "current": None, "final": final_state,
                            "final_calibration": {k: getattr(final_ms, k) for k in
                                                  ("temperature", "uncertain_below", "cnn_weight")}},
                           state_file)

    report = _report(data_dir, found, failed, splits, split, done_runs, ts, fs, ms, dev,
                     time.perf_counter() - started)
    if len(splits) == 1:
        run = done_runs[0]
        final_net = GenreCRNN(final_ms)
        final_net.load_state_dict(final_state)
        metrics = {k: run[k] for k in ("split", "evaluated_on", "best_epoch", "epochs_run")}
        if run["evaluated_on"]:
            metrics |= {"accuracy": run["model"]["accuracy"], "macro_f1": run["model"]["macro_f1"],
                        "baseline_accuracy": run["baseline"]["accuracy"],
                        "baseline_macro_f1": run["baseline"]["macro_f1"], "margin": run["margin"]}
        if "calibration" in run:
            c = run["calibration"]
            metrics["calibration"] = {"measured_on": c["measured_on"], "tracks": c["tracks"],
                                      "ece_before": c["before"]["ece"], "ece_after": c["after"]["ece"],
                                      "uncertain": c["uncertain"]}
        ckpt = new_checkpoint(final_net, fs, tuple(genres), metrics=metrics,
            provenance=report["provenance"])
        report["model_id"] = save(ckpt, out)
        report["checkpoint"] = str(out)
    write_report(report, base)
    state_file.unlink(missing_ok=True)
    return report


def _report(data_dir, found, failed, splits, split_kind, runs, ts, fs, ms, dev, seconds) -> dict:
    report = {
        "tagger_version": __version__,
        "data": data_section(data_dir, found, found.clips, failed),
        "split": split_kind if split_kind != "folds" else f"folds {len(splits)}",
        "runs": runs,
        "train_seconds": seconds,
        "device": str(dev),
        "settings": {"train": dataclasses.asdict(ts), "features": dataclasses.asdict(fs),
                     "model": {**dataclasses.asdict(ms), "channels": list(ms.channels)}},
    }
    report["provenance"] = {
        "data_folder": os.path.basename(os.path.abspath(data_dir)), "clips": report["data"]["clips"],
        "split": report["split"], "seed": ts.seed, "train_settings": dataclasses.asdict(ts),
        "tagger_version": __version__, "torch_version": str(torch.__version__),
        "device": str(dev), "platform": platform.platform(), "train_seconds": round(seconds, 1),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if len(splits) == 1:                    # lets `evaluate` score exactly these parts again
        report["provenance"]["parts"] = {p: [c.name for c in clips_] for p, clips_ in splits[0].parts.items()}
    if len(runs) > 1:
        pooled = np.sum([r["model"]["confusion"] for r in runs], axis=0)
        pooled_base = np.sum([r["baseline"]["confusion"] for r in runs], axis=0)
        report["cross_validation"] = {
            "accuracy": spread([r["model"]["accuracy"] for r in runs]),
            "macro_f1": spread([r["model"]["macro_f1"] for r in runs]),
            "baseline_accuracy": spread([r["baseline"]["accuracy"] for r in runs]),
            "baseline_macro_f1": spread([r["baseline"]["macro_f1"] for r in runs]),
            "pooled": summarise(pooled, list(GENRES)),
            "pooled_baseline": summarise(pooled_base, list(GENRES)),
            **({"teacher_reference_accuracy": spread([r["teacher_reference"]["accuracy"] for r in runs]),
                "teacher_reference_macro_f1": spread([r["teacher_reference"]["macro_f1"] for r in runs]),
                "teacher_agreement": spread([r["teacher_agreement"] for r in runs])}
               if all("teacher_agreement" in r for r in runs) else {}),
            "calibration": {k: spread([r["calibration"][k] for r in runs]) for k in
                            ("temperature", "cnn_weight", "accuracy_before", "accuracy_after")}
                           | {f"ece_{k}": spread([r["calibration"][k]["ece"] for r in runs])
                              for k in ("before", "after")},
        }
    return report
