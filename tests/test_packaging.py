"""The wheel a user installs carries the shipped models, the licence of the pretrained
weights inside the default one, and the split lists."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_wheel_carries_the_shipped_models_their_licence_the_split_lists_and_the_beets_plugin(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob("tagger-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name in ("default.pt", "fast.pt", "LICENSE-msd_fcn.txt"):
            assert z.read(f"tagger/data/{name}") == (ROOT / "models" / name).read_bytes()
        for part in ("train", "valid", "test"):
            assert z.read(f"tagger/data/splits/{part}_filtered.txt").count(b"\n") > 100
        names = z.namelist()
        assert "beetsplug/audiogenre.py" in names
        assert "beetsplug/__init__.py" not in names        # a namespace package, beets' too
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "Requires-Dist: beets>=2.0; extra == \"beets\"" in metadata
        assert "Requires-Dist: ray[data]>=2.40; extra == \"cluster\"" in metadata
