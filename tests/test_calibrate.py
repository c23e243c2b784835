"""Calibration on synthetic predictions whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagger.calibrate import (calibration_report, certainty_split, fit_fusion, fit_temperature,
                              reliability)
from tagger.classify import pool_windows


def sampled(temperature: float, tracks: int = 4000, windows: int = 1, seed: int = 0):
    """Window logits, owners, and labels drawn from the tracks' probabilities at
    `temperature`: a model whose right temperature is exactly that."""
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(0, 3, (tracks * windows, 10)), dtype=torch.float32)
    owner = torch.arange(tracks).repeat_interleave(windows)
    probs = pool_windows(logits, owner, tracks, temperature).numpy().astype(float)
    y = np.array([rng.choice(10, p=p / p.sum()) for p in probs])
    return logits, owner, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_true_one(true_t):
    logits, owner, y = sampled(true_t)
    assert fit_temperature(logits, owner, y) == pytest.approx(true_t, rel=0.1)


def test_pooled_windows_are_calibrated_at_the_fitted_temperature():
    logits, owner, y = sampled(2.0, tracks=2000, windows=3, seed=1)
    t = fit_temperature(logits, owner, y)
    report = calibration_report(logits, torch.zeros_like(logits), owner, y, t, 0.5)
    assert report["nll_after"] <= report["nll_before"]
    assert report["after"]["ece"] < 0.03 < report["before"]["ece"]     # T=1 is overconfident
    assert sum(b["tracks"] for b in report["after"]["bins"]) == 2000


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])                  # 0.9 bin: half right; 0.6 bin: all right
    r = reliability(probs, y)
    assert r["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    busy = [b for b in r["bins"] if b["tracks"]]
    assert [(b["tracks"], b["accuracy"]) for b in busy] == [(2, 1.0), (2, 0.5)]


def test_the_threshold_splits_tracks_into_certain_and_uncertain():
    probs = np.array([[0.9, 0.1], [0.45, 0.55], [0.3, 0.7], [0.52, 0.48]])
    y = np.array([0, 0, 1, 1])
    split = certainty_split(probs, y, 0.6)
    assert split == {"threshold": 0.6, "uncertain": 2, "tracks": 4, "accuracy_certain": 1.0,
                     "accuracy_uncertain": 0.0}
    assert certainty_split(probs, y, 0.0)["accuracy_uncertain"] is None


def test_the_fused_weight_drops_a_branch_that_knows_nothing_and_keeps_one_that_knows():
    tag, owner, y = sampled(1.5, tracks=3000, seed=2)
    noise = torch.randn_like(tag) * 3
    weight, t = fit_fusion(noise, tag, owner, y)
    assert weight == 0.0 and t == pytest.approx(1.5, rel=0.1)
    rng = np.random.default_rng(3)                  # two views of one truth: both count
    truth = torch.tensor(rng.normal(0, 3, (3000, 10)), dtype=torch.float32)
    probs = torch.softmax(truth, -1).numpy().astype(float)
    y2 = np.array([rng.choice(10, p=p / p.sum()) for p in probs])
    cnn = truth / 2 + torch.randn_like(truth) * 0.5
    weight, _ = fit_fusion(cnn, truth / 2 + torch.randn_like(truth) * 0.5, owner, y2)
    assert weight >= 0.5
    report = calibration_report(noise, tag, owner, y, t, 0.5, 0.0)
    assert report["accuracy_after"] > report["accuracy_before"]
