"""Distillation data: a bank of augmented views of every clip, labelled or not, each with the
teacher's 50 tags for exactly that audio ("patient and consistent" distillation, Beyer et
al. 2022: the teacher sees what the student sees).

A view is the clip's decoded excerpt windows, sped up or slowed down (pitch and tempo
together, by resampling: one of four factors from 0.91 to 1.11) and scaled in gain; view 0
is the clean audio.
Each view keeps the student's log-mel windows and the teacher's track tags of the joined
windows (teacher.track_tags, as the fused model and scan compute them). The bank is cached
per file like the log-mels, keyed by the file's content, the teacher's SHA-256, the window
settings and the number of views, so a rerun never runs the teacher again.

Soft genre targets come from the tags through the teacher+LR map (teacher_genres), fitted on
the labelled training clips' clean views only, softened by a temperature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio

from tagger import teacher as fcn
from tagger.dataset import ArrayCache
from tagger.decode import decode_excerpts
from tagger.features import FeatureSettings, LogMel, log_mels
from tagger.modelfile import file_sha256
from tagger.teacher_genres import fit_genre_map

# Speed factors, as rates to resample to: the sample rate * N/21 (22,050 Hz: 1,050 Hz * N).
# Rates sharing a large divisor with the source keep resampling cheap (22,050 -> 23,152 Hz,
# which share 2, cost 4.6 s per 10 s window; 22,050 -> 23,100 Hz 0.01 s); 21/N gives
# speeds 1.11, 1.05, 0.95 and 0.91.
SPEED_STEPS = (19, 20, 22, 23)
GAIN_DB = 6.0


@dataclasses.dataclass
class Views:
    """One file's views: per view, its log-mel windows and its (n_tags,) teacher tags."""
    mels: list[list[torch.Tensor]]
    tags: torch.Tensor          # (n_views, n_tags)


def view_audio(windows: Sequence[np.ndarray], index: int, seed: int, sample_rate: int) -> list[torch.Tensor]:
    """View `index` of a clip's windows: 0 is the clean audio; the others one random speed
    and gain, the same for every window of the view."""
    waves = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)) for w in windows]
    if index == 0:
        return waves
    gen = torch.Generator().manual_seed(seed * 1000 + index)
    step = SPEED_STEPS[int(torch.randint(0, len(SPEED_STEPS), (1,), generator=gen))]
    gain = 10 ** ((float(torch.rand(1, generator=gen)) * 2 - 1) * GAIN_DB / 20)
    new_rate = sample_rate * step // 21     # played at sample_rate: 21/step times faster
    out = []
    for w in waves:
        shifted = torchaudio.functional.resample(w, sample_rate, new_rate) * gain
        out.append(shifted.clamp(-1.0, 1.0))
    return out


class ViewBank(ArrayCache):
    """get_views(path) -> Views with `n_views` views of the file."""

    def __init__(self, cache_dir: Path, teacher: fcn.Teacher, settings: FeatureSettings, n_views: int):
        if not teacher.sha256:
            raise ValueError("the teacher has no .sha256: load it with teacher.load_teacher")
        text = json.dumps({**dataclasses.asdict(settings), "views": n_views,
                           "speed_steps": SPEED_STEPS, "gain_db": GAIN_DB}, sort_keys=True)
        super().__init__(Path(cache_dir) / f"views-{teacher.sha256[:12]}-"
                         f"{hashlib.sha256(text.encode()).hexdigest()[:12]}")
        self.teacher, self.settings, self.n_views = teacher, settings, n_views
        self.log_mel = LogMel(settings)

    def compute(self, path: str) -> list[torch.Tensor]:
        """Stored flat: a header (n_views, n_windows), then per view its windows' log-mels
        and its tags."""
        s = self.settings
        ex = decode_excerpts(path, s.sample_rate, s.excerpt_windows, s.excerpt_seconds)
        seed = int(file_sha256(path)[:8], 16)
        arrays = [torch.tensor([self.n_views, len(ex.waveforms)], dtype=torch.float32)]
        with torch.inference_mode():
            for v in range(self.n_views):
                waves = view_audio(ex.waveforms, v, seed, s.sample_rate)
                arrays += log_mels(waves, s, self.log_mel)
                arrays.append(fcn.track_tags(self.teacher, [waves], s.sample_rate)[0].cpu())
        return arrays

    def get_views(self, path: str) -> Views:
        arrays = self.get(path)
        n_views, n_windows = (int(x) for x in arrays[0])
        step = n_windows + 1
        chunks = [arrays[1 + v * step: 1 + (v + 1) * step] for v in range(n_views)]
        return Views([c[:-1] for c in chunks], torch.stack([c[-1] for c in chunks]))


def genre_map(train_tags: np.ndarray, train_labels: np.ndarray, n_classes: int, seed: int = 0):
    """The teacher+LR map fitted on the labelled training clips' clean tags: a function from
    (n, n_tags) tags to (n, n_classes) log-probabilities (classes absent from training get
    a very low one)."""
    model = fit_genre_map(train_tags, train_labels, seed)

    def log_probs(tags: np.ndarray) -> torch.Tensor:
        out = np.full((len(tags), n_classes), -30.0)
        out[:, model.classes_] = model.predict_log_proba(tags)
        return torch.tensor(out, dtype=torch.float32)
    return log_probs


def soft_targets(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softened genre targets: p^(1/T), renormalised."""
    return torch.softmax(log_probs / temperature, dim=-1)
