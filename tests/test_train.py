"""Training and evaluation on a tiny generated "GTZAN" (tones, noise, clicks): splits, the
feature cache, metrics, the whole train -> checkpoint -> evaluate/scan path, and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL, TINY_GENRES, make_tiny_gtzan, run, write_track
from tagger.calibrate import UNCERTAIN_BELOW
from tagger.checkpoint import load
from tagger.classify import Classifier
from tagger.crawl import Candidate
from tagger.dataset import (FeatureCache, filtered_lists, filtered_split, find_clips, fold_splits,
                            parse_list, parse_split, random_split)
from tagger.errors import UserError
from tagger.features import FeatureSettings, cut_segments, log_mel_segments
from tagger.metrics import confusion_matrix, summarise
from tagger.pool import decode_job
from tagger.recipe import TrainSettings
from tagger.scanner import job_for
from tagger.train import Reporter, resume_path, train

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = TrainSettings(epochs=4, patience=4, crops_per_clip=2, batch_size=8)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_gtzan(tmp_path_factory.mktemp("gtzan") / "genres")


@pytest.fixture(scope="session")
def trained(tiny, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained") / "tiny.pt"
    cache = tmp_path_factory.mktemp("cache")
    report = train(tiny, out, ts=QUICK, ms=SMALL, device="cpu", cache_dir=cache)
    return out, report


# --- data and splits ---------------------------------------------------------------------------

def test_shipped_filtered_lists_parse_and_do_not_overlap():
    lists = filtered_lists()
    assert {k: len(v) for k, v in lists.items()} == {"train": 443, "valid": 197, "test": 290}
    assert lists["train"][0] == "blues.00029"
    names = [n for part in lists.values() for n in part]
    assert len(names) == len(set(names))


def test_list_lines_match_clip_names_whatever_the_extension():
    assert parse_list("# comment\nblues/blues.00029.wav\n\r\njazz\\jazz.00001.au\nrock.00002\n") == [
        "blues.00029", "jazz.00001", "rock.00002"]


def test_find_clips_reads_folders_and_prefixed_names(tmp_path):
    write_track(tmp_path / "Blues" / "blues.00000.flac", seconds=1.0)
    write_track(tmp_path / "jazz.00001.au", seconds=1.0)            # prefixed name, no folder
    write_track(tmp_path / "misc" / "hiphop_00002.mp3", seconds=1.0)
    write_track(tmp_path / "misc" / "song.wav", seconds=1.0)        # no genre anywhere
    write_track(tmp_path / "blues" / "blues.00000.wav", seconds=1.0)  # same clip, other format
    (tmp_path / "notes.txt").write_text("not audio")
    found = find_clips(tmp_path)
    assert sorted((c.genre, c.name) for c in found.clips) == [
        ("blues", "blues.00000"), ("hiphop", "hiphop_00002"), ("jazz", "jazz.00001")]
    assert [Path(p).name for p in found.unlabelled] == ["song.wav"]
    assert len(found.duplicates) == 1


def test_filtered_split_counts_missing_and_unlisted_clips(tiny, tmp_path):
    found = find_clips(tiny)
    split = filtered_split(found.clips)
    assert split.counts() == {"train": 24, "valid": 12, "test": 9}
    assert split.missing == {"train": 443 - 24, "valid": 197 - 12, "test": 290 - 9}
    assert split.unlisted == 0
    parts = [set(c.name for c in clips) for clips in split.parts.values()]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    lists = filtered_lists()
    assert all(c.name in lists["valid"] for c in split.valid)


def test_random_and_fold_splits_keep_every_track_in_one_part(tiny):
    clips = find_clips(tiny).clips
    split = random_split(clips, seed=3)
    names = [c.name for clips_ in split.parts.values() for c in clips_]
    assert sorted(names) == sorted(c.name for c in clips)            # each track exactly once
    assert {c.genre for c in split.test} == set(TINY_GENRES)         # stratified
    assert random_split(clips, seed=3).parts == split.parts          # the seed reproduces it
    assert random_split(clips, seed=4).parts != split.parts
    folds = fold_splits(clips, 5, seed=0)
    tested = [c.name for f in folds for c in f.test]
    assert sorted(tested) == sorted(c.name for c in clips)           # tested once each
    for f in folds:
        train, valid, test = ({c.name for c in p} for p in (f.train, f.valid, f.test))
        assert not (train & valid) and not (train & test) and not (valid & test)
        assert len(train | valid | test) == len(clips)


def test_split_option_spellings():
    assert parse_split("filtered") == ("filtered", 5)
    assert parse_split("folds 10") == ("folds", 10)
    assert parse_split("folds=3") == ("folds", 3)
    assert parse_split("Random") == ("random", 5)
    assert parse_split("all") == ("all", 5)
    with pytest.raises(UserError):
        parse_split("random 3")
    with pytest.raises(UserError):
        parse_split("artist")


# --- features -----------------------------------------------------------------------------------

def test_train_time_and_scan_time_features_are_identical(tmp_path):
    """The cache computes what scan computes, with the checkpoint's own (non-default) settings."""
    features = FeatureSettings(hop_length=256, n_mels=64, f_max=8000.0, excerpt_windows=2,
                               excerpt_seconds=2.5)
    ckpt_path = tmp_path / "odd.pt"
    from tagger.checkpoint import new_checkpoint, save
    from tagger.model import GenreCRNN, ModelSettings
    save(new_checkpoint(GenreCRNN(ModelSettings(**{**SMALL.__dict__, "n_mels": 64})), features), ckpt_path)
    track = write_track(tmp_path / "song.flac", seconds=9.0, kind="clicks", channels=2)

    classifier = Classifier(load(ckpt_path), "cpu")
    excerpts = decode_job(job_for(classifier)(Candidate(str(track), 0, 0)))   # scan's worker path
    scan_segments, scan_lengths = log_mel_segments(
        [torch.from_numpy(w) for w in excerpts.waveforms], classifier.settings, classifier.log_mel)

    cache = FeatureCache(tmp_path / "cache", load(ckpt_path).features)
    train_segments, train_lengths = cut_segments(cache.get(str(track)), features)
    assert scan_segments.shape[2] == 64 and len(excerpts.waveforms) == 2
    assert torch.equal(scan_lengths, train_lengths)
    assert torch.equal(scan_segments, train_segments)
    again, _ = cut_segments(cache.get(str(track)), features)       # from the file on disk now
    assert cache.hits == 1 and cache.misses == 1
    assert torch.equal(again, scan_segments)


