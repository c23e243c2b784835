"""The msd_fcn teacher: a pretrained 50-tag music tagger that tagger learns from.

The fully convolutional network (FCN) of Choi, Fazekas & Sandler 2016, "Automatic tagging
using deep convolutional neural networks", trained on the Million Song Dataset's 50 most
frequent Last.fm tags by Won et al. 2020, "Evaluation of CNN-based automatic music tagging
models" (SMC 2020). Architecture and front end follow minzwon/sota-music-tagging-models
(training/model.py: FCN; training/modules.py: Conv_2d), MIT licence, Copyright (c) 2020
Minz Won; the weights are not part of tagger, and their LICENSE and this attribution travel
with any copy of them or anything derived from them.

The weights file is a plain state dict. load_teacher checks its SHA-256, loads it with
torch.load(weights_only=True) (no code runs) and strictly, and returns the network in eval
mode. Front end, as torchaudio's MelSpectrogram + AmplitudeToDB in the original:
16 kHz mono -> STFT (n_fft 512, hop 256, the stored Hann window, centred with reflect
padding) -> power |X|^2 -> the stored mel filterbank (257 x 96) -> 10 log10(max(p, 1e-10)).
Then a 1-channel BatchNorm, five conv blocks, a dense layer and a sigmoid.

The input is 29 s (464,000 samples at 16 kHz), the length it was trained on: the five
poolings reduce that to one frame. excerpt_tags takes tagger's own decoded windows
(22,050 Hz), resamples them and tiles each to 29 s.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from tagger.errors import CheckpointError
from tagger.modelfile import file_problem

SHA256 = "6012aa7eecf864a8081faedca56af054521e8dfb9c5c98659a3dd5d3e1e66f21"  # best_model.pth
SAMPLE_RATE = 16000
N_FFT = 512
HOP_LENGTH = 256
N_MELS = 96
INPUT_SAMPLES = 29 * SAMPLE_RATE            # 464,000: training/main.py, input_length for fcn
CHANNELS = (64, 128, 128, 128, 64)
POOLING = ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4))   # (mel, time) per block
AMIN = 1e-10                                # AmplitudeToDB's floor (power: 10 log10)

# The 50 outputs in order (tags.txt beside the weights). Kept here, not read from that file:
# the order belongs to the weights pinned by SHA256, and a random test teacher has no file.
TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s",
    "chill", "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)


def log_mel(waveforms: torch.Tensor, window: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """(B, samples) 16 kHz -> (B, n_mels, 1 + samples // 256) mel power in dB, as
    torchaudio's MelSpectrogram(16000, n_fft=512, f_max=8000, n_mels=96) (centred, reflect
    padding, power 2) followed by AmplitudeToDB() (10 log10, floor 1e-10, no top_db): the
    original's FCN.__init__ and forward (training/model.py), hop = n_fft // 2 by default."""
    spec = torch.stft(waveforms, N_FFT, HOP_LENGTH, window=window, center=True,
                      pad_mode="reflect", return_complex=True)        # (B, 257, frames)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(power.transpose(1, 2), fb).transpose(1, 2)    # (B, n_mels, frames)
    return 10.0 * torch.log10(mel.clamp(min=AMIN))


def fit_length(wave: torch.Tensor, samples: int = INPUT_SAMPLES) -> torch.Tensor:
    """(n,) -> (samples,): tile (repeat) a shorter wave, keep the middle of a longer one."""
    n = wave.shape[-1]
    if n == 0:
        raise ValueError("an empty window has no tags")
    if n >= samples:
        start = (n - samples) // 2
        return wave[start: start + samples]
    return wave.repeat(math.ceil(samples / n))[:samples]


def _buffers(**tensors: torch.Tensor) -> nn.Module:
    holder = nn.Module()
    for name, tensor in tensors.items():
        holder.register_buffer(name, tensor)
    return holder


class _ConvBlock(nn.Module):
    """Conv 3x3 (padding 1) -> BatchNorm -> ReLU -> MaxPool: the original's Conv_2d."""

    def __init__(self, c_in: int, c_out: int, pooling: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out)
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), self.pooling)


class Teacher(nn.Module):
    """The FCN, with the original's state-dict names (spec.*, spec_bn, layer1..5, dense).

    `channels` other than CHANNELS make a small random teacher for tests. Never trained
    here, so it has no dropout; use it in eval mode (load_teacher returns it so), where a
    window's output does not depend on the rest of its batch.
    """

    def __init__(self, channels: Sequence[int] = CHANNELS, n_tags: int = len(TAGS)):
        super().__init__()
        self.spec = nn.Module()
        self.spec.spectrogram = _buffers(window=torch.hann_window(N_FFT))
        with torch.device("cpu"):           # also when built on the meta device
            self.spec.mel_scale = _buffers(fb=torchaudio.functional.melscale_fbanks(
                N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE))  # (257, 96)
        self.spec_bn = nn.BatchNorm2d(1)
        c_in = (1, *channels[:-1])
        for i, (a, b, pool) in enumerate(zip(c_in, channels, POOLING), start=1):
            self.add_module(f"layer{i}", _ConvBlock(a, b, pool))
        self.dense = nn.Linear(channels[-1], n_tags)
        self.sha256: str | None = None      # of the weights file, set by load_teacher

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, INPUT_SAMPLES) 16 kHz mono float32 -> (B, n_tags) logits."""
        if waveforms.shape[-1] != INPUT_SAMPLES:
            raise ValueError(f"the teacher reads {INPUT_SAMPLES:,} samples (29 s at 16 kHz), "
                             f"not {waveforms.shape[-1]:,}; see fit_length")
        x = log_mel(waveforms, self.spec.spectrogram.window, self.spec.mel_scale.fb)
        x = self.spec_bn(x.unsqueeze(1))                           # (B, 1, 96, 1813)
        for i in range(1, 6):
            x = getattr(self, f"layer{i}")(x)                      # ... -> (B, C, 1, 1)
        return self.dense(x.flatten(1))

    @torch.no_grad()
    def tags(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, INPUT_SAMPLES) 16 kHz windows -> (B, n_tags) tag probabilities in [0, 1]."""
        if self.training:
            raise RuntimeError("call .eval() first: in training mode BatchNorm mixes the batch")
        return torch.sigmoid(self(windows))


