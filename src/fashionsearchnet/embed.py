"""Catalog -> per-item representations, predictions and ROIs; and the value prototypes.

An ``Embedding`` of N items holds (letters as in model.py):
- ``reps``     (N, A, D) float32, L2-normalised attribute representations
- ``regions``  (N, P, D) float32, region-aware representations (schema.region_pairs() order)
- ``pred``     (N, A) int64 predicted value (attribute-branch classifier)
- ``conf``     (N, A) float32 its probability
- ``rois``     (N, A, 4) float32 ROI boxes as fractions of the image ([0, 1])
- ``glob``     (N, C) float32, L2-normalised global average of the backbone features (a baseline)
- ``logits``   (N, V) float32 attribute-branch logits, all values stacked
- ``peaks``    (N, A, 2) float32 x, y of each activation map's maximum, fractions of the image
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .data import normalise
from .device import autocast, prepare_input
from .schema import UNKNOWN, Schema


@dataclass
class Embedding:
    reps: np.ndarray
    regions: np.ndarray
    pred: np.ndarray
    conf: np.ndarray
    rois: np.ndarray
    glob: np.ndarray
    logits: np.ndarray
    peaks: np.ndarray

    def __len__(self) -> int:
        return self.reps.shape[0]

    @classmethod
    def concat(cls, parts: Sequence["Embedding"]) -> "Embedding":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def subset(self, idx) -> "Embedding":
        return Embedding(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@torch.no_grad()
def embed_batch(model, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Embedding:
    """Run every stage on a uint8 batch (B, 3, S, S)."""
    from .localization import peak_points

    cfg = model.cfg
    x = prepare_input(normalise(images.to(device), cfg.mean, cfg.std), device)
    with autocast(device, dtype):
        feats = model.forward_features(x)
        conv7, gap_logits = model.forward_maps(feats)
        values = model.predict_values(gap_logits.float())
        maps = model.roi_maps(conv7, values)
        rois = model.forward_rois(maps)
        reps, attr_logits = model.forward_attributes(feats, rois)
        regions = model.forward_regions(feats, rois)
    b, a, mh, mw = maps.shape
    peaks = peak_points(maps.float().reshape(b * a, mh, mw), cfg.roi_upsample).reshape(b, a, 2) / torch.tensor([mw, mh], device=maps.device)
    pred, conf = [], []
    for logits in torch.split(attr_logits.float(), list(cfg.num_values), dim=1):
        p = logits.softmax(1)
        c, v = p.max(1)
        pred.append(v)
        conf.append(c)
    scale = torch.tensor([mw, mh, mw, mh], device=rois.device, dtype=torch.float32)
    glob = torch.nn.functional.normalize(feats.conv5.float().mean((2, 3)), dim=1)
    return Embedding(
        reps=reps.float().cpu().numpy(),
        regions=regions.float().cpu().numpy(),
        pred=torch.stack(pred, 1).cpu().numpy(),
        conf=torch.stack(conf, 1).cpu().numpy(),
        rois=(rois.float() / scale).cpu().numpy(),
        glob=glob.cpu().numpy(),
        logits=attr_logits.float().cpu().numpy(),
        peaks=peaks.cpu().numpy(),
    )


def embed_batches(model, batches: Iterator[torch.Tensor], device: torch.device, dtype=None, progress: Callable | None = None, total: int | None = None) -> Iterator[Embedding]:
    it = progress(batches, total=total, desc="embedding", unit="batch") if progress else batches
    for images in it:
        yield embed_batch(model, images, device, dtype)


def iterate_images(source, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
    for i in range(start, len(source), batch_size):
        yield source.get(range(i, min(len(source), i + batch_size)))


@dataclass
class Prototypes:
    """Mean normalised representation per value: ``attr`` (A, Vmax, D), ``region`` (P, Vmax, D).

    ``attr_count`` / ``region_count`` give how many items each mean is over (0 = no prototype).
    Prototypes are re-normalised to unit length, so replacing a query's f_a by one keeps every
    per-attribute block a unit vector.
    """

    attr: np.ndarray
    attr_count: np.ndarray
    region: np.ndarray
    region_count: np.ndarray


def compute_prototypes(emb: Embedding, labels: np.ndarray, schema: Schema) -> Prototypes:
    a_n, d = emb.reps.shape[1], emb.reps.shape[2]
    vmax = max(schema.num_values)

    def means(vectors: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((vmax, d), np.float32)
        cnt = np.zeros(vmax, np.int64)
        for v in range(vmax):
            sel = lab == v
            cnt[v] = int(sel.sum())
            if cnt[v]:
                m = vectors[sel].mean(0)
                out[v] = m / max(np.linalg.norm(m), 1e-12)
        return out, cnt

    attr = np.zeros((a_n, vmax, d), np.float32)
    attr_count = np.zeros((a_n, vmax), np.int64)
    for a in range(a_n):
        attr[a], attr_count[a] = means(emb.reps[:, a], labels[:, a])
    pairs = schema.region_pairs()
    region = np.zeros((len(pairs), vmax, d), np.float32)
    region_count = np.zeros((len(pairs), vmax), np.int64)
    for p, (reg, name) in enumerate(pairs):
        # labels of the attribute restricted to the region where the schema has them (sleeve_color
        # for the sleeves' colour); else the item's own value of that attribute
        label_attr = schema.region_label(reg, name) or name
        region[p], region_count[p] = means(emb.regions[:, p], labels[:, schema.attribute_index(label_attr)])
    return Prototypes(attr, attr_count, region, region_count)


def save_prototypes(path, protos: Prototypes, model_fingerprint: str) -> None:
    from safetensors.numpy import save

    from .catalog import atomic_write_bytes

    data = {"attr": protos.attr, "attr_count": protos.attr_count, "region": protos.region, "region_count": protos.region_count}
    atomic_write_bytes(path, save(data, metadata={"model": model_fingerprint}))


def load_prototypes(path) -> tuple[Prototypes, str]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="np") as f:
        fp = (f.metadata() or {}).get("model", "")
    d = load_file(str(path))
    return Prototypes(d["attr"], d["attr_count"], d["region"], d["region_count"]), fp


def value_accuracy(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-attribute accuracy over known labels (NaN where an attribute has none)."""
    out = np.full(labels.shape[1], np.nan)
    for a in range(labels.shape[1]):
        known = labels[:, a] != UNKNOWN
        if known.any():
            out[a] = float((pred[known, a] == labels[known, a]).mean())
    return out
