from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSN_SHARED_DATA", REPO.parent / "shared" / "data"))


def jpeg_bytes(size=(24, 24), color=(200, 30, 30), mode="RGB", fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_jpeg(path: Path, size=(24, 24), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(size, color))
    return path


def shared(name: str) -> Path:
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"{p} is absent (shared data only exists on the development machines)")
    return p


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """A small synthetic catalog shared by tests that only read it."""
    from fashionsearchnet.synthetic import generate

    out = tmp_path_factory.mktemp("synth") / "cat"
    generate(out, 120, 64, seed=3, workers=1)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
