"""A checkpoint is validated completely at load: finite weights, settings of the right type
and range, tensor shapes that fit the settings, and a cap on what the file may expand to.
Each bad checkpoint is made with the project's own API, then tampered with; loading one
never runs code, crashes or hangs, and the CLI ends with one `Error:` line."""

from __future__ import annotations

import math
import os
import pickle
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import make_checkpoint, run
from tagger import checkpoint
from tagger.errors import CheckpointError, UserError
from tagger.modelfile import (MAX_CHECKPOINT_BYTES, default_model_path, excerpt_settings,
                              resolve_model)


def tampered(tmp_path: Path, change, name: str = "bad.pt") -> Path:
    """A good small checkpoint, loaded as plain data, changed by change(payload), saved again."""
    payload = torch.load(make_checkpoint(tmp_path / "good.pt"), weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def problems(path: Path) -> list[str]:
    """The problem lines of the CheckpointError that loading path raises."""
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    assert info.value.path == str(path)
    lines = info.value.reason.splitlines()
    return [line.strip() for line in (lines[1:] if len(lines) > 1 else lines)]


def setter(section: str, key: str, value):
    def change(payload):
        if value is DELETE:
            del payload[section][key]
        else:
            payload[section][key] = value
    return change


DELETE = object()

BAD_SETTINGS = [                                # section, key, value, what the line says
    ("features", "sample_rate", 0, "features.sample_rate is 0"),
    ("features", "sample_rate", 10**12, "features.sample_rate is 1000000000000"),
    ("features", "sample_rate", "22050", "features.sample_rate is '22050'"),
    ("features", "sample_rate", True, "features.sample_rate is True"),
    ("features", "n_fft", 0, "features.n_fft is 0"),
    ("features", "n_fft", 2048.0, "features.n_fft is 2048.0"),
    ("features", "hop_length", 0, "features.hop_length is 0"),
    ("features", "hop_length", 4096, "features.hop_length (4096) is longer than n_fft (2048)"),
    ("features", "f_max", 20000.0, "features.f_max (20000.0) is above half the sample rate"),
    ("features", "f_min", math.nan, "features.f_min is nan"),
    ("features", "mel_scale", "bark", "features.mel_scale is 'bark'"),
    ("features", "mel_scale", torch.zeros(2), "features.mel_scale is tensor("),
    ("features", "segment_frames", 0, "features.segment_frames is 0"),
    ("features", "segment_frames", 4, "too small for 4 conv blocks"),
    ("features", "segment_hop", -1, "features.segment_hop is -1"),
    ("features", "excerpt_windows", 0, "features.excerpt_windows is 0"),
    ("features", "excerpt_seconds", 0.0, "features.excerpt_seconds is 0.0"),
    ("features", "excerpt_seconds", math.inf, "features.excerpt_seconds is inf"),
    ("features", "excerpt_seconds", 86400.0, "features.excerpt_seconds is 86400.0"),
    ("features", "db_floor", -1000.0, "features.db_floor is -1000.0"),
    ("features", "hop_length", DELETE, "features.hop_length is missing"),
    ("features", "colour", "blue", "features.colour is not a setting this tagger knows"),
    ("model", "n_mels", 64, "model.n_mels (64) differs from features.n_mels (128)"),
    ("model", "channels", [], "model.channels is []"),
    ("model", "channels", [8, 0], "model.channels is [8, 0]"),
    ("model", "channels", "abc", "model.channels is 'abc'"),
    ("model", "channels", [4096] * 8, "model.channels is"),
    ("model", "rnn", "transformer", "model.rnn is 'transformer'"),
    ("model", "rnn_hidden", 0, "model.rnn_hidden is 0"),
    ("model", "rnn_layers", None, "model.rnn_layers is None"),
    ("model", "bidirectional", 1, "model.bidirectional is 1"),
    ("model", "dropout", 1.5, "model.dropout is 1.5"),
    ("model", "n_genres", 11, "model.n_genres (11) differs from the 10 genres"),
    ("model", "rnn_hidden", 4096, "weights, over the"),
    ("genres", 3, "", "genres[3] is ''"),
    ("genres", 3, "[/a]", "genres[3] is '[/a]'"),
    ("genres", 3, 7, "genres[3] is 7"),
    ("genres", 3, "blues", "genres[3] 'blues' is listed twice"),
]


@pytest.mark.parametrize("section, key, value, line", BAD_SETTINGS,
                         ids=[f"{s}.{k}={v!r}"[:40] for s, k, v, _ in BAD_SETTINGS])
def test_each_bad_setting_is_one_line(tmp_path, section, key, value, line):
    found = problems(tampered(tmp_path, setter(section, key, value)))
    assert any(p.startswith(line) or line in p for p in found), found
    assert all("\n" not in p for p in found)


@pytest.mark.parametrize("change, line", [
    (lambda p: p["state_dict"]["head.weight"].view(-1)[5].fill_(math.nan),
     "head.weight holds 1 NaN or infinite value"),
    (lambda p: p["state_dict"]["rnn.weight_hh_l0"].fill_(math.inf),
     "rnn.weight_hh_l0 holds 3072 NaN or infinite values"),
    (lambda p: p["state_dict"]["norm_mean"].fill_(-math.inf), "norm_mean holds 128 NaN"),
    (lambda p: p["state_dict"]["norm_std"].zero_(), "norm_std holds 128 values <= 0"),
    (lambda p: p["state_dict"]["cnn.blocks.1.1.running_var"].fill_(-1.0),
     "cnn.blocks.1.1.running_var holds 16 negative values"),
    (lambda p: p["state_dict"].__setitem__("head.weight", torch.zeros(3, 3)),
     "head.weight has shape (3, 3); the settings need (10, 64)"),
    (lambda p: p["state_dict"].__setitem__("head.bias", torch.zeros(10, dtype=torch.float64)),
     "head.bias is torch.float64; the model needs torch.float32"),
    (lambda p: p["state_dict"].__setitem__("head.bias", [0.0] * 10), "head.bias is not a tensor"),
    (lambda p: p["state_dict"].pop("rnn.bias_hh_l0"), "rnn.bias_hh_l0 is missing"),
    (lambda p: p["state_dict"].__setitem__("extra", torch.zeros(1)),
     "extra is not a weight of this model"),
    (lambda p: p.__setitem__("state_dict", [1, 2]), "state_dict is not a mapping"),
    (lambda p: p.__setitem__("provenance", "x"), "provenance is not a mapping"),
    (lambda p: p["metrics"].__setitem__("w", torch.zeros(2)), "metrics holds a Tensor"),
])
def test_bad_weights_name_the_tensor(tmp_path, change, line):
    found = problems(tampered(tmp_path, change))
    assert any(p.startswith(line) for p in found), found


def test_every_problem_gets_its_own_line(tmp_path):
    def change(p):
        p["features"]["sample_rate"] = 0
        p["features"]["n_fft"] = -1
        p["genres"][0] = "[/a]"
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(tampered(tmp_path, change))
    lines = info.value.reason.splitlines()
    assert lines[0].startswith("3 problems")
    assert [x.split(" is ")[0].strip() for x in lines[1:]] == [
        "features.sample_rate", "features.n_fft", "genres[0]"]


def test_shared_reference_cycles_in_provenance_are_refused(tmp_path):
    def change(p):
        loop: list = []
        loop.append(loop)
        p["provenance"]["loop"] = loop
    assert problems(tampered(tmp_path, change))[0].startswith("provenance is nested too deeply")


def test_sane_non_default_settings_still_load(tmp_path):
    """Checks are ranges, not the defaults: a different but sane model loads."""
    def change(p):
        p["features"].update(sample_rate=16000, n_fft=1024, hop_length=256, f_max=8000.0,
                             mel_scale="htk", segment_hop=10, excerpt_windows=1, excerpt_seconds=30)
    ckpt = checkpoint.load(tampered(tmp_path, change))
    assert ckpt.features.excerpt_seconds == 30 and ckpt.features.mel_scale == "htk"
    lstm = make_checkpoint(tmp_path / "lstm.pt", rnn="lstm", bidirectional=False, rnn_layers=2)
    assert checkpoint.load(lstm).model.rnn_layers == 2
    assert checkpoint.load(default_model_path()).genres


def write_bomb(path: Path, good: Path, expands_to: int) -> None:
    """The good checkpoint with one tensor's record replaced by `expands_to` bytes of
    deflated zeros, streamed: never held in memory, a few hundred KB on disk."""
    payload = torch.load(good, weights_only=True)
    payload["metrics"]["pad"] = torch.zeros(7, dtype=torch.uint8)     # the one 7-byte record
    torch.save(payload, path.with_suffix(".mid"))
    with zipfile.ZipFile(path.with_suffix(".mid")) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            if info.file_size != 7:
                out.writestr(info, src.read(info))
                continue
            record = zipfile.ZipInfo(info.filename)
            record.compress_type = zipfile.ZIP_DEFLATED
            with out.open(record, "w", force_zip64=True) as f:
                zeros = bytes(1 << 20)
                for _ in range(expands_to >> 20):
                    f.write(zeros)


def test_zip_bomb_is_refused_before_unpacking(tmp_path):
    bomb = tmp_path / "bomb.pt"
    write_bomb(bomb, make_checkpoint(tmp_path / "good.pt"), MAX_CHECKPOINT_BYTES + (16 << 20))
    assert bomb.stat().st_size < 4 << 20
    [line] = problems(bomb)
    assert line.startswith("expands to 272 MiB when unpacked; a checkpoint may hold at most 256 MiB")


def test_not_a_zip_and_not_a_file(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": "tagger-checkpoint"}, legacy, _use_new_zipfile_serialization=False)
    assert problems(legacy)[0].startswith("refused to load: not a torch zip archive")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)                     # reading it would wait forever for a writer
    assert problems(fifo)[0] == "not a regular file"
    with pytest.raises(UserError, match="not a regular file"):
        resolve_model(fifo)
    big = tmp_path / "big.pt"
    with open(big, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + (100 << 20))     # sparse: no disk space used
    with pytest.raises(UserError, match="is 356 MiB; a tagger checkpoint is at most 256 MiB"):
        resolve_model(big)


def scan_rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'tracks'").fetchone():
            return []
        return con.execute("SELECT status, genre FROM tracks").fetchall()


def one_error_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.count("Error:") == 1 and result.stderr.startswith("Error: ")
    assert expected in result.stderr.splitlines()[0] or expected in result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["0", "2"])     # 2: the model loads while they decode
