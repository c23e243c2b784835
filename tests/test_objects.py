"""tagger.objects: audio on object storage, with file:// URIs of generated files (and fsspec's
in-process memory://) standing in for s3:// and gs://. The same code path reads them all:
fsspec's BlockCache over ranged cat_file requests."""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fsspec")

from tagger import objects, synth  # noqa: E402
from tagger.decode import decode_excerpts, sliding_windows  # noqa: E402
from tagger.errors import DecodeError, UserError  # noqa: E402
from tagger.fingerprint import fingerprint  # noqa: E402
from tagger.objects import Listed, is_uri, list_objects, open_object, stamp  # noqa: E402
from tagger.pool import DecodeJob, decode_job  # noqa: E402


def uri(path: Path) -> str:
    return "file://" + str(path)


@pytest.fixture(scope="module")
def long_files(tmp_path_factory) -> dict[str, Path]:
    """3-minute tracks (a tone under noise, so that they do not compress to nothing)."""
    directory = tmp_path_factory.mktemp("long")
    signal = (0.5 * synth.tone(440, 180.0, 22050) + 0.2 * synth.noise(180.0, 22050, seed=1))
    return {ext: synth.encode(directory / f"long.{ext}", signal.astype(np.float32), 22050)
            for ext in ("flac", "m4a")}


def same_excerpts(a, b) -> None:
    assert a.duration == b.duration
    assert (a.source_sample_rate, a.source_channels) == (b.source_sample_rate, b.source_channels)
    assert len(a.waveforms) == len(b.waveforms)
    for x, y in zip(a.waveforms, b.waveforms):
        np.testing.assert_array_equal(x, y)


def test_is_uri():
    assert all(map(is_uri, ["s3://bucket/x.mp3", "gs://b", "file:///tmp/a", "memory://a"]))
    assert not any(map(is_uri, ["/tmp/a.mp3", "a/b.flac", "C:\\music\\a.mp3", b"s3://x",
                                Path("/tmp/x"), "s3:/x", "://x"]))


# --- decoding through the block cache ------------------------------------------------------

def test_every_format_decodes_as_from_disk(library):
    files = sorted(p for p in library.rglob("*") if p.is_file())
    assert len(files) == 7
    for path in files:
        same_excerpts(decode_excerpts(uri(path)), decode_excerpts(path))


