"""The CNN-RNN genre model: a small 2-D CNN embeds each 128x41 log-mel segment, a GRU (or
LSTM) reads the sequence of segment embeddings, and a linear head gives one logit per genre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass(frozen=True)
class ModelSettings:
    n_mels: int = 128
    n_genres: int = 10
    channels: tuple[int, ...] = (8, 16, 32, 96)     # one conv block each (see SegmentCNN)
    rnn: str = "gru"                                # "gru" or "lstm"
    rnn_hidden: int = 128
    rnn_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    # The fused model: the pretrained FCN's conv widths (tagger.teacher.CHANNELS); its 50 tag
    # probabilities for the track are a second input to the genre head. () = CNN-RNN alone.
    teacher_channels: tuple[int, ...] = ()
    # Calibration, fitted on held-out tracks after training: window logits are divided by
    # `temperature` before the softmax; a track whose top probability is below
    # `uncertain_below` is shown as "uncertain". 1.0 and 0.0 leave both off.
    temperature: float = 1.0
    uncertain_below: float = 0.0
    # Fused model: the CNN-RNN branch's weight in the genre logits, fitted with the
    # temperature on held-out tracks (on unseen artists the branch trained from scratch
    # is far weaker than the tags; see models/MODEL_CARD.md).
    cnn_weight: float = 1.0


def conv_block(c_in: int, c_out: int, first: bool) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU; the first block strides by 2, the others max-pool by 2."""
    layers = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2 if first else 1, padding=1, bias=False),
              nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers) if first else nn.Sequential(*layers, nn.MaxPool2d(2))


class SegmentCNN(nn.Module):
    """(N, 1, n_mels, frames) -> (N, channels[-1]) segment embeddings.

    A 128x41 segment goes 64x21 -> 32x10 -> 16x5 -> 8x2 through the blocks, then a global
    max-pool. Striding the first block, not pooling it, keeps it cheap on a CPU.
    """

    def __init__(self, settings: ModelSettings):
        super().__init__()
        widths = (1, *settings.channels)
        self.blocks = nn.Sequential(*(conv_block(a, b, first=i == 0)
                                      for i, (a, b) in enumerate(zip(widths, widths[1:]))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x.contiguous(memory_format=torch.channels_last))  # faster on CPUs
        return torch.amax(x, dim=(2, 3))   # global max-pool over frequency and time

    def fuse_batch_norm(self) -> None:
        """Fold each (eval-mode) batch norm into its conv: same outputs, one pass less."""
        for block in self.blocks:
            if isinstance(block[1], nn.BatchNorm2d):
                block[0] = fuse_conv_bn_eval(block[0], block[1])
                block[1] = nn.Identity()


class GenreCRNN(nn.Module):
    """Segments (B, S, n_mels, frames) with lengths (B,) -> genre logits (B, n_genres).

    Input is log-mel in dB; the per-band normalisation statistics are buffers of the model,
    so that they travel with its weights.

    Fused (settings.teacher_channels set), the model also holds the frozen teacher FCN
    (tagger.teacher) and takes each window's track tags (B, 50) (Teacher.track_tags): the
    genre head is linear over [CNN-RNN embedding, standardised tags], kept as two linear
    layers whose logits add (`branches` gives each one's, for training).
    """

    def __init__(self, settings: ModelSettings):
        super().__init__()
        self.settings = settings
        self.register_buffer("norm_mean", torch.zeros(settings.n_mels))
        self.register_buffer("norm_std", torch.ones(settings.n_mels))
        self.cnn = SegmentCNN(settings)
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[settings.rnn]
        self.rnn = rnn_cls(settings.channels[-1], settings.rnn_hidden, num_layers=settings.rnn_layers,
                           batch_first=True, bidirectional=settings.bidirectional)
        out = settings.rnn_hidden * (2 if settings.bidirectional else 1)
        self.dropout = nn.Dropout(settings.dropout)
        self.head = nn.Linear(out, settings.n_genres)
        if settings.teacher_channels:
            from tagger.teacher import TAGS, Teacher
            self.teacher = Teacher(settings.teacher_channels).requires_grad_(False)
            self.register_buffer("tag_mean", torch.zeros(len(TAGS)))
            self.register_buffer("tag_std", torch.ones(len(TAGS)))
            self.tag_head = nn.Linear(len(TAGS), settings.n_genres)

    @property
    def fused(self) -> bool:
        return bool(self.settings.teacher_channels)

    def train(self, mode: bool = True) -> GenreCRNN:
        super().train(mode)
        if self.fused:
            self.teacher.eval()             # frozen: its batch norms keep their statistics
        return self

    def forward(self, segments: torch.Tensor, lengths: torch.Tensor,
                tags: torch.Tensor | None = None) -> torch.Tensor:
        cnn, tag = self.branches(self.embed(segments, lengths), tags)
        return cnn if tag is None else self.settings.cnn_weight * cnn + tag

    def embed(self, segments: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S, n_mels, frames), (B,) -> (B, rnn outputs): the GRU's mean over time."""
        b, s, n_mels, frames = segments.shape
        x = (segments - self.norm_mean[:, None]) / self.norm_std[:, None]
        mask = torch.arange(s, device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, S)
        emb = x.new_zeros(b, s, self.settings.channels[-1])
        emb[mask] = self.cnn(x[mask].unsqueeze(1))       # only real segments go through the CNN
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=s)
        return (out * mask[..., None]).sum(1) / lengths.to(x.device)[:, None]  # mean over time

    def branches(self, pooled: torch.Tensor, tags: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The genre logits from the CNN-RNN's embedding, and from the tags (None unless
        fused)."""
        if self.fused and tags is None:
            raise ValueError("a fused model needs the track tags of each window")
        cnn = self.head(self.dropout(pooled))
        if not self.fused:
            return cnn, None
        tags = (tags.to(cnn.dtype) - self.tag_mean) / self.tag_std
        return cnn, self.tag_head(self.dropout(tags))
