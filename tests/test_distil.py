"""Distillation: the bank of augmented views (the teacher sees exactly each view's audio,
cached so that a rerun never runs it), the soft targets, and a distilled run on a tiny
generated "GTZAN" plus unlabelled generated audio, with a tiny random teacher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import SMALL, make_tiny_gtzan, run, write_track
from test_teacher import TINY, random_teacher
from test_teacher_genres import counted
from tagger import checkpoint
from tagger.decode import decode_excerpts
from tagger.distil import SPEED_STEPS, ViewBank, soft_targets, view_audio
from tagger.features import FeatureSettings
from tagger.recipe import TrainSettings
from tagger.teacher import load_teacher, track_tags
from tagger.train import train

QUICK = TrainSettings(epochs=2, patience=2, min_epochs=1, crops_per_clip=1, batch_size=8, views=2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    return load_teacher(random_teacher(folder / "t.pth"), expected_sha256=None, channels=TINY)


def test_view_zero_is_the_clean_audio_and_the_others_change_speed_and_gain():
    rng = np.random.default_rng(0)
    windows = [rng.uniform(-0.5, 0.5, 22050).astype(np.float32) for _ in range(2)]
    clean = view_audio(windows, 0, seed=7, sample_rate=22050)
    assert all(np.array_equal(c.numpy(), w) for c, w in zip(clean, windows))
    shifted = view_audio(windows, 1, seed=7, sample_rate=22050)
    assert len({len(w) for w in shifted}) == 1                  # one speed for the whole view
    assert len(shifted[0]) in {1050 * n for n in SPEED_STEPS}      # 22,050 * n/21, never 22,050
    again = view_audio(windows, 1, seed=7, sample_rate=22050)
    assert all(torch.equal(a, b) for a, b in zip(shifted, again))     # deterministic


def test_the_bank_holds_the_teachers_tags_of_each_view_and_a_rerun_never_runs_it(teacher, tmp_path):
    track = write_track(tmp_path / "a.flac", seconds=12.0, kind="noise")
    fs = FeatureSettings()
    views = ViewBank(tmp_path / "cache", teacher, fs, 3).get_views(str(track))
    assert len(views.mels) == 3 and views.tags.shape == (3, 50)
    ex = decode_excerpts(str(track), fs.sample_rate, fs.excerpt_windows, fs.excerpt_seconds)
    waves = view_audio(ex.waveforms, 2, seed=0, sample_rate=fs.sample_rate)   # any seed: check 0
    torch.testing.assert_close(views.tags[0], track_tags(teacher, [ex.waveforms])[0])
    calls = counted(teacher)
    again = ViewBank(tmp_path / "cache", teacher, fs, 3).get_views(str(track))
    assert calls == [] and torch.equal(again.tags, views.tags)
    assert not torch.equal(views.tags[1], views.tags[0]) and waves


def test_soft_targets_soften_with_the_temperature():
    log_probs = torch.log(torch.tensor([[0.8, 0.15, 0.05]]))
    assert torch.allclose(soft_targets(log_probs, 1.0), torch.tensor([[0.8, 0.15, 0.05]]))
    soft = soft_targets(log_probs, 2.0)
    assert soft[0, 0] < 0.8 and soft[0, 2] > 0.05 and torch.isclose(soft.sum(), torch.tensor(1.0))


def test_a_distilled_run_trains_on_views_of_labelled_and_unlabelled_audio(teacher, tmp_path):
    data = make_tiny_gtzan(tmp_path / "genres", {"train": 3, "valid": 2, "test": 1}, seconds=3.0)
    extra = tmp_path / "unlabelled"
    for i in range(3):
        write_track(extra / f"song{i}.ogg", seconds=4.0, kind="clicks", channels=2, seed=i)
    (extra / "readme.txt").write_text("not audio")
    report = train(data, tmp_path / "d.pt", ts=QUICK, ms=SMALL, device="cpu",
                   cache_dir=tmp_path / "cache", teacher=teacher, unlabelled=[extra])
    assert report["runs"][0]["epochs_run"] == 2
    ckpt = checkpoint.load(tmp_path / "d.pt")
    assert ckpt.model == dataclasses.replace(SMALL, temperature=ckpt.model.temperature,
                                             uncertain_below=0.5)     # no aux head kept
    banks = list((tmp_path / "cache").glob("views-*"))
    assert len(banks) == 1 and len(list(banks[0].iterdir())) == 18 + 3   # 18 clips, 3 files


def test_unlabelled_needs_the_teacher_and_audio(tmp_path):
    data = make_tiny_gtzan(tmp_path / "genres", {"train": 2, "valid": 1, "test": 0}, seconds=2.0)
    result = run("train", data, "--unlabelled", tmp_path, "--out", tmp_path / "x.pt", ok=1)
    assert result.stderr.startswith("Error: --unlabelled needs --teacher")