def excerpt_tags(teacher: Teacher, waveforms: Sequence[np.ndarray | torch.Tensor],
                 sample_rate: int = 22050, batch_size: int = 4) -> torch.Tensor:
    """Tag probabilities of tagger's decoded windows (decode.decode_excerpts' waveforms):
    N mono (samples_i,) float32 at `sample_rate` -> (N, n_tags) on the CPU. Each window is
    resampled to 16 kHz, then tiled to 29 s (or its middle 29 s kept), `batch_size` at a
    time on the teacher's device."""
    device = teacher.dense.weight.device
    out = []
    for i in range(0, len(waveforms), batch_size):
        batch = [torchaudio.functional.resample(
                    torch.as_tensor(w, dtype=torch.float32, device=device), sample_rate,
                    SAMPLE_RATE) for w in waveforms[i: i + batch_size]]
        out.append(teacher.tags(torch.stack([fit_length(w) for w in batch])).cpu())
    return torch.cat(out) if out else torch.zeros(0, teacher.dense.out_features)


def track_tags(teacher: Teacher, tracks: Sequence[Sequence[np.ndarray | torch.Tensor]],
               sample_rate: int = 22050) -> torch.Tensor:
    """One pass per track over its excerpt windows joined end to end (three 10 s windows:
    the middle 29 s of the 30 s; a shorter track tiled), resampled to 16 kHz: per track
    (n_tracks, n_tags) tag probabilities on the teacher's device. What the fused model reads.
    On the CPU one track at a time: its first layer's output (45 MB a track) then stays in
    the caches' reach, and the pass takes a third less time than four at once."""
    device = teacher.dense.weight.device
    joined = [torch.cat([torch.as_tensor(w, dtype=torch.float32, device=device) for w in track])
              for track in tracks]
    return excerpt_tags(teacher, joined, sample_rate,
                        batch_size=1 if device.type == "cpu" else 16).to(device)


def weights_digest(teacher: Teacher) -> str:
    """SHA-256 over the teacher's tensors (names, shapes and bytes): a cache key for a
    teacher that came inside a fused checkpoint rather than from its own file."""
    digest = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _one_line(error: RuntimeError) -> str:
    """load_state_dict's multi-line report as one line."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    text = " ".join(lines) or str(error)
    return text if len(text) <= 300 else text[:297] + "..."


def load_teacher(path: str | Path, expected_sha256: str | None = SHA256,
                 channels: Sequence[int] = CHANNELS) -> Teacher:
    """The teacher from its weights file (best_model.pth), in eval mode on the CPU, with
    the file's SHA-256 in .sha256 (what caches of its outputs are keyed by).

    Raises CheckpointError (one line, with the path) if the file is missing or unreadable,
    its SHA-256 is not `expected_sha256` (None skips the check), it holds anything but
    tensors, or its keys or shapes are not exactly the FCN's.
    """
    path = Path(path)
    try:
        problem = file_problem(path)
        if problem:
            raise CheckpointError(problem, str(path))
        data = path.read_bytes()           # hashed and loaded from the same bytes
    except FileNotFoundError:
        raise CheckpointError("no such teacher weights file (best_model.pth of msd_fcn)",
                              str(path)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read the teacher weights ({e.strerror})",
                              str(path)) from None
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"sha256 {digest[:12]}... is not the msd_fcn teacher's "
                              f"({expected_sha256[:12]}...); copy best_model.pth again",
                              str(path))
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # UnpicklingError (objects other than tensors), a damaged archive...
        raise CheckpointError("refused to load: not a plain PyTorch state dict (corrupt, or "
                              "holding objects other than tensors)", str(path)) from None
    if not isinstance(state, dict):
        raise CheckpointError("refused to load: not a plain PyTorch state dict", str(path))
    teacher = Teacher(channels)
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"not the msd_fcn FCN: {_one_line(e)}", str(path)) from None
    flush_subnormals(teacher)
    teacher.sha256 = digest
    return teacher.eval()


def flush_subnormals(net: nn.Module) -> None:
    """Set weights and statistics below float32's smallest normal number to 0. The real
    file has 78,000 of them (dead channels); CPUs compute with them 10 to 100 times slower,
    which made a 29 s window cost 3.3 CPU-seconds instead of 0.24, and its tags are the same
    (measured: identical to the last bit on generated audio)."""
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor[tensor.abs() < tiny] = 0.0
