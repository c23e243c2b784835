"""The help as people read it: flags without "<bool>", arguments as PATH..., defaults whole,
usage errors without pydantic's "Value error,", and shell completion."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer

from conftest import run
from tagger.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_shows_no_type_of_a_flag_and_cuts_nothing_off(command):
    text = run(*command, "--help", env={"COLUMNS": "80"}).stdout
    assert "<bool>" not in text and "list[" not in text and "{" not in text, text
    if command != ["write-tags"]:       # its 5 columns of option names do not fit in 80
        assert "…" not in text, text
    assert "…" not in run(*command, "--help", env={"COLUMNS": "100"}).stdout


def test_path_arguments_read_path_dots():
    for command in ("scan", "show"):
        text = run(command, "--help").stdout
        assert re.search(rf"Usage: \S+ {command} \[OPTIONS\] PATH\.\.\.", text), text
        assert re.search(r"│ \*\s+PATH\.\.\.\s+\S", text), text
    assert re.search(r" train \[OPTIONS\] DATA_DIR\s", run("train", "--help").stdout)
    missing = run("scan", ok=2)
    assert "Missing argument 'PATH...'" in missing.output


def test_a_bad_choice_is_said_plainly():
    result = run("scan", "x", "--device", "nope", ok=2)
    assert "Value error" not in result.output
    assert "Invalid value for '--device': 'nope' is not one of 'auto'," in result.output


def test_shell_completion_installs(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([sys.executable, "-m", "tagger", "--show-completion", "bash"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and "_TAGGER_COMPLETE=complete_bash" in shown.stdout, shown.stderr
    done = subprocess.run([sys.executable, "-m", "tagger", "--install-completion", "bash"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "_TAGGER_COMPLETE" in (tmp_path / ".bash_completions" / "tagger.sh").read_text()


def test_a_paragraph_of_help_flows_as_one():
    text = run("scan", "--help", env={"COLUMNS": "200"}).stdout
    assert "are skipped without being opened; a moved or renamed file keeps" in text, text
