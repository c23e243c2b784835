"""Log-mel features, computed batched on the model's device, and their 41-frame segments.

Pure functions over tensors; the settings travel inside every checkpoint so that a model
sees at inference exactly the features it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio


@dataclass(frozen=True)
class FeatureSettings:
    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 11025.0
    mel_scale: str = "slaney"
    segment_frames: int = 41        # one segment: 41 frames, about 0.95 s
    segment_hop: int = 41           # frames between segment starts (41 = no overlap)
    excerpt_windows: int = 3        # windows decoded per track ...
    excerpt_seconds: float = 10.0   # ... of this length each (see decode.excerpt_windows)
    db_floor: float = -100.0        # log-mel floor in dB (silence maps here)

    @property
    def min_samples(self) -> int:
        """Samples needed for one full segment; shorter waveforms are zero-padded to it."""
        return (self.segment_frames - 1) * self.hop_length


class LogMel(torch.nn.Module):
    """(batch, samples) float32 waveforms -> (batch, n_mels, frames) log-mel power in dB.

    Not centred: callers zero-pad n_fft // 2 on each side (see log_mels), so that a
    waveform's features never depend on what else is in its batch. The STFT runs a few rows
    at a time on the CPU, where the complex intermediate of a whole batch would not stay in
    cache; the power spectrum is re**2 + im**2 (complex abs() then squaring is slower).
    """

    def __init__(self, settings: FeatureSettings):
        super().__init__()
        self.settings = settings
        self.register_buffer("window", torch.hann_window(settings.n_fft), persistent=False)
        fbanks = torchaudio.functional.melscale_fbanks(
            settings.n_fft // 2 + 1, settings.f_min, settings.f_max, settings.n_mels,
            settings.sample_rate, norm="slaney" if settings.mel_scale == "slaney" else None,
            mel_scale=settings.mel_scale)
        self.register_buffer("fbanks", fbanks.T.contiguous(), persistent=False)  # (n_mels, freqs)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        s = self.settings
        rows = 2 if waveforms.device.type == "cpu" else len(waveforms)
        floor = 10.0 ** (s.db_floor / 10.0)
        out = []
        for chunk in waveforms.split(rows):
            spec = torch.stft(chunk, s.n_fft, s.hop_length, window=self.window, center=False,
                              return_complex=True)                    # (rows, freqs, frames)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(self.fbanks, power)                         # (rows, n_mels, frames)
            out.append(mel.clamp_(min=floor).log10_().mul_(10.0))
        return torch.cat(out)


def n_frames(n_samples: int, settings: FeatureSettings) -> int:
    """Frames the STFT gives for n_samples zero-padded by n_fft // 2 on each side."""
    return 1 + n_samples // settings.hop_length


def segment_starts(frames: int, settings: FeatureSettings) -> list[int]:
    """Start frames of the segments cut from `frames` frames (at least one segment)."""
    last = max(frames - settings.segment_frames, 0)
    return list(range(0, last + 1, settings.segment_hop))


def log_mels(waveforms: list[torch.Tensor], settings: FeatureSettings,
             log_mel: LogMel) -> list[torch.Tensor]:
    """Each waveform's log-mel, computed in one batch: B mono (samples,) tensors on the
    model's device -> B tensors (n_mels, frames_i), frames_i = n_frames(max(samples_i,
    min_samples)). A waveform's frames do not depend on the others in the batch (on the
    CPU, bit for bit)."""
    pad = settings.n_fft // 2
    sizes = [max(len(w), settings.min_samples) for w in waveforms]
    if waveforms[0].device.type == "cpu":
        # One at a time, each padded only to its own length: a batch's longer frame count
        # changes how the CPU's threads split the mel matmul, and so the last bit.
        return [log_mel(torch.nn.functional.pad(w, (pad, pad + size - len(w)))[None])[0]
                for w, size in zip(waveforms, sizes)]
    batch = torch.zeros(len(waveforms), max(sizes) + 2 * pad, device=waveforms[0].device)
    for i, w in enumerate(waveforms):
        batch[i, pad: pad + len(w)] = w
    mels = log_mel(batch)                                 # (B, n_mels, frames)
    return [mels[i, :, : n_frames(size, settings)] for i, size in enumerate(sizes)]


def cut_segments(mels: list[torch.Tensor], settings: FeatureSettings
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut B log-mels (n_mels, frames_i) into segments, padded to a common count.

    Returns segments (B, S, n_mels, segment_frames) and lengths (B,) = segments per item.
    """
    per_item = [segment_starts(m.shape[-1], settings) for m in mels]
    lengths = torch.tensor([len(s) for s in per_item])
    segments = mels[0].new_full((len(mels), int(lengths.max()), settings.n_mels,
                                 settings.segment_frames), settings.db_floor)
    for i, (mel, starts) in enumerate(zip(mels, per_item)):
        idx = torch.tensor(starts, device=mel.device)[:, None] + torch.arange(
            settings.segment_frames, device=mel.device)
        segments[i, : len(starts)] = mel[:, idx].permute(1, 0, 2)
    return segments, lengths


def log_mel_segments(waveforms: list[torch.Tensor], settings: FeatureSettings,
                     log_mel: LogMel) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms -> (segments (B, S, n_mels, segment_frames), lengths (B,)): what the model
    reads at scan time. Training reads the same log_mels (cached) and cut_segments."""
    return cut_segments(log_mels(waveforms, settings, log_mel), settings)
