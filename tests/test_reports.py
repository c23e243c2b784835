"""Reports of `evaluate` (and `train`): where they may be written, and the --part option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tagger
from conftest import make_tiny_gtzan, run
from tagger.errors import UserError
from tagger.evaluate import evaluate_model
from tagger.modelfile import default_model_path
from tagger.recipe import TrainSettings
from tagger.train import train

PACKAGE = Path(tagger.__file__).resolve().parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_gtzan(tmp_path_factory.mktemp("gtzan") / "genres",
                           {"train": 2, "valid": 1, "test": 1}, seconds=2.0)


def report_files() -> set[Path]:
    return {p for p in PACKAGE.rglob("*") if ".report." in p.name or p.suffix == ".png"}


def test_evaluate_never_writes_a_report_into_the_installed_package(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = report_files()
    try:
        report = evaluate_model(data, default_model_path("fast"), "all", "cpu", tmp_path / "cache")
        assert report["files"][0] == str(tmp_path / "fast.all.report.json")    # as the CLI does
        assert (tmp_path / "fast.all.report.json").exists()
        with pytest.raises(UserError, match="inside the installed tagger package"):
            evaluate_model(data, default_model_path("fast"), "all", "cpu", tmp_path / "cache",
                           PACKAGE / "data" / "mine")
        with pytest.raises(UserError, match="inside the installed tagger package"):
            train(data, PACKAGE / "data" / "mine.pt", ts=TrainSettings(epochs=1), device="cpu",
                  cache_dir=tmp_path / "cache")
    finally:
        written = report_files() - before
        for path in written:
            path.unlink()
    assert not written


def test_evaluate_takes_part_and_still_the_old_split_spelling(data, model_path, tmp_path):
    for option, part, clips in (("--part", "test", 3), ("--split", "train", 6)):
        base = tmp_path / option.strip("-")
        result = run("evaluate", data, "--model", model_path, option, part, "--report", base)
        saved = json.loads(base.with_name(base.name + ".report.json").read_text())
        assert saved["evaluated_on"] == part and saved["model"]["tracks"] == clips
        assert f"{part}: {clips} clips" in result.stdout
    help_text = run("evaluate", "--help").stdout
    assert "--part" in help_text and "--split" not in help_text
