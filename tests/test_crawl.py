"""The crawl on deep trees: no recursion limit, and paths too long for the system reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run, write_track
from tagger.crawl import crawl

DEPTH = 1100


@pytest.fixture
def deep_tree(tmp_path):
    """DEPTH nested folders with a track at the bottom and one half way down. Made and
    removed one level at a time: os.makedirs and shutil.rmtree recurse too."""
    folders = [tmp_path / "deep"]
    for _ in range(DEPTH):
        folders[-1].mkdir()
        folders.append(folders[-1] / "d")
    bottom, middle = folders[-2] / "bottom.wav", folders[DEPTH // 2] / "middle.wav"
    bottom.write_bytes(b"x")
    middle.write_bytes(b"x")
    yield tmp_path / "deep", [bottom, middle]      # "d" sorts before "middle.wav"
    for f in (bottom, middle):
        f.unlink()
    for folder in reversed(folders[:-1]):
        folder.rmdir()


def test_a_deep_tree_is_walked_without_recursion(deep_tree):
    root, tracks = deep_tree
    assert [c.path for c in crawl([root])] == [str(t) for t in tracks]


def test_order_and_skipping_are_unchanged(tmp_path):
    """Sorted within each folder, a folder's files where its name sorts, hidden and system
    folders skipped, a folder reached twice (a symlink loop) walked once, --exclude obeyed."""
    for rel in ["b.mp3", "a/2.wav", "a/1.wav", "a/z/3.flac", "c.ogg", ".h/4.mp3",
                "#recycle/5.mp3", "skip/6.mp3", "a/skip.mp3"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "a" / "z" / "up").symlink_to(tmp_path / "a")
    (tmp_path / "b2").symlink_to(tmp_path / "a" / "z")
    found = [os.path.relpath(c.path, tmp_path) for c in crawl([tmp_path], exclude=["skip*"])]
    assert found == ["a/1.wav", "a/2.wav", "a/z/3.flac", "b.mp3", "c.ogg"]


def _long_tree(root: Path) -> tuple[str, str]:
    """Folders whose absolute path ends up longer than PATH_MAX (made relative to open
    folders, as nothing else can reach them), holding a track; and a track whose folder is
    within the limit but whose own path is not. Returns both tracks' folders' paths."""
    limit = os.pathconf(root, "PC_PATH_MAX")
    name = "n" * 200
    fd = os.open(root, os.O_RDONLY)
    path = str(root)
    near_file = None
    try:
        while len(os.fsencode(path)) <= limit:
            if len(os.fsencode(path)) + 1 + len(name) > limit:    # the last folder within it
                with open(os.open(name + ".wav", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
                    f.write(b"x")
                near_file = os.path.join(path, name + ".wav")
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = sub, os.path.join(path, name)
        with open(os.open("far.wav", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write(b"x")
    finally:
        os.close(fd)
    return near_file, path


def test_paths_over_path_max_are_reported(tmp_path):
    (tmp_path / "lib").mkdir()
    near_file, far_folder = _long_tree(tmp_path / "lib")
    found = list(crawl([tmp_path / "lib"]))
    errors = {c.path: c.error for c in found}
    assert set(errors) == {near_file, far_folder}
    assert "too long" in errors[near_file] and "too long" in errors[far_folder]
    assert "not scanned" in errors[far_folder]


def test_a_scan_stores_and_prints_paths_too_long(tmp_path, model_path):
    lib = tmp_path / "lib"
    write_track(lib / "ok.wav", seconds=1.0)
    near_file, far_folder = _long_tree(lib)
    db = tmp_path / "i.db"
    result = run("scan", lib, "--db", db, "--model", model_path, "--workers", "0")
    assert "1 classified, 0 unchanged, 2 failed" in result.stdout
    assert f"{near_file}: path too long for the system (" in result.stderr
    assert f"{far_folder}: folder not scanned: its path is too long" in result.stderr
    rows = json.loads(run("query", "--db", db, "--failed", "--format", "json").stdout)
    assert {r["path"] for r in rows} == {near_file, far_folder}
    again = run("scan", lib, "--db", db, "--model", model_path, "--workers", "0")
    assert "0 classified, 1 unchanged, 2 failed" in again.stdout   # retried, still reported


@pytest.mark.parametrize("command", ["scan", "show"])
def test_an_argument_too_long_for_the_system_is_one_error_line(tmp_path, model_path, command):
    too_long = tmp_path / ("n" * 300 + ".wav")                  # over NAME_MAX
    result = run(command, too_long, "--model", model_path, ok=1)
    if command == "scan":
        assert result.stderr == f"Error: {too_long}: name or path too long for the system\n"
    else:               # show: one file that could not be classified among those given
        assert f"{too_long}\n  path too long for the system" in result.stdout
