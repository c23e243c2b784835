"""The msd_fcn teacher: front end, loading refusals, batch independence, the 22,050 Hz
window helper (a tiny random teacher), and the real weights' outputs pinned on generated
audio (skipped when ../shared/teachers/msd_fcn is absent).

To rewrite the pinned fixture (only after a deliberate change to the front end):
    TAGGER_WRITE_TEACHER_FIXTURE=1 python -m pytest tests/test_teacher.py -k pinned
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from tagger import synth
from tagger.errors import CheckpointError
from tagger.teacher import (INPUT_SAMPLES, SAMPLE_RATE, SHA256, TAGS, Teacher, excerpt_tags,
                            fit_length, load_teacher, log_mel)

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "teachers" / "msd_fcn"
FIXTURE = Path(__file__).parent / "fixtures" / "teacher_pinned.json"
TINY = (4, 4, 4, 4, 4)


def pinned_audio() -> list[np.ndarray]:
    """One decoded-style 5 s window at 22,050 Hz: a tone over clicks (3 s), then noise (2 s)."""
    mix = synth.tone(440.0, 3.0, amplitude=0.3)[0] + synth.clicks(3.0, rate_hz=2.0)[0] * 0.5
    return [np.concatenate([mix, synth.noise(2.0, seed=1)[0]]).astype(np.float32)]


@pytest.mark.slow
def test_pinned_outputs_of_the_real_teacher():
    weights = REAL_DIR / "best_model.pth"
    if not weights.is_file():
        pytest.skip(f"the real teacher is not at {weights}")
    assert (REAL_DIR / "tags.txt").read_text().splitlines() == list(TAGS)
    got = excerpt_tags(load_teacher(weights), pinned_audio())
    if os.environ.get("TAGGER_WRITE_TEACHER_FIXTURE"):
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps({
            "teacher_sha256": SHA256,
            "audio": "tests/test_teacher.py pinned_audio(), through excerpt_tags",
            "probabilities": [[round(p, 7) for p in row] for row in got.tolist()],
        }) + "\n")
    pinned = json.loads(FIXTURE.read_text())
    assert pinned["teacher_sha256"] == SHA256
    torch.testing.assert_close(got, torch.tensor(pinned["probabilities"]), atol=1e-4, rtol=0)


def test_front_end_matches_torchaudio():
    wave = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 40000)).astype("f4"))
    wave[1, 10000:20000] = 0.0                       # silence reaches the 1e-10 floor
    reference = torchaudio.transforms.AmplitudeToDB()(torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, f_min=0.0, f_max=8000.0, n_mels=96)(wave))
    net = Teacher(TINY)
    ours = log_mel(wave, net.spec.spectrogram.window, net.spec.mel_scale.fb)
    assert ours.shape == (2, 96, 1 + 40000 // 256)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def random_teacher(path: Path, edits: dict | None = None, seed: int = 0) -> Path:
    """A tiny FCN with random weights and BatchNorm statistics, saved as a plain state dict
    like best_model.pth; `edits` change it (a value of None deletes the key)."""
    torch.manual_seed(seed)
    net = Teacher(TINY)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    state = net.state_dict()
    for key, value in (edits or {}).items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Teacher:
    return load_teacher(random_teacher(tmp_path_factory.mktemp("teacher") / "t.pth"),
                        expected_sha256=None, channels=TINY)


def test_random_teacher_loads_in_eval_mode_with_50_probabilities(tiny):
    assert not tiny.training
    windows = torch.from_numpy(synth.noise(29.0, SAMPLE_RATE, channels=2))
    probs = tiny.tags(windows)
    assert probs.shape == (2, len(TAGS)) and len(TAGS) == 50
    assert ((probs > 0) & (probs < 1)).all()
    with pytest.raises(ValueError, match="464,000 samples"):
        tiny.tags(windows[:, :16000])


def test_wrong_sha256_is_refused(tmp_path):
    path = random_teacher(tmp_path / "best_model.pth")
    with pytest.raises(CheckpointError) as info:
        load_teacher(path, channels=TINY)
    message = str(info.value)
    assert "sha256" in message and "\n" not in message and message.startswith(str(path))


@pytest.mark.parametrize("edits, expected", [
    ({"dense.bias": None}, "Missing key"),
    ({"extra.weight": torch.zeros(3)}, "Unexpected key"),
    ({"layer3.conv.weight": torch.zeros(5, 4, 3, 3)}, "size mismatch"),
])
def test_keys_and_shapes_are_checked_strictly(tmp_path, edits, expected):
    path = random_teacher(tmp_path / "t.pth", edits)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_teacher(path, expected_sha256=None, channels=TINY)
    assert "\n" not in str(info.value)


def test_unreadable_files_are_refused_in_one_line(tmp_path):
    pickled = tmp_path / "code.pth"
    pickled.write_bytes(pickle.dumps(Path("x"), protocol=2))  # not a tensor: never unpickled
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not torch")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    for path, reason in [(pickled, "refused to load"), (junk, "refused to load"),
                         (listed, "not a plain PyTorch state dict"),
                         (tmp_path / "absent.pth", "no such"), (tmp_path, "directory")]:
        with pytest.raises(CheckpointError, match=reason) as info:
            load_teacher(path, expected_sha256=None, channels=TINY)
        assert "\n" not in str(info.value)


def test_a_window_does_not_depend_on_its_batch(tiny):
    windows = torch.from_numpy(np.concatenate([
        synth.tone(220.0, 29.0, SAMPLE_RATE), synth.noise(29.0, SAMPLE_RATE),
        synth.clicks(29.0, SAMPLE_RATE)]))
    together = tiny.tags(windows)
    alone = torch.cat([tiny.tags(w[None]) for w in windows])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    tiny.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            tiny.tags(windows)
    finally:
        tiny.eval()


def test_fit_length_tiles_short_and_keeps_the_middle_of_long_windows():
    short = torch.arange(10.0)
    assert torch.equal(fit_length(short, 25), torch.cat([short, short, short[:5]]))
    assert torch.equal(fit_length(torch.arange(30.0), 20), torch.arange(5.0, 25.0))
    assert fit_length(torch.ones(INPUT_SAMPLES + 1)).shape == (INPUT_SAMPLES,)
    with pytest.raises(ValueError, match="empty"):
        fit_length(torch.zeros(0))


def test_excerpt_tags_resamples_tiles_and_batches(tiny):
    waves = [synth.tone(330.0, s)[0] for s in (0.01, 1.0, 10.0)] + [synth.noise(31.0)[0]]
    got = excerpt_tags(tiny, waves, batch_size=3)   # a batch of 3, then one of 1
    expected = torch.cat([tiny.tags(fit_length(torchaudio.functional.resample(
        torch.from_numpy(w), 22050, SAMPLE_RATE))[None]) for w in waves])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torchaudio.functional.resample(torch.from_numpy(waves[2]), 22050, 16000).shape \
        == (160000,)
    assert excerpt_tags(tiny, []).shape == (0, 50)


def test_subnormal_weights_are_flushed_to_zero(tmp_path):
    """Subnormal floats make the CPU's arithmetic 10 to 100 times slower (the real file has
    78,000 of them); loading sets them to 0 and keeps every other value as it was."""
    weight = torch.randn(4, 4, 3, 3)
    weight[0, 0] = 1e-40
    path = random_teacher(tmp_path / "t.pth", {"layer2.conv.weight": weight})
    loaded = load_teacher(path, expected_sha256=None, channels=TINY).layer2.conv.weight
    assert (loaded[0, 0] == 0).all()
    torch.testing.assert_close(loaded[1:], weight[1:], atol=0, rtol=0)
