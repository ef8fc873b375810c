"""Images in, tensors out: decoding, resizing, the in-memory cache, batched augmentation.

Preprocessing (stored with the model): decode with ``images.load_image``, resize to S×S (aspect
not kept, so ground-truth boxes map by a per-axis scale), scale to [0, 1], normalise by the
backbone's mean and std. Training adds a random translation/scale and a horizontal flip, applied
on whole batches on the training device (one ``grid_sample``), so the CPU only decodes.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .device import to_device
from .images import load_image


def load_resized(path: str | Path | bytes, size: int) -> torch.Tensor:
    """Decode an image and resize it to (3, size, size) uint8."""
    im = load_image(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def pil_to_uint8(im: Image.Image, size: int) -> torch.Tensor:
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_many(paths: Sequence[Path], size: int, workers: int | None = None, progress=None) -> torch.Tensor:
    """Decode and resize many images in threads (Pillow releases the GIL) -> (N, 3, S, S) uint8."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    workers = workers or min(8, (os.cpu_count() or 1) * 2)

    def job(i: int) -> None:
        out[i] = load_resized(paths[i], size)

    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(job, range(len(paths)))
        if progress is not None:
            it = progress(it, total=len(paths), desc="decoding", unit="img")
        for _ in it:
            pass
    return out


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float normalised, on x's device."""
    m, s = _channel_constants(tuple(mean), tuple(std), x.device)
    return (x.float() / 255.0 - m) / s


@functools.lru_cache(maxsize=16)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) tensors on the device, made once (no copy to the GPU per batch)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return m, s


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.08, scale: tuple[float, float] = (0.9, 1.1), flip: bool = True) -> torch.Tensor:
    """Random scale, translation and horizontal flip of a float batch (B, 3, S, S), in one grid_sample."""
    b = x.shape[0]
    r = to_device(torch.rand(b, 4, generator=generator), x.device)  # drawn on the CPU: the same numbers on any device
    s = scale[0] + (scale[1] - scale[0]) * r[:, 0]
    tx, ty = (r[:, 1] * 2 - 1) * max_shift * 2, (r[:, 2] * 2 - 1) * max_shift * 2
    sx = torch.where((r[:, 3] < 0.5) & flip, -s, s)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = 1.0 / sx, 1.0 / s
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class ImageSource:
    """Images of a list of catalog records as uint8 batches: from memory when they fit, else from disk."""

    def __init__(self, paths: Sequence[Path], size: int, cache: bool, workers: int | None = None, progress=None):
        self.paths = list(paths)
        self.size = size
        self.workers = workers
        self.cached = load_many(self.paths, size, workers, progress) if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, idx: Sequence[int]) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[torch.as_tensor(list(idx), dtype=torch.long)]
        return load_many([self.paths[i] for i in idx], self.size, self.workers)


def fits_in_memory(n: int, size: int, budget_bytes: int) -> bool:
    return n * 3 * size * size <= budget_bytes
