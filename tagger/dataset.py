"""Training data: the clips of a GTZAN-style folder, the splits, and the log-mel cache.

A clip's genre comes from its folder (`blues/blues.00000.wav`) or, failing that, from its
name's prefix (`blues.00000.au`). Splits are always by clip: every window and segment of a
clip lands in the part its clip is in. The artist-filtered lists (Kereliuk, Sturm & Larsen
2015) ship in tagger/data/splits; their lines (`blues/blues.00029.wav`) match clips by name,
whatever the extension.

The cache holds each clip's log-mel windows exactly as `scan` computes them (the same
decode_excerpts and features.log_mels), keyed by the file's content and the feature
settings, so epochs and later runs never decode again. ArrayCache is its mechanism, which
the teacher's tags reuse (teacher_genres.TeacherCache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from tagger.atomic import atomic_file
from tagger.crawl import crawl
from tagger.decode import decode_excerpts
from tagger.errors import DecodeError, UserError
from tagger.features import FeatureSettings, LogMel, log_mels
from tagger.genres import GENRES, normalise_genre
from tagger.modelfile import file_sha256

PARTS = ("train", "valid", "test")


@dataclass(frozen=True)
class Clip:
    name: str        # the file name without its extension, lower case: "blues.00029"
    genre: str
    path: str


@dataclass
class Found:
    clips: list[Clip]
    unlabelled: list[str] = field(default_factory=list)   # audio whose genre is unknown
    duplicates: list[str] = field(default_factory=list)   # a second file of one clip name


def genre_of(path: Path, root: Path) -> str | None:
    """The genre named by the file's folder, else by its name's prefix ("blues.00001")."""
    if path.parent != root:
        genre = normalise_genre(path.parent.name)
        if genre:
            return genre
    return normalise_genre(re.split(r"[._\- ]", path.name, maxsplit=1)[0])


def find_clips(data_dir: Path) -> Found:
    """Every audio file under data_dir with a known genre, sorted by (genre, name)."""
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a folder (expected genre folders such as blues/, jazz/)")
    found = Found([])
    seen: set[tuple[str, str]] = set()
    root = Path(os.path.abspath(data_dir))
    for cand in crawl([root]):
        path = Path(cand.path)
        genre = genre_of(path, root)
        name = path.name.rsplit(".", 1)[0].lower()
        if genre is None:
            found.unlabelled.append(cand.path)
        elif (genre, name) in seen:             # one clip in two formats
            found.duplicates.append(cand.path)
        else:
            seen.add((genre, name))
            found.clips.append(Clip(name, genre, cand.path))
    found.clips.sort(key=lambda c: (GENRES.index(c.genre), c.name))
    return found


def parse_list(text: str) -> list[str]:
    """Clip names from a split list: one `genre/name.ext` per line; blanks and # ignored."""
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = line.replace("\\", "/").rsplit("/", 1)[-1].lower()
            stem, _, ext = name.rpartition(".")
            names.append(stem if stem and not ext.isdigit() else name)   # "rock.00002" has none
    return names


def filtered_lists() -> dict[str, list[str]]:
    folder = resources.files("tagger") / "data" / "splits"
    return {part: parse_list((folder / f"{part}_filtered.txt").read_text()) for part in PARTS}


@dataclass
class Split:
    name: str                              # "filtered", "random (seed 0)", "fold 2 of 5"
    parts: dict[str, list[Clip]]           # "train", "valid", "test"
    missing: dict[str, int] = field(default_factory=dict)   # listed clips not in the folder
    unlisted: int = 0                      # clips in the folder but in no list

    @property
    def train(self) -> list[Clip]:
        return self.parts["train"]

    @property
    def valid(self) -> list[Clip]:
        return self.parts["valid"]

    @property
    def test(self) -> list[Clip]:
        return self.parts["test"]

    def counts(self) -> dict[str, int]:
        return {part: len(clips) for part, clips in self.parts.items()}