def test_nan_weights_never_store_ok_rows(library, tmp_path, workers):
    bad = tampered(tmp_path, lambda p: p["state_dict"]["head.bias"].fill_(math.nan))
    db = tmp_path / "index.db"
    result = run("scan", library, "--db", db, "--model", bad, "--workers", workers, ok=None)
    one_error_line(result, "head.bias holds 10 NaN or infinite values")
    assert scan_rows(db) == []


@pytest.mark.parametrize("change, expected", [
    (lambda p: p["genres"].__setitem__(0, "[/a]"), "genres[0] is '[/a]'"),
    (lambda p: p["features"].__setitem__("n_fft", 0), "features.n_fft is 0"),
    (lambda p: p["state_dict"].__setitem__("head.weight", torch.zeros(3, 3)), "head.weight has shape"),
])
def test_cli_ends_with_one_error_line(library, tmp_path, change, expected):
    bad = tampered(tmp_path, change)
    db = tmp_path / "index.db"
    scan = run("scan", library, "--db", db, "--model", bad, "--workers", "0", ok=None)
    one_error_line(scan, expected)
    assert scan_rows(db) == []
    show = run("show", library / "a" / "one.mp3", "--model", bad, ok=None)
    one_error_line(show, expected)


def test_weights_that_overflow_never_store_ok_rows(library, tmp_path):
    """Finite weights can still overflow to NaN probabilities: the scan stops at the first
    such batch instead of storing it."""
    bad = tampered(tmp_path, lambda p: p["state_dict"]["head.weight"].fill_(3e38))
    checkpoint.load(bad)                            # every weight is finite
    db = tmp_path / "index.db"
    result = run("scan", library, "--db", db, "--model", bad, "--workers", "0", ok=None)
    one_error_line(result, "the model gives NaN or infinite probabilities")
    assert scan_rows(db) == []


