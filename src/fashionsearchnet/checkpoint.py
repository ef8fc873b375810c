"""The only place that saves and loads model files.

``model.safetensors`` holds the weights and, in its metadata, the model config, the attribute
schema and the preprocessing, so loading needs nothing from the training setup. Every write goes
to a temporary file first and is renamed into place: a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from .catalog import atomic_write_bytes, atomic_write_text
from .schema import Schema

MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "train_state.pt"
PROTOTYPES_FILE = "prototypes.safetensors"
MODEL_JSON = "model.json"  # the selected model's config, schema and epoch, readable without safetensors
FORMAT = 1


class CheckpointError(ValueError):
    """A model file is missing, corrupt or of another format."""


def model_meta(model, schema: Schema) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "format": FORMAT,
        "model_config": cfg.to_dict(),
        "schema": schema.to_dict(),
        "preprocessing": {"resize": [cfg.image_size, cfg.image_size], "mean": list(cfg.mean), "std": list(cfg.std), "scale": "1/255"},
    }


def save_model(path: str | Path, model, schema: Schema, extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = model_meta(model, schema) | (extra or {})
    atomic_write_bytes(path, save(state, metadata={"fsn": json.dumps(meta)}))


def read_meta(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no model file (train one with `fsn train`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types on garbage
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if "fsn" not in meta:
        raise CheckpointError(f"{path}: not a FashionSearchNet model (no 'fsn' metadata)")
    data = json.loads(meta["fsn"])
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: model format {data.get('format')} is not supported (expected {FORMAT})")
    return data


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Load (model in eval mode, schema) from a run folder or a ``.safetensors`` file."""
    from safetensors.torch import load_file

    from .model import FashionSearchNet, ModelConfig

    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    meta = read_meta(file)
    cfg = ModelConfig.from_dict(meta["model_config"])
    schema = Schema.from_dict(meta["schema"])
    model = FashionSearchNet(cfg, pretrained=False)
    try:
        model.load_state_dict(load_file(str(file)), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: weights do not match the stored config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), schema


def fingerprint(path: str | Path) -> str:
    """Content hash of a model file: an index records it and refuses any other model."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no training state to resume from") from None


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