def test_cache_is_keyed_by_content_and_settings(tmp_path):
    track = write_track(tmp_path / "a.wav", seconds=2.0)
    cache = FeatureCache(tmp_path / "cache", FeatureSettings())
    first = cache.get(str(track))
    write_track(track, seconds=2.0, kind="noise")                   # same name, new content
    second = cache.get(str(track))
    assert cache.misses == 2 and not torch.equal(first[0], second[0])
    other = FeatureCache(tmp_path / "cache", FeatureSettings(n_mels=64))
    assert other.get(str(track))[0].shape[0] == 64 and other.misses == 1


# --- metrics ------------------------------------------------------------------------------------

def test_metrics_on_a_known_confusion_matrix():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 3, 1, 1, 2, 0, 2, 2]
    m = confusion_matrix(y_true, y_pred, 4)
    assert m.tolist() == [[2, 1, 0, 1], [0, 2, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]
    s = summarise(m, ["a", "b", "c", "d"])
    assert s["accuracy"] == pytest.approx(0.7)
    # a: p 2/3 r 2/4; b: p 2/3 r 1; c: p 1 r 3/4; d: predicted once, never true -> 0
    f1 = [2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.75 / 1.75, 0.0]
    assert s["macro_f1"] == pytest.approx(np.mean(f1))
    assert s["per_genre"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": f1[0], "support": 4})
    from sklearn.metrics import f1_score
    assert s["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


# --- training end to end ---------------------------------------------------------------------------

def test_training_beats_chance_and_writes_checkpoint_report_and_figures(trained):
    out, report = trained
    run = report["runs"][0]
    assert run["split"] == "filtered" and run["evaluated_on"] == "test"
    assert run["model"]["tracks"] == 9
    assert run["model"]["accuracy"] >= 0.75                      # chance is 1/3
    assert set(run["baseline"]) >= {"accuracy", "macro_f1", "confusion"}
    assert run["margin"]["accuracy"] == pytest.approx(run["model"]["accuracy"] - run["baseline"]["accuracy"])
    assert 1 <= run["best_epoch"] <= run["epochs_run"] <= QUICK.epochs
    written = json.loads(out.with_name("tiny.report.json").read_text())
    assert written["split"] == "filtered" and written["model_id"] == report["model_id"]
    for figure in ("tiny.confusion.png", "tiny.curves.png", "tiny.reliability.png"):
        assert out.with_name(figure).read_bytes()[:8] == PNG
    assert not resume_path(out).exists()
    calibration = run["calibration"]    # fitted on the valid clips, measured on the evaluated
    assert calibration["measured_on"] == run["evaluated_on"] and calibration["tracks"] == 9
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert 0 <= calibration["after"]["ece"] <= 1


def test_trained_checkpoint_round_trip(trained, tiny):
    out, report = trained
    ckpt = load(out)
    assert ckpt.model_id == report["model_id"]
    assert ckpt.metrics["accuracy"] == report["runs"][0]["model"]["accuracy"]
    assert ckpt.provenance["split"] == "filtered" and ckpt.provenance["seed"] == 0
    assert ckpt.features == FeatureSettings()
    assert ckpt.model == dataclasses.replace(SMALL, temperature=report["runs"][0]["calibration"][
        "temperature"], uncertain_below=UNCERTAIN_BELOW)
    # the normalisation statistics travel in the checkpoint
    assert not torch.equal(ckpt.state_dict["norm_mean"], torch.zeros(128))
    probs = Classifier(ckpt, "cpu").classify([[np.zeros(22050, np.float32)]])
    assert probs.shape == (1, 10) and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_evaluate_command_scores_a_checkpoint_beside_the_baseline(trained, tiny, tmp_path):
    out, report = trained
    result = run("evaluate", tiny, "--model", out, "--part", "test", "--report", tmp_path / "eval")
    saved = json.loads((tmp_path / "eval.report.json").read_text())
    first = report["runs"][0]
    scored = {"evaluated_on", "evaluated_genres", "model", "baseline", "margin"}   # one schema
    assert scored <= set(saved) and scored <= set(first)
    for key in ("evaluated_genres", "model", "baseline", "margin"):
        assert set(saved[key]) == set(first[key]), key
    assert saved["model"]["confusion"] == first["model"]["confusion"]
    assert saved["model"]["accuracy"] == pytest.approx(first["model"]["accuracy"])
    assert saved["baseline"] == first["baseline"]
    assert saved["checkpoint"] == str(out) and saved["model_id"] == report["model_id"]
    assert (tmp_path / "eval.confusion.png").read_bytes()[:8] == PNG
    assert f"track accuracy {saved['model']['accuracy']:.3f}" in result.output
    bad = run("evaluate", tiny, "--model", out, "--part", "nope", ok=1)
    assert "Error: unknown part 'nope'" in bad.output


def test_train_command_end_to_end(tiny, tmp_path):
    out = tmp_path / "m.pt"
    result = run("train", tiny, "--out", out, "--epochs", "2", "--split", "random", "--seed", "1")
    assert "split: random" in result.output and "Checkpoint:" in result.output
    assert "Clips of the split lists" not in result.output        # only the filtered split has lists
    provenance = load(out).provenance
    assert provenance["split"] == "random"
    assert out.with_name("m.report.json").exists()
    umask = os.umask(0)
    os.umask(umask)
    for written in (out, out.with_name("m.report.json")):       # readable as a plain open() makes them
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask

    # one more clip in the folder would reshuffle a random split: evaluate scores the parts
    # the model was trained with, never its own training clips
    data = tmp_path / "more"
    shutil.copytree(tiny, data)
    write_track(data / "blues" / "blues.00099.wav", seconds=4.0, kind="tone", freq=300.0)
    run("evaluate", data, "--model", out, "--part", "test", "--report", tmp_path / "again")
    saved = json.loads((tmp_path / "again.report.json").read_text())
    assert saved["model"]["tracks"] == len(provenance["parts"]["test"])


def test_unusable_outputs_and_data_are_one_line_errors(tiny, tmp_path):
    (tmp_path / "afile").write_text("")
    result = run("train", tiny, "--out", tmp_path / "afile" / "m.pt", ok=1)
    assert result.output.startswith("Error:") and "cannot write" in result.output
    one_genre = tmp_path / "one"
    shutil.copytree(tiny / "blues", one_genre / "blues")
    assert "only one genre (blues)" in run("train", one_genre, "--out", tmp_path / "m.pt", ok=1).output
    run("train", tiny, "--seed", "-1", ok=2)


def test_same_names_in_two_genre_folders_are_two_clips(tmp_path):
    write_track(tmp_path / "rock" / "track01.wav", seconds=1.0)
    write_track(tmp_path / "jazz" / "track01.wav", seconds=1.0)
    found = find_clips(tmp_path)
    assert sorted(c.genre for c in found.clips) == ["jazz", "rock"] and not found.duplicates


def test_a_damaged_cache_entry_is_computed_again(tmp_path):
    track = write_track(tmp_path / "a.wav", seconds=2.0)
    cache = FeatureCache(tmp_path / "cache", FeatureSettings())
    first = cache.get(str(track))
    entry, = (tmp_path / "cache").rglob("*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    again = cache.get(str(track))
    assert cache.misses == 2 and torch.equal(first[0], again[0])


def test_cross_validation_reports_the_spread_and_writes_no_checkpoint(tiny, tmp_path):
    out = tmp_path / "cv.pt"
    report = train(tiny, out, "folds", 3, ts=TrainSettings(epochs=1, crops_per_clip=1, batch_size=8),
                   ms=SMALL, device="cpu")
    cv = report["cross_validation"]
    assert len(cv["accuracy"]["values"]) == 3 and cv["accuracy"]["std"] >= 0
    assert cv["pooled"]["tracks"] == 45                               # every clip tested once
    assert not out.exists() and out.with_name("cv.report.json").exists()


def test_split_all_trains_on_every_clip_for_exactly_the_epochs_given(tiny, tmp_path):
    out = tmp_path / "all.pt"
    settings = TrainSettings(epochs=4, patience=1, min_epochs=1, crops_per_clip=1, batch_size=8)
    report = train(tiny, out, "all", ts=settings, ms=SMALL, device="cpu")
    only = report["runs"][0]
    assert only["parts"] == {"train": 45, "valid": 0, "test": 0} and only["evaluated_on"] is None
    assert only["epochs_run"] == only["best_epoch"] == 4 and "model" not in only   # no early stop
    ckpt = load(out)
    assert ckpt.provenance["split"] == "all" and "accuracy" not in ckpt.metrics
    assert out.with_name("all.curves.png").exists() and not out.with_name("all.confusion.png").exists()
    assert "no valid clip is held out" in run("evaluate", tiny, "--model", out, ok=1).output


def test_split_all_takes_its_calibration_from_a_measuring_runs_report(trained, tiny, tmp_path):
    _, report = trained
    measured = trained[0].with_name("tiny.report.json")
    out = tmp_path / "all.pt"
    run("train", tiny, "--out", out, "--epochs", "1", "--split", "all", "--calibration-from",
        measured, "--uncertain-below", "0.4")
    ms = load(out).model
    assert (ms.temperature, ms.uncertain_below) == (report["runs"][0]["calibration"]["temperature"], 0.4)
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": []}')
    worse = tmp_path / "worse.json"
    worse.write_text('{"runs": [{"calibration": {"temperature": -1, "cnn_weight": 1}}]}')
    for args, message in ((["--split", "all", "--calibration-from", str(bad)], "not the .report.json"),
                          (["--split", "all", "--calibration-from", str(worse)], "not the .report.json"),
                          (["--calibration-from", str(measured)], "is for --split all")):
        result = run("train", tiny, "--out", tmp_path / "x.pt", *args, ok=1)
        assert message in result.output, result.output


class StopAfter(Reporter):
    def __init__(self, epochs: int):
        self.left = epochs

    def epoch(self, row, improved):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_resume_continues_exactly_where_training_stopped(tiny, tmp_path):
    settings = TrainSettings(epochs=3, crops_per_clip=1, batch_size=8, seed=5)
    whole = train(tiny, tmp_path / "whole.pt", ts=settings, ms=SMALL, device="cpu")
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        train(tiny, out, ts=settings, ms=SMALL, device="cpu", reporter=StopAfter(2))
    assert resume_path(out).exists() and not out.exists()
    resumed = train(tiny, out, ts=settings, ms=SMALL, device="cpu", resume=True)
    assert [r["train_loss"] for r in resumed["runs"][0]["history"]] == [
        r["train_loss"] for r in whole["runs"][0]["history"]]
    a, b = load(tmp_path / "whole.pt").state_dict, load(out).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a state saved by other settings is refused, not silently mixed in
    with pytest.raises(KeyboardInterrupt):
        train(tiny, out, ts=settings, ms=SMALL, device="cpu", reporter=StopAfter(1))
    with pytest.raises(UserError, match="other data, split or settings"):
        train(tiny, out, ts=TrainSettings(epochs=4, seed=5), ms=SMALL, device="cpu", resume=True)


def test_bad_data_folders_give_one_line_errors(tmp_path):
    assert "not a folder" in run("train", tmp_path / "nowhere", ok=1).output
    (tmp_path / "empty").mkdir()
    assert "no audio clips with a genre" in run("train", tmp_path / "empty", ok=1).output
    run("train", tmp_path / "empty", "--split", "folds 1", ok=1)


def test_unreadable_clips_are_reported_and_training_goes_on(tiny, tmp_path):
    data = tmp_path / "genres"
    shutil.copytree(tiny, data)
    (data / "blues" / "blues.00000.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    report = train(data, tmp_path / "m.pt", ts=TrainSettings(epochs=1, crops_per_clip=1, batch_size=8),
                   ms=SMALL, device="cpu")
    assert list(report["data"]["unreadable"]) == [str(data / "blues" / "blues.00000.wav")]
    assert report["data"]["clips"] == 44


# --- splits that cannot measure anything ----------------------------------------------------

class Notes(Reporter):
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


def test_a_split_whose_training_part_lacks_a_genre_stops_before_reading_clips(tmp_path):
    data = make_tiny_gtzan(tmp_path / "genres", {"train": 2, "valid": 1, "test": 1}, seconds=2.0)
    for clip in filtered_lists()["train"]:
        if clip.startswith(("blues.", "metal.")):
            (data / clip.split(".")[0] / f"{clip}.wav").unlink(missing_ok=True)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as caught:
        train(data, tmp_path / "m.pt", ts=QUICK, ms=SMALL, device="cpu", cache_dir=cache)
    message = str(caught.value)
    assert "train part has no clips of blues, metal" in message and "\n" not in message
    assert "--split random" in message and "--split \"folds K\"" in message
    assert not cache.exists()                       # stopped before decoding anything
    result = run("train", data, "--out", tmp_path / "m.pt", ok=1)
    assert result.output.startswith("Error: the filtered split") and result.output.count("\n") == 1


def test_a_held_out_part_without_a_genre_is_said_and_recorded(tmp_path):
    data = make_tiny_gtzan(tmp_path / "genres", {"train": 2, "valid": 1, "test": 0}, seconds=2.0)
    valid_disco, = [n for n in filtered_lists()["valid"] if n.startswith("disco.")][:1]
    (data / "disco" / f"{valid_disco}.wav").unlink()
    notes = Notes()
    report = train(data, tmp_path / "m.pt", ts=TrainSettings(epochs=1, crops_per_clip=1, batch_size=8),
                   ms=SMALL, device="cpu", reporter=notes)
    assert report["runs"][0]["missing_genres"] == {"valid": ["disco"]}
    assert any("valid part has no clips of disco" in n for n in notes.notes), notes.notes


def test_evaluate_part_all_says_the_training_clips_are_included(trained, tiny, tmp_path):
    out, _ = trained
    result = run("evaluate", tiny, "--model", out, "--part", "all", "--report", tmp_path / "all")
    assert "includes the 24 clips this model trained on" in result.output
    saved = json.loads((tmp_path / "all.report.json").read_text())
    assert saved["training_clips_included"] == 24
    held = run("evaluate", tiny, "--model", out, "--part", "test", "--report", tmp_path / "test")
    assert "trained on" not in held.output
    assert "training_clips_included" not in json.loads((tmp_path / "test.report.json").read_text())


def test_evaluate_on_the_shipped_model_says_why_not_and_what_to_run(tiny, tmp_path):
    result = run("evaluate", tiny, "--cache", tmp_path / "cache", ok=1)
    assert result.output.startswith("Error: the shipped default model was trained on every clip")
    assert result.output.count("\n") == 1
    assert "tagger train" in result.output and "--part all" in result.output
    assert not (tmp_path / "cache").exists()        # said before reading any clip
