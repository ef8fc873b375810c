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


TINY_TRAIN = [
    "backbone=mobilenet_v2", "pretrained=true", "frozen_stages=7", "image_size=64", "conv_channels=16", "hidden=16",
    "embed_dim=8", "p=3", "k=2", "epochs_localization=1", "epochs_attributes=1", "epochs_global=1",
    "batches_per_epoch=4", "eval_batch_size=64", "warmup_steps=0",
]


@pytest.fixture(scope="session")
def trained(synth_small, tmp_path_factory) -> Path:
    """A tiny model trained on the small synthetic catalog (seconds on a CPU)."""
    from fashionsearchnet.cli import main

    run = tmp_path_factory.mktemp("model") / "run"
    assert main(["train", "--data", str(synth_small), "--out", str(run), *TINY_TRAIN]) == 0
    return run


@pytest.fixture(scope="session")
def index_dir(trained, synth_small, tmp_path_factory) -> Path:
    """An index of the small synthetic catalog built with the tiny model."""
    from fashionsearchnet.cli import main

    idx = tmp_path_factory.mktemp("index") / "idx"
    assert main(["index", "--model", str(trained), "--data", str(synth_small), "--out", str(idx), "--chunk", "16"]) == 0
    return idx
