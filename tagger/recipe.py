"""The training recipe as data: TrainSettings (saved in every checkpoint's provenance) and
where the feature cache lives. No torch here, so that the CLI can show the defaults cheaply."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV_VAR = "TAGGER_CACHE"
# A track whose calibrated top probability is under this is more likely wrong than right:
# it is shown as "uncertain" and not written into tags unless asked (calibrate.py).
UNCERTAIN_BELOW = 0.5


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 60                # upper bound; early stopping usually ends sooner
    patience: int = 20              # epochs without a better validation accuracy ...
    min_epochs: int = 30            # ... counted, and the best epoch chosen, from here on
    batch_size: int = 16            # crops per step
    crops_per_clip: int = 8         # crops drawn from each training clip per epoch
    crop_segments: int = 6          # consecutive segments per crop (about 5.7 s)
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    gain_db: float = 6.0            # random gain, uniform in +-gain_db
    freq_masks: int = 2             # SpecAugment: masks per crop ...
    freq_mask_bands: int = 12       # ... each up to this many mel bands wide
    time_masks: int = 2
    time_mask_frames: int = 20
    mixup_alpha: float = 0.2        # 0 turns mixup off
    branch_loss: float = 0.5        # fused model: weight of each branch's own loss
    views: int = 4                  # distillation: views of each clip in the bank (0: clean)
    distil_temperature: float = 2.0 # ... softening the teacher's genre probabilities
    label_weight: float = 0.3       # ... weight of the labels' cross-entropy
    tag_weight: float = 1.0         # ... weight of the auxiliary 50-tag head's loss
    seed: int = 0


def default_cache_dir() -> Path:
    """$TAGGER_CACHE, else the user's cache folder (~/.cache/tagger/features on Linux)."""
    from platformdirs import user_cache_dir
    return Path(os.environ.get(CACHE_ENV_VAR) or Path(user_cache_dir("tagger")) / "features")