def filtered_split(clips: list[Clip], lists: dict[str, list[str]] | None = None) -> Split:
    """The artist-filtered split: each clip goes to the part whose list names it."""
    lists = lists or filtered_lists()
    by_name = {c.name: c for c in clips}
    parts = {part: [by_name[n] for n in names if n in by_name] for part, names in lists.items()}
    listed = {n for names in lists.values() for n in names}
    missing = {part: sum(n not in by_name for n in names) for part, names in lists.items()}
    return Split("filtered", parts, missing, sum(c.name not in listed for c in clips))


def _stratified_folds(clips: list[Clip], k: int, seed: int) -> list[list[Clip]]:
    """Deal each genre's shuffled clips round-robin into k folds, continuing where the last
    genre stopped, so that folds get every genre and equal sizes (to one clip)."""
    rng = np.random.default_rng(seed)
    by_genre: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_genre[c.genre].append(c)
    folds: list[list[Clip]] = [[] for _ in range(k)]
    i = 0
    for genre in sorted(by_genre):
        group = by_genre[genre]
        for j in rng.permutation(len(group)):
            folds[i % k].append(group[j])
            i += 1
    return folds


def random_split(clips: list[Clip], seed: int) -> Split:
    """A stratified random split by clip: 60% train, 20% valid, 20% test."""
    folds = _stratified_folds(clips, 5, seed)
    parts = {"train": [c for f in folds[:3] for c in f], "valid": folds[3], "test": folds[4]}
    return Split(f"random (seed {seed})", parts)


def fold_splits(clips: list[Clip], k: int, seed: int) -> list[Split]:
    """K-fold cross-validation by clip: fold i is the test part, fold i+1 the validation
    part (early stopping), the rest train. Every clip is tested exactly once."""
    if k < 3:
        raise UserError("--split folds needs K of at least 3 (one fold tests, one validates)")
    if len(clips) < k:
        raise UserError(f"{len(clips)} clips cannot make {k} folds")
    folds = _stratified_folds(clips, k, seed)
    return [Split(f"fold {i + 1} of {k} (seed {seed})",
                  {"train": [c for j, f in enumerate(folds) if j not in (i, (i + 1) % k) for c in f],
                   "valid": folds[(i + 1) % k], "test": folds[i]})
            for i in range(k)]


def parse_split(text: str) -> tuple[str, int]:
    """'filtered', 'random', 'all', 'folds', 'folds 5', 'folds=5' -> (kind, K)."""
    m = re.fullmatch(r"\s*(filtered|random|all|folds)(?:\s*[\s:=]\s*(\d+))?\s*", text.lower())
    if not m or (m.group(2) and m.group(1) != "folds"):
        raise UserError(f"unknown split {text!r}; use filtered, random, all, or 'folds K'")
    return m.group(1), int(m.group(2) or 5)


def make_splits(clips: list[Clip], kind: str, k: int, seed: int) -> list[Split]:
    if kind == "filtered":
        return [filtered_split(clips)]
    if kind == "random":
        return [random_split(clips, seed)]
    if kind == "all":           # train on everything, nothing held out
        return [Split("all", {"train": list(clips), "valid": [], "test": []})]
    return fold_splits(clips, k, seed)


MIN_TRAIN_CLIPS = 2      # of each genre: fewer, and a run cannot learn it


def missing_genres(split: Split, genres: Iterable[str]) -> dict[str, list[str]]:
    """The genres each part of the split lacks (the training part: has fewer than
    MIN_TRAIN_CLIPS of), for the parts that hold clips."""
    missing = {}
    for part, clips in split.parts.items():
        counts = Counter(c.genre for c in clips)
        least = MIN_TRAIN_CLIPS if part == "train" else 1
        if clips and (lacking := [g for g in genres if counts[g] < least]):
            missing[part] = lacking
    return missing


def describe_missing(split: Split, missing: dict[str, list[str]]) -> str:
    return "; ".join(f"the {part} part has no clips of {', '.join(gs)}" if part != "train" else
                     f"the {part} part has no clips of {', '.join(gs)} (or fewer than "
                     f"{MIN_TRAIN_CLIPS})" for part, gs in missing.items())