@pytest.mark.parametrize("ext", ["flac", "m4a"])
def test_long_track_reads_a_fraction_of_its_bytes(long_files, ext, monkeypatch):
    """Seeking to the three windows fetches only the blocks they touch."""
    opened = []

    def keep(*args, **kwargs):
        opened.append(open_object(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(objects, "open_object", keep)
    path = long_files[ext]
    remote = decode_excerpts(uri(path))
    same_excerpts(remote, decode_excerpts(path))
    assert remote.duration == pytest.approx(180.0, abs=0.1) and len(remote.waveforms) == 3
    [file] = opened
    fraction = file.fetched / path.stat().st_size
    print(f"{ext}: fetched {fraction:.0%} of {path.stat().st_size:,} bytes "
          f"in {file.requests} requests")
    assert fraction < 0.6 and file.requests < 25


def test_blocks_are_a_thirty_second_of_the_object():
    assert objects.default_block_size(1_000) == 64 * 1024
    assert objects.default_block_size(2_200_000) == 64 * 1024
    assert objects.default_block_size(8_000_000) == 128 * 1024
    assert objects.default_block_size(26_000_000) == 512 * 1024
    assert objects.default_block_size(10**10) == 1024 * 1024


def test_object_file_reads_and_seeks_like_a_file(long_files):
    path = long_files["m4a"]
    data = path.read_bytes()
    with open_object(uri(path), block_size=1000) as f:
        assert f.read(10) == data[:10]
        f.seek(-5, os.SEEK_END)
        assert f.read() == data[-5:]
        f.seek(123_456)
        assert f.read(5000) == data[123_456:128_456]
        assert f.seek(0, os.SEEK_CUR) == 128_456
        assert f.requests == 1 + 1 + 6 and f.fetched < 9000


def test_sliding_windows_from_a_uri(library):
    path = library / "a" / "two.flac"
    for (s1, w1), (s2, w2) in zip(sliding_windows(uri(path), hop_seconds=1.0),
                                  sliding_windows(path, hop_seconds=1.0), strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(w1, w2)


def test_decode_job_of_a_uri(library):
    path = library / "c" / "five.m4a"
    remote, local = decode_job(DecodeJob(uri(path), 22050, 3, 10.0)), \
        decode_job(DecodeJob(str(path), 22050, 3, 10.0))
    same_excerpts(remote, local)
    assert remote.fingerprint == local.fingerprint is not None


# --- fingerprints ----------------------------------------------------------------------------

def test_fingerprint_of_a_uri_is_that_of_the_same_bytes(library, long_files, tmp_path):
    for path in [library / "a" / "one.mp3", long_files["flac"], long_files["m4a"]]:
        assert fingerprint(uri(path)) == fingerprint(path) is not None
    assert fingerprint(uri(tmp_path / "gone.mp3")) is None
    assert fingerprint("nosuch://bucket/x.mp3") is None


# --- bad objects -----------------------------------------------------------------------------

def _failure(name: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_excerpts(name)
    assert info.value.path == name
    return info.value


def test_missing_object_is_a_transient_failure(tmp_path):
    error = _failure(uri(tmp_path / "gone.flac"))
    assert (error.reason, error.transient) == ("file not found", True)


def test_prefix_empty_object_and_junk(tmp_path):
    (tmp_path / "folder.mp3").mkdir()
    (tmp_path / "empty.mp3").touch()
    (tmp_path / "notes.flac").write_text("not audio\n" * 100)
    assert _failure(uri(tmp_path / "folder.mp3")).reason == "is a directory"
    assert _failure(uri(tmp_path / "empty.mp3")).reason == "file is empty"
    assert "not an audio file" in _failure(uri(tmp_path / "notes.flac")).reason


def test_an_unreadable_protocol_is_a_transient_failure():
    error = _failure("nosuch://bucket/x.flac")
    assert error.transient and "unknown protocol nosuch://" in error.reason


# --- listing ---------------------------------------------------------------------------------

def test_listing_a_folder(library):
    (library / "cover.jpg").write_bytes(b"jpeg")
    (library / ".trash").mkdir()
    synth.encode(library / ".trash" / "old.wav", synth.tone(440, 0.5), 22050)
    found = list(list_objects(uri(library)))
    local = sorted(p for p in library.rglob("*") if p.suffix in {".mp3", ".flac", ".ogg",
                   ".opus", ".m4a", ".wav", ".aiff"} and ".trash" not in p.parts)
    assert [f.path for f in found] == [uri(p) for p in local]
    for f, p in zip(found, local):
        assert isinstance(f, Listed) and f.size == p.stat().st_size and f.version is None
        assert abs(f.mtime_ns - p.stat().st_mtime_ns) < 1000
    assert [f.path for f in list_objects(uri(library) + "/")] == [f.path for f in found]


def test_listing_excludes_like_crawl(library):
    names = {os.path.basename(f.path) for f in list_objects(uri(library), exclude=["b", "*.wav"])}
    assert names == {"one.mp3", "two.flac", "five.m4a", "seven.aiff"}
    names = {os.path.basename(f.path) for f in list_objects(uri(library),
                                                            exclude=[uri(library / "a") + "*"])}
    assert "one.mp3" not in names and "three.ogg" in names


def test_listing_one_object(library):
    path = library / "a" / "one.mp3"
    [one] = list_objects(uri(path))
    assert (one.path, one.size, one.version) == (uri(path), path.stat().st_size, None)


def test_listing_nothing_there(tmp_path):
    with pytest.raises(UserError, match="no such object or prefix") as info:
        list(list_objects(uri(tmp_path / "nothing")))
    assert str(info.value).startswith(uri(tmp_path / "nothing") + ": ")


def test_unknown_protocol():
    with pytest.raises(UserError) as info:
        list(list_objects("nosuch://bucket/music"))
    assert str(info.value) == ("nosuch://bucket/music: unknown protocol nosuch://: use s3://, "
                               "gs://, file:// or another protocol fsspec knows")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_a_protocol_whose_package_is_missing():
    with pytest.raises(UserError) as info:
        list(list_objects("s3://bucket/music"))
    assert str(info.value) == "s3://bucket/music: reading s3:// needs s3fs: pip install s3fs"


def test_without_fsspec(monkeypatch):
    """Without the [cluster] extra (fsspec), a URI says what to install."""
    for name in ("fsspec", "fsspec.core", "fsspec.registry"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError) as info:
        list(list_objects("gs://bucket/music"))
    assert str(info.value) == ("gs://bucket/music: reading gs:// needs fsspec: "
                               "pip install 'tagger[cluster]'")
    error = _failure("gs://bucket/music/a.mp3")
    assert error.transient and error.reason.startswith("reading gs:// needs fsspec")


# --- what object stores say about an object ------------------------------------------------

def test_stamp_of_an_s3_listing():
    when = datetime(2026, 11, 27, 17, 53, 51, 123456, tzinfo=timezone.utc)
    info = {"Key": "bucket/a.mp3", "LastModified": when, "ETag": '"9b2cf535f27731c974343645a3985328"',
            "Size": 5, "StorageClass": "STANDARD", "name": "bucket/a.mp3", "size": 5, "type": "file"}
    assert stamp(info) == (1_795_802_031_123_456_000, "9b2cf535f27731c974343645a3985328")


def test_stamp_of_a_gcs_listing():
    info = {"kind": "storage#object", "name": "bucket/a.mp3", "bucket": "bucket",
            "generation": "1795802031123456", "metageneration": "1", "size": 5, "type": "file",
            "updated": "2026-11-27T17:53:51.123Z", "etag": "CMDk8/bvnpEDEAE=",
            "mtime": datetime(2026, 11, 27, 17, 53, 51, 123000, tzinfo=timezone.utc)}
    assert stamp(info) == (1_795_802_031_123_000_000, "1795802031123456")


def test_stamp_of_local_and_bare_info():
    assert stamp({"name": "/a.mp3", "size": 5, "mtime": 1795802031.5}) == (1_795_802_031_500_000_000, None)
    assert stamp({"name": "a.mp3", "size": 5}) == (0, None)


# --- any fsspec protocol: the in-process memory filesystem -----------------------------------

def test_memory_filesystem(library):
    import fsspec
    memory = fsspec.filesystem("memory")
    path = library / "a" / "two.flac"
    memory.pipe("/tagger-test/x/two.flac", path.read_bytes())
    memory.pipe("/tagger-test/x/readme.txt", b"hello")
    try:
        [listed] = list_objects("memory://tagger-test")
        assert (listed.path, listed.size) == ("memory:///tagger-test/x/two.flac",
                                              path.stat().st_size)
        same_excerpts(decode_excerpts(listed.path), decode_excerpts(path))
        assert fingerprint(listed.path) == fingerprint(path)
    finally:
        memory.rm("/tagger-test", recursive=True)
