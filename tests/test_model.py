"""Features, model and checkpoint: shapes, batch independence, and the checkpoint contract."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from conftest import SMALL, make_checkpoint, write_track
from tagger import checkpoint
from tagger.classify import Classifier, pick_device
from tagger.errors import CheckpointError, UserError
from tagger.features import FeatureSettings, LogMel, log_mel_segments, segment_starts
from tagger.model import GenreCRNN
from tagger.modelfile import file_model_id

S = FeatureSettings()


def test_log_mel_matches_torchaudio():
    wave = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (3, 30000)).astype("f4"))
    reference = torchaudio.transforms.MelSpectrogram(
        S.sample_rate, S.n_fft, hop_length=S.hop_length, n_mels=S.n_mels, f_max=S.f_max,
        center=False, norm="slaney", mel_scale="slaney")(wave)
    expected = 10 * torch.log10(reference.clamp(min=1e-10))
    assert torch.allclose(LogMel(S)(wave), expected, atol=1e-3)


def test_segments_shapes_and_lengths():
    waves = [torch.randn(10 * S.sample_rate), torch.randn(S.sample_rate), torch.randn(100)]
    segments, lengths = log_mel_segments(waves, S, LogMel(S))
    # 10 s: 1 + 220500 // 512 = 431 frames -> 10 segments of 41; 1 s: 44 frames -> 1
    assert lengths.tolist() == [10, 1, 1]
    assert segments.shape == (3, 10, 128, 41)
    assert segment_starts(431, S) == [41 * i for i in range(10)]
    assert segment_starts(10, S) == [0]      # shorter than a segment: one, zero-padded


def test_features_do_not_depend_on_the_batch():
    a = torch.randn(5 * S.sample_rate)
    alone, n = log_mel_segments([a], S, LogMel(S))
    batched, _ = log_mel_segments([torch.randn(12 * S.sample_rate), a], S, LogMel(S))
    assert torch.equal(alone[0, : n[0]], batched[1, : n[0]])


def test_model_masks_padding():
    net = GenreCRNN(SMALL).eval()
    x = torch.randn(2, 6, 128, 41)
    with torch.no_grad():
        both = net(x, torch.tensor([6, 3]))
        alone = net(x[1:, :3], torch.tensor([3]))
        garbage = x.clone()
        garbage[1, 3:] = 1e6                          # padding must not matter
        again = net(garbage, torch.tensor([6, 3]))
    assert both.shape == (2, 10)
    assert torch.allclose(both[1], alone[0], atol=1e-5)
    assert torch.allclose(both, again, atol=1e-5)


def test_lstm_variant_runs():
    net = GenreCRNN(replace(SMALL, rnn="lstm", bidirectional=False)).eval()
    assert net(torch.randn(1, 2, 128, 41), torch.tensor([2])).shape == (1, 10)


def test_checkpoint_round_trip(tmp_path):
    path = make_checkpoint(tmp_path / "m.pt", seed=3)
    ckpt = checkpoint.load(path)
    assert ckpt.model_id == file_model_id(path) and len(ckpt.model_id) == 12
    assert ckpt.features == FeatureSettings() and ckpt.model == SMALL
    assert ckpt.provenance == {"made_by": "tests"}
    torch.manual_seed(3)
    fresh = GenreCRNN(SMALL).eval()
    x = torch.randn(1, 4, 128, 41)
    assert torch.equal(ckpt.build()(x, torch.tensor([4])), fresh(x, torch.tensor([4])))
    assert make_checkpoint(tmp_path / "n.pt", seed=4) and file_model_id(tmp_path / "n.pt") != ckpt.model_id


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, write in {
        "plain.pt": lambda p: p.write_bytes(pickle.dumps(Exploit())),
        "torch.pt": lambda p: torch.save({"format": "tagger-checkpoint", "x": Exploit()}, p),
    }.items():
        write(tmp_path / name)
        with pytest.raises(CheckpointError, match="refused to load"):
            checkpoint.load(tmp_path / name)
    assert not marker.exists()


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    good = make_checkpoint(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a tagger checkpoint"):
        checkpoint.load(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a tagger checkpoint"):
        checkpoint.load(other)
    ckpt = checkpoint.load(good)
    ckpt.state_dict["head.weight"] = torch.zeros(3, 3)
    checkpoint.save(ckpt, tmp_path / "bad-shapes.pt")
    with pytest.raises(CheckpointError, match=r"head.weight has shape \(3, 3\); the settings need"):
        checkpoint.load(tmp_path / "bad-shapes.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "absent.pt")
    assert zipfile.is_zipfile(good)     # torch's zip format: inspectable without unpickling


def test_classifier_probabilities(model_path):
    clf = Classifier(checkpoint.load(model_path), "cpu")
    rng = np.random.default_rng(0)
    tracks = [[rng.uniform(-0.3, 0.3, 22050 * 3).astype("f4")] * 2, [np.zeros(50, "f4")]]
    probs = clf.classify(tracks)
    assert probs.shape == (2, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    single = clf.classify(tracks[:1])
    assert np.allclose(single[0], probs[0], atol=1e-6)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            pick_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(model_path):
    ckpt = checkpoint.load(model_path)
    tracks = [[np.random.default_rng(1).uniform(-0.3, 0.3, 22050 * 12).astype("f4")]]
    cpu = Classifier(ckpt, "cpu").classify(tracks)
    gpu = Classifier(ckpt, "cuda").classify(tracks)
    assert np.allclose(cpu, gpu, atol=1e-3)


def test_one_file_hash_names_models_and_cache_entries(tmp_path):
    """modelfile.file_sha256 (no torch needed) is the one file hash: the model id and the
    feature cache's entry names are its prefixes."""
    from tagger.dataset import FeatureCache
    from tagger.modelfile import file_sha256
    track = write_track(tmp_path / "a.wav", seconds=1.0)
    assert file_sha256(track) == hashlib.sha256(track.read_bytes()).hexdigest()
    model = make_checkpoint(tmp_path / "m.pt")
    assert file_model_id(model) == file_sha256(model)[:12]
    FeatureCache(tmp_path / "cache", S).get(str(track))
    entry, = (tmp_path / "cache").rglob("*.npz")
    assert entry.stem == file_sha256(track)[:24]


def test_every_torch_save_is_atomic(tmp_path):
    """A torch.save that fails half-way (here: something it cannot pickle) leaves the old
    file whole and no temporary file; tagger saves only through atomic_torch_save."""
    from tagger.atomic import atomic_torch_save
    path = make_checkpoint(tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        atomic_torch_save({"weights": torch.zeros(1000), "oops": lambda: 0}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.pt"]
    atomic_torch_save({"weights": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.zeros(3))
    sources = Path(checkpoint.__file__).parent.glob("*.py")
    assert [p.name for p in sources if "torch.save(" in p.read_text()] == ["atomic.py"]