def check_genres(splits: Iterable[Split], genres: Iterable[str], kind: str) -> None:
    """A UserError, before any training, when a run's training part lacks a genre that the
    clips hold: the model could never predict it, and the held-out accuracy would mean
    nothing (a held-out part that lacks one only measures the others: see missing_genres)."""
    genres = list(genres)
    for split in splits:
        missing = missing_genres(split, genres)
        if "train" in missing:
            fix = ("try --split random or --split \"folds K\" (both put every genre in every part)"
                   if kind == "filtered" else
                   "add clips of those genres, or try --split random or --split \"folds K\" "
                   "with a smaller K")
            raise UserError(f"the {split.name} split cannot train every genre: "
                            f"{describe_missing(split, missing)}; {fix}")


def genre_counts(clips: Iterable[Clip]) -> dict[str, int]:
    counts = Counter(c.genre for c in clips)
    return {g: counts[g] for g in GENRES if counts[g]}


# --- the feature cache --------------------------------------------------------------------

def settings_key(settings: FeatureSettings) -> str:
    text = json.dumps(dataclasses.asdict(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ArrayCache:
    """Arrays computed from a file: folder/<content key>.npz, one float32 array per excerpt
    window. `folder` names everything the arrays depend on besides the file's content (a
    settings key); subclasses say how to compute them. A missing or unreadable entry is
    recomputed; a cache that cannot be written costs speed only (write_error says why).
    """

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.hits = self.misses = 0
        self.write_error: str | None = None   # the first failure to write an entry

    def compute(self, path: str) -> list[torch.Tensor]:
        raise NotImplementedError

    def get(self, path: str) -> list[torch.Tensor]:
        entry = self.dir / f"{file_sha256(path)[:24]}.npz"
        try:
            with np.load(entry, allow_pickle=False) as data:
                arrays = [torch.from_numpy(data[f"w{i}"]) for i in range(len(data.files))]
            if arrays:
                self.hits += 1
                return arrays
        except Exception:   # noqa: BLE001 - missing, truncated or damaged: compute it again
            pass
        arrays = self.compute(path)
        self.misses += 1
        if self.write_error is None:
            try:
                self._save(entry, arrays)
            except OSError as exc:      # a full disk or a read-only cache costs speed only
                self.write_error = f"{self.dir}: {exc.strerror or exc}"
        return arrays

    def _save(self, entry: Path, arrays: list[torch.Tensor]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(entry) as f:
            np.savez(f, **{f"w{i}": a.numpy() for i, a in enumerate(arrays)})


class FeatureCache(ArrayCache):
    """Log-mel windows per file: cache_dir/<settings key>/<content key>.npz, float32.

    get(path) -> list of (n_mels, frames) tensors, one per excerpt window, bit for bit what
    `scan` computes for the same file.
    """

    def __init__(self, cache_dir: Path, settings: FeatureSettings):
        super().__init__(Path(cache_dir) / settings_key(settings))
        self.settings = settings
        self.log_mel = LogMel(settings)

    def compute(self, path: str) -> list[torch.Tensor]:
        s = self.settings
        ex = decode_excerpts(path, s.sample_rate, s.excerpt_windows, s.excerpt_seconds)
        with torch.inference_mode():
            return log_mels([torch.from_numpy(w) for w in ex.waveforms], s, self.log_mel)


def load_features(clips: list[Clip], cache: FeatureCache,
                  on_clip: Callable[[Clip, str | None], None] = lambda c, e: None
                  ) -> tuple[list[Clip], list[list[torch.Tensor]]]:
    """The log-mel windows of every clip that decodes; on_clip(clip, error or None)."""
    kept, mels = [], []
    for clip in clips:
        try:
            windows = cache.get(clip.path)
        except DecodeError as exc:
            on_clip(clip, exc.reason)
            continue
        except OSError as exc:
            on_clip(clip, exc.strerror or str(exc))
            continue
        on_clip(clip, None)
        kept.append(clip)
        mels.append(windows)
    return kept, mels
