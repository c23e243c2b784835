"""The teacher+LR reference: the teacher's tags per clip in the cache (a rerun never runs the
teacher), the logistic regression from tags to genres (fitted on training clips only), and
the reference beside the MFCC baseline in the reports of `train` and `evaluate`. A tiny
random teacher on a tiny generated "GTZAN"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import SMALL, make_tiny_gtzan, write_track
from conftest import run as run_cli         # `run` here is the training-run fixture
from test_teacher import TINY, random_teacher
from tagger.dataset import filtered_lists
from tagger.decode import decode_excerpts
from tagger.evaluate import evaluate_model
from tagger.features import FeatureSettings
from tagger.recipe import TrainSettings
from tagger.teacher import TAGS, excerpt_tags, load_teacher
from tagger.teacher_genres import TeacherCache
from tagger.train import train

QUICK = TrainSettings(epochs=2, patience=2, min_epochs=1, crops_per_clip=2, batch_size=8)


def tiny_teacher(folder: Path, seed: int = 0):
    return load_teacher(random_teacher(folder / f"t{seed}.pth", seed=seed), expected_sha256=None,
                        channels=TINY)


def counted(teacher) -> list:
    """Every forward pass of the teacher appends to the returned list (a torch hook)."""
    calls: list = []
    teacher.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    return calls


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_gtzan(tmp_path_factory.mktemp("gtzan") / "genres",
                           {"train": 4, "valid": 2, "test": 1}, seconds=3.0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> dict:
    """One training run with the teacher reference, and its cache and teacher."""
    folder = tmp_path_factory.mktemp("run")
    teacher = tiny_teacher(folder)
    report = train(data, folder / "m.pt", ts=QUICK, ms=SMALL, device="cpu", cache_dir=folder / "cache",
                   teacher=teacher)
    return {"report": report, "model": folder / "m.pt", "cache": folder / "cache", "teacher": teacher}


def test_teacher_tags_are_cached_and_a_rerun_never_runs_the_teacher(tmp_path):
    track = write_track(tmp_path / "a.wav", seconds=25.0, kind="noise")
    teacher = tiny_teacher(tmp_path)
    calls = counted(teacher)
    settings = FeatureSettings()
    tags = TeacherCache(tmp_path / "cache", teacher, settings).get(str(track))
    windows = decode_excerpts(str(track), settings.sample_rate, settings.excerpt_windows,
                              settings.excerpt_seconds).waveforms
    assert len(tags) == len(windows) == 3 and tags[0].shape == (len(TAGS),)
    torch.testing.assert_close(torch.stack(tags), excerpt_tags(teacher, windows))  # the scan's windows
    ran = sum(calls)
    again = TeacherCache(tmp_path / "cache", teacher, settings)      # a new run, the same cache
    assert torch.equal(torch.stack(again.get(str(track))), torch.stack(tags))
    assert sum(calls) == ran and again.hits == 1 and again.misses == 0


def test_teacher_cache_key_is_the_teachers_sha256_and_the_window_settings(tmp_path):
    first, second = tiny_teacher(tmp_path, 0), tiny_teacher(tmp_path, 1)
    assert first.sha256 != second.sha256
    folder = TeacherCache(tmp_path, first, FeatureSettings()).dir
    assert TeacherCache(tmp_path, second, FeatureSettings()).dir != folder
    assert TeacherCache(tmp_path, first, FeatureSettings(excerpt_seconds=5.0)).dir != folder
    assert TeacherCache(tmp_path, first, FeatureSettings(excerpt_windows=1)).dir != folder
    assert TeacherCache(tmp_path, first, FeatureSettings(n_mels=64)).dir == folder  # log-mels: no matter


def test_train_and_evaluate_reports_hold_the_teacher_reference_beside_the_baseline(run, data, tmp_path):
    r = run["report"]["runs"][0]
    assert set(r["teacher_reference"]) == set(r["baseline"])
    assert r["teacher_margin"]["accuracy"] == pytest.approx(
        r["model"]["accuracy"] - r["teacher_reference"]["accuracy"])
    calls = counted(run["teacher"])
    report = evaluate_model(data, run["model"], "test", "cpu", run["cache"], tmp_path / "e",
                            teacher=run["teacher"])
    assert sum(calls) == 0                                      # every clip's tags came from the cache
    assert set(report["teacher_reference"]) == set(report["baseline"])
    assert report["teacher_reference"] == r["teacher_reference"]      # one code path, the same figures
    assert set(report["teacher_margin"]) == set(report["margin"])
    assert json.loads((tmp_path / "e.report.json").read_text())["teacher_reference"] == r["teacher_reference"]
    plain = evaluate_model(data, run["model"], "test", "cpu", run["cache"], tmp_path / "p")
    assert "teacher_reference" not in plain and "baseline" in plain          # without --teacher: as before


def test_the_genre_map_is_fitted_on_training_clips_only(run, data, tmp_path):
    """A validation clip moved to a genre no training clip has: if the map saw it, it would
    predict that genre for it; fitted on the training part alone, it predicts as before."""
    moved = tmp_path / "genres"
    shutil.copytree(data, moved)
    valid = set(filtered_lists()["valid"])
    clip = next(p for p in sorted((moved / "metal").iterdir()) if p.stem in valid)
    (moved / "jazz").mkdir()
    clip.rename(moved / "jazz" / clip.name)
    before = evaluate_model(data, run["model"], "valid", "cpu", run["cache"], tmp_path / "a",
                            teacher=run["teacher"])["teacher_reference"]
    after = evaluate_model(moved, run["model"], "valid", "cpu", run["cache"], tmp_path / "b",
                           teacher=run["teacher"])["teacher_reference"]
    predicted = lambda m: [sum(row[j] for row in m["confusion"]) for j in range(len(m["confusion"]))]
    assert after["per_genre"]["jazz"]["support"] == 1 and after["per_genre"]["jazz"]["recall"] == 0
    assert predicted(after) == predicted(before)


def test_a_wrong_teacher_file_is_one_error_line(data, tmp_path):
    wrong = random_teacher(tmp_path / "best_model.pth")        # not msd_fcn's sha256
    for command in (["train", str(data), "--out", str(tmp_path / "m.pt"), "--epochs", "1"],
                    ["evaluate", str(data), "--part", "all", "--report", str(tmp_path / "e")]):
        result = run_cli(*command, "--teacher", wrong, ok=1)
        assert result.output.startswith("Error:") and result.output.count("\n") == 1
        assert "best_model.pth" in result.output and "sha256" in result.output
    assert not (tmp_path / "m.pt").exists()
