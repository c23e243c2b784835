"""The shipped models' probabilities for generated audio, pinned: through the scan-time
classifier (batch norm folded into the convs, channels-last weights) and through the
training-time model (checkpoint.load(...).build() + scoring.predict), both against the
values stored in tests/data/golden.json. A change to either path that makes the two
disagree, or that silently changes what users get, fails here.

A newly shipped model changes its expected values; write them again with
    PYTHONPATH=. python tests/test_golden.py
and say in the commit why they changed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tagger import checkpoint, synth
from tagger.classify import Classifier
from tagger.scoring import predict
from tagger.features import LogMel, log_mels
from tagger.modelfile import SHIPPED, default_model_path, file_model_id
from tagger.teacher import track_tags

GOLDEN = Path(__file__).parent / "data" / "golden.json"
TOLERANCE = 1e-4


def tracks() -> list[list[np.ndarray]]:
    """Two short tracks of mono 22,050 Hz windows: a tone then clicks, and noise."""
    return [[synth.tone(440.0, 2.0)[0], synth.clicks(2.0, seed=1)[0]],
            [synth.noise(3.0, seed=2)[0]]]


def scanned(ckpt: checkpoint.Checkpoint) -> np.ndarray:
    return Classifier(ckpt, "cpu").classify(tracks())


def trained(ckpt: checkpoint.Checkpoint) -> np.ndarray:
    """What training and `evaluate` compute: the unfused model, the cached log-mels."""
    net, fs = ckpt.build(), ckpt.features
    with torch.inference_mode():
        mels = [log_mels([torch.from_numpy(w) for w in track], fs, LogMel(fs)) for track in tracks()]
        tags = list(track_tags(net.teacher, tracks(), fs.sample_rate)) if net.fused else None
    return predict(net, mels, fs, torch.device("cpu"), tags)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_probabilities_are_pinned_on_both_paths(name):
    path = default_model_path(name)
    if path is None:
        pytest.skip(f"the {name} model is not in this installation")
    golden = json.loads(GOLDEN.read_text())[name]
    assert file_model_id(path) == golden["model_id"], (
        f"{path} is not the model the golden values were written for: if it is a new model, "
        "run `PYTHONPATH=. python tests/test_golden.py`")
    ckpt = checkpoint.load(path)
    assert bool(ckpt.model.teacher_channels) == (name == "default")   # default.pt is fused
    expected = np.array(golden["probabilities"])
    np.testing.assert_allclose(scanned(ckpt), expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(trained(ckpt), expected, atol=TOLERANCE, rtol=0)


def write_golden() -> None:
    """Compute the expected values from the shipped models (both paths must agree)."""
    golden = {}
    for name in SHIPPED:
        path = default_model_path(name)
        ckpt = checkpoint.load(path)
        probs = scanned(ckpt)
        np.testing.assert_allclose(trained(ckpt), probs, atol=1e-5, rtol=0)
        golden[name] = {"model_id": file_model_id(path), "genres": list(ckpt.genres),
                        "probabilities": [[round(float(p), 7) for p in row] for row in probs]}
    GOLDEN.parent.mkdir(exist_ok=True)
    text = json.dumps(golden, indent=1)     # then each innermost list on one line:
    text = re.sub(r"\[\s+([^][{}]*?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
    GOLDEN.write_text(text + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    write_golden()
