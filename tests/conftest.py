"""Shared fixtures: small random-weight checkpoints made through the project's own API, and
libraries of generated audio. No GTZAN, no GPU."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tagger import synth
from tagger.checkpoint import new_checkpoint, save
from tagger.cli import app
from tagger.features import FeatureSettings
from tagger.model import GenreCRNN, ModelSettings

# A small model keeps the tests quick; the plumbing is the same as the default's.
SMALL = ModelSettings(channels=(8, 16, 16, 32), rnn_hidden=32)


def make_checkpoint(path: Path, seed: int = 0, **model_settings) -> Path:
    torch.manual_seed(seed)
    net = GenreCRNN(ModelSettings(**{**SMALL.__dict__, **model_settings}))
    save(new_checkpoint(net, FeatureSettings(), provenance={"made_by": "tests"}), path)
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("models") / "random.pt")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads or writes the user's real index, model settings or config file."""
    monkeypatch.delenv("TAGGER_MODEL", raising=False)
    monkeypatch.delenv("TAGGER_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    monkeypatch.setenv("TAGGER_DB", str(tmp_path / "env-index.db"))
    monkeypatch.setenv("TAGGER_CACHE", str(tmp_path / "feature-cache"))


def write_track(path: Path, seconds: float = 3.0, kind: str = "tone", sample_rate: int = 22050,
                channels: int = 1, freq: float = 440.0, seed: int = 0) -> Path:
    """Encode a generated signal into `path` (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    signal = {
        "tone": lambda: synth.tone(freq, seconds, sample_rate, channels),
        "noise": lambda: synth.noise(seconds, sample_rate, channels, seed=seed),
        "clicks": lambda: synth.clicks(seconds, sample_rate, channels, seed=seed),
        "silence": lambda: synth.silence(seconds, sample_rate, channels),
    }[kind]()
    return synth.encode(path, signal, sample_rate)


@pytest.fixture
def library(tmp_path) -> Path:
    """One short track per supported format, in nested folders."""
    root = tmp_path / "Music"
    for i, name in enumerate(["a/one.mp3", "a/two.flac", "b/three.ogg", "b/four.opus",
                              "c/five.m4a", "c/six.wav", "c/seven.aiff"]):
        write_track(root / name, seconds=2.5, kind=("tone", "noise", "clicks")[i % 3],
                    channels=2, freq=220.0 * (i + 1), seed=i)
    return root


def chmod_works() -> bool:
    """Permission tests mean nothing as root (root reads a chmod 000 file)."""
    return hasattr(os, "geteuid") and os.geteuid() != 0


TINY_GENRES = {"blues": "tone", "metal": "noise", "disco": "clicks"}


def make_tiny_gtzan(root: Path, per_part: dict[str, int] | None = None, seconds: float = 4.0,
                    fmt: str = "wav") -> Path:
    """Three "genres" (blues = tones, metal = noise, disco = clicks) whose file names come
    from the shipped artist-filtered lists, so that the default split applies."""
    from tagger.dataset import filtered_lists
    per_part = per_part or {"train": 8, "valid": 4, "test": 3}
    lists = filtered_lists()
    for g, (genre, kind) in enumerate(TINY_GENRES.items()):
        for part, n in per_part.items():
            names = [name for name in lists[part] if name.startswith(genre + ".")][:n]
            for i, name in enumerate(names):
                seed = 100 * g + {"train": 0, "valid": 30, "test": 60}.get(part, 90) + i
                write_track(root / genre / f"{name}.{fmt}", seconds=seconds, kind=kind,
                            freq=150.0 + 37.0 * seed % 1500, seed=seed)
    return root


def run(*args, ok: int | None = 0, cli=app, **kw):
    """A tagger command through Typer's CliRunner (keywords go to invoke: input=, env=...).
    An exception other than SystemExit fails the test with its traceback, whatever the exit
    code (CliRunner would turn a crash into exit 1); asserts the exit code unless ok is None."""
    result = CliRunner().invoke(cli, [str(a) for a in args], **kw)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("the command crashed:\n" + "".join(traceback.format_exception(*result.exc_info))
                    + result.output, pytrace=False)
    if ok is not None:
        assert result.exit_code == ok, result.output
    return result
