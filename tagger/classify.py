"""Run a checkpoint over decoded excerpts: log-mels on the model's device, segments, the
CNN-RNN per excerpt window, and the track's probabilities as the mean over its windows."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import torch

from tagger.checkpoint import FIX, Checkpoint
from tagger.errors import CheckpointError, UserError
from tagger.features import FeatureSettings, LogMel, cut_segments, log_mels
from tagger.basics import DEVICES, available_cores
from tagger.teacher import track_tags

def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple's MPS, then the CPU; asking for a missing one is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if name == "mps" and not mps:
        raise UserError("--device mps asked for, but this PyTorch has no MPS device; use --device cpu")
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def keep_freed_blocks() -> None:
    """Have glibc's malloc keep freed blocks of up to 256 MB for reuse. By default it hands
    blocks over 32 MB back to the system at each free, so each conv layer's output of the
    fused model's FCN (45 MB a track) is page-faulted in anew for every track: on two cores
    that was a quarter of a scan's CPU time, in the kernel. Process-wide, set once; the peak
    memory does not grow (the blocks are reused, not added). Elsewhere than glibc, nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)         # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)         # M_TRIM_THRESHOLD: keep up to 256 MB free on top
    except (OSError, AttributeError):       # not Linux, or not glibc
        pass


class Classifier:
    """A loaded model on a device. classify() takes each track's excerpt windows."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto"):
        self.genres = checkpoint.genres
        self.model_id = checkpoint.model_id
        self.settings = checkpoint.features
        self.device = pick_device(device)
        if self.device.type == "cpu":
            keep_freed_blocks()
        self.net = checkpoint.build()
        self.uncertain_below = checkpoint.model.uncertain_below
        self.net.cnn.fuse_batch_norm()          # inference only: a checkpoint keeps its BN
        self.net.to(self.device, memory_format=torch.channels_last)   # conv weights: 2x on CPUs
        self.log_mel = LogMel(self.settings).to(self.device)

    def share_cpu_with(self, workers: int) -> None:
        """On the CPU, leave the cores that decoder processes use to them: more threads than
        cores makes PyTorch's threads spin and wait instead of working."""
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, available_cores() - workers))

    @torch.inference_mode()
    def classify(self, tracks: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """tracks: per track, its excerpt windows as float32 mono arrays at the model's
        sample rate. Returns probabilities (n_tracks, n_genres), each row summing to 1."""
        windows = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device)
                   for track in tracks for w in track]
        owner = torch.tensor([i for i, track in enumerate(tracks) for _ in track], device=self.device)
        mels = log_mels(windows, self.settings, self.log_mel)
        tags = (track_tags(self.net.teacher, tracks, self.settings.sample_rate)
                if self.net.fused else None)
        probs = track_probabilities(self.net, mels, owner, len(tracks), self.settings,
                                    tags).cpu().numpy()
        if not np.isfinite(probs).all():        # finite weights can still overflow
            raise CheckpointError(f"the model gives NaN or infinite probabilities (model id "
                                  f"{self.model_id}: its weights overflow); {FIX}")
        return probs


def window_logits(net: torch.nn.Module, mels: Sequence[torch.Tensor], owner: torch.Tensor,
                  settings: FeatureSettings, tags: torch.Tensor | None = None) -> torch.Tensor:
    """Window log-mels [(n_mels, frames)] (owner[i] = the track of window i), and for a
    fused model the tracks' tags (n_tracks, n_tags) -> (windows, n_genres) raw logits."""
    segments, lengths = cut_segments(list(mels), settings)
    return net(segments, lengths, None if tags is None else tags[owner]).float()


def pool_windows(logits: torch.Tensor, owner: torch.Tensor, n_tracks: int,
                 temperature: float = 1.0) -> torch.Tensor:
    """(windows, n_genres) logits -> (n_tracks, n_genres): the mean of each track's window
    softmaxes at `temperature`."""
    probs = torch.softmax(logits / temperature, dim=-1)
    summed = probs.new_zeros(n_tracks, probs.shape[1]).index_add_(0, owner, probs)
    counts = torch.bincount(owner, minlength=n_tracks).clamp(min=1)[:, None]
    return summed / counts


def track_probabilities(net: torch.nn.Module, mels: Sequence[torch.Tensor], owner: torch.Tensor,
                        n_tracks: int, settings: FeatureSettings,
                        tags: torch.Tensor | None = None) -> torch.Tensor:
    """Window log-mels of n_tracks tracks -> (n_tracks, n_genres) calibrated probabilities
    (the model's temperature applied): used by scan and by evaluation alike."""
    return pool_windows(window_logits(net, mels, owner, settings, tags), owner, n_tracks,
                        net.settings.temperature)
