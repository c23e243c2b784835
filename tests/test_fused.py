"""The fused model (the CNN-RNN plus the frozen teacher FCN's track tags as a second input
to the genre head): training, the checkpoint, and scan and evaluation giving the same
probabilities. A tiny random teacher on a tiny generated "GTZAN"."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import SMALL, make_checkpoint, make_tiny_gtzan, run
from test_teacher import TINY, random_teacher
from tagger import checkpoint
from tagger.classify import Classifier
from tagger.dataset import find_clips
from tagger.decode import decode_excerpts
from tagger.errors import CheckpointError, UserError
from tagger.evaluate import evaluate_model
from tagger.model import GenreCRNN
from tagger.recipe import TrainSettings
from tagger.teacher import load_teacher, track_tags
from tagger.train import train

QUICK = TrainSettings(epochs=2, patience=2, min_epochs=1, crops_per_clip=2, batch_size=8)
FUSED = dataclasses.replace(SMALL, teacher_channels=TINY)


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fused")
    data = make_tiny_gtzan(folder / "genres", {"train": 4, "valid": 2, "test": 1}, seconds=3.0)
    teacher = load_teacher(random_teacher(folder / "t.pth"), expected_sha256=None, channels=TINY)
    report = train(data, folder / "f.pt", ts=QUICK, ms=FUSED, device="cpu",
                   cache_dir=folder / "cache", teacher=teacher)
    return {"data": data, "model": folder / "f.pt", "report": report, "teacher": teacher,
            "cache": folder / "cache"}


def test_the_checkpoint_carries_the_frozen_teacher_and_the_calibration(fused):
    ckpt = checkpoint.load(fused["model"])
    assert ckpt.model.teacher_channels == TINY
    for name, tensor in fused["teacher"].state_dict().items():     # frozen: as loaded
        assert torch.equal(ckpt.state_dict[f"teacher.{name}"], tensor), name
    assert not torch.equal(ckpt.state_dict["tag_std"], torch.ones(50))   # fitted on train clips
    run_ = fused["report"]["runs"][0]
    assert ckpt.model.temperature == run_["calibration"]["temperature"]
    assert ckpt.model.cnn_weight == run_["calibration"]["cnn_weight"]
    assert ckpt.model.uncertain_below == 0.5
    assert ckpt.metrics["calibration"]["ece_after"] == run_["calibration"]["after"]["ece"]


def test_scan_and_evaluation_give_the_same_probabilities(fused, tmp_path):
    """scan runs the teacher itself on the decoded windows; evaluation reads the cached tags."""
    ckpt = checkpoint.load(fused["model"])
    clips = sorted(find_clips(fused["data"]).clips, key=lambda c: c.name)[:3]
    fs = ckpt.features
    excerpts = [decode_excerpts(c.path, fs.sample_rate, fs.excerpt_windows, fs.excerpt_seconds)
                for c in clips]
    scanned = Classifier(ckpt, "cpu").classify([e.waveforms for e in excerpts])
    net = ckpt.build()
    tags = track_tags(net.teacher, [e.waveforms for e in excerpts], fs.sample_rate)
    from tagger.scoring import predict
    from tagger.dataset import FeatureCache
    cache = FeatureCache(tmp_path / "cache", fs)
    evaluated = predict(net, [cache.get(c.path) for c in clips], fs, torch.device("cpu"), list(tags))
    np.testing.assert_allclose(scanned, evaluated, atol=1e-5)
    assert np.allclose(scanned.sum(1), 1.0)


def test_evaluate_scores_a_fused_checkpoint_as_training_did(fused, tmp_path):
    trained = fused["report"]["runs"][0]
    report = evaluate_model(fused["data"], fused["model"], trained["evaluated_on"], "cpu",
                            fused["cache"], tmp_path / "eval")
    assert report["model"]["confusion"] == trained["model"]["confusion"]


def test_cli_scans_with_a_fused_model(fused, library, tmp_path):
    db = tmp_path / "i.db"
    run("scan", library, "--db", db, "--model", fused["model"], "--workers", "0")
    rows = json.loads(run("query", "--db", db, "--format", "json").stdout)
    assert len(rows) == 7 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)


def test_a_fused_run_needs_the_teacher(fused, tmp_path):
    with pytest.raises(UserError, match="--teacher"):
        train(fused["data"], tmp_path / "x.pt", ts=QUICK, ms=FUSED, device="cpu",
              cache_dir=tmp_path / "cache")
    result = run("train", fused["data"], "--fused", "--out", tmp_path / "x.pt", ok=1)
    assert result.stderr.startswith("Error: --fused needs --teacher")


def test_a_fused_model_refuses_to_run_without_tags():
    net = GenreCRNN(FUSED).eval()
    with pytest.raises(ValueError, match="track tags"):
        net(torch.zeros(1, 1, 128, 41), torch.tensor([1]))


def test_a_checkpoint_whose_teacher_has_the_wrong_blocks_is_refused(tmp_path):
    path = make_checkpoint(tmp_path / "f.pt", teacher_channels=TINY)
    payload = torch.load(path, weights_only=True)
    payload["model"]["teacher_channels"] = [4, 4, 4]
    payload["state_dict"]["tag_std"] = torch.zeros(50)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="teacher_channels is \\[4, 4, 4\\]; expected an "
                                              "empty list or a list of 5 integers"):
        checkpoint.load(path)
    payload["model"]["teacher_channels"] = list(TINY)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="tag_std holds 50 values <= 0"):
        checkpoint.load(path)


def test_a_checkpoint_made_before_fusion_and_calibration_loads_with_their_defaults(tmp_path):
    path = make_checkpoint(tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    for key in ("teacher_channels", "temperature", "uncertain_below"):
        del payload["model"][key]
    torch.save(payload, path)
    ms = checkpoint.load(path).model
    assert (ms.teacher_channels, ms.temperature, ms.uncertain_below) == ((), 1.0, 0.0)
    del payload["model"]["rnn"]                         # a setting that was always there
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="model.rnn is missing"):
        checkpoint.load(path)