def test_a_flood_of_problems_is_cut_short(tmp_path):
    bad = tampered(tmp_path, lambda p: p["features"].update({f"x{i}": i for i in range(50)}))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(bad)
    lines = info.value.reason.splitlines()
    assert lines[0].startswith("50 problems") and len(lines) == 22
    assert lines[-1] == "  ... and 30 more"


def test_oversized_metadata_is_refused_before_unpickling(tmp_path):
    """torch's unpickler is pure Python: 2 MiB of pickle is its worst few seconds."""
    bad = tampered(tmp_path, lambda p: p["provenance"].__setitem__("notes", "x" * (3 << 20)))
    [line] = problems(bad)
    assert line.startswith("its settings and metrics (bad/data.pkl) unpack to 3 MiB; at most 2 MiB")


def test_excerpt_settings_are_read_without_torch(tmp_path):
    """The scan starts its decoders on what excerpt_settings reads while torch and the model
    load: it must agree with the full load, and import no torch."""
    path = tampered(tmp_path, lambda p: p["features"].update(excerpt_windows=2, excerpt_seconds=7.5))
    code = ("import sys; from tagger.modelfile import excerpt_settings; "
            f"print(excerpt_settings({str(path)!r})); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["(22050, 2, 7.5)", "False"]
    f = checkpoint.load(path).features
    assert excerpt_settings(path) == (f.sample_rate, f.excerpt_windows, f.excerpt_seconds)


def test_excerpt_settings_run_nothing_from_the_file(tmp_path):
    """A data.pkl that would run a command when unpickled is refused, as torch.load does;
    checkpoint.load then says why."""
    class Boom:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("bad/data.pkl", pickle.dumps({"features": Boom()}))
    assert excerpt_settings(bad) is None
    assert not (tmp_path / "ran").exists()
    assert excerpt_settings(tmp_path / "missing.pt") is None
    assert excerpt_settings(tampered(tmp_path, lambda p: p["features"].update(excerpt_seconds="10"))) is None
