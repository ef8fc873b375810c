"""Clothing Attribute Dataset (Chen, Gallagher, Girod, ECCV 2012) in its original layout.

``images/000001.jpg … 001856.jpg`` and ``labels/<attr>_GT.mat``, each with a 1856×1 matrix ``GT``
(row i ↔ image i, values 1..k, NaN where the six workers disagreed). The six pattern flags become
one ``pattern`` attribute and the eleven colour flags one ``color`` attribute: the single flag set
to "yes" gives the value ("many colors" gives ``multicolor``); none or several set is unknown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import UNKNOWN, Attribute, Region, Schema
from ._common import Candidate, Collected

# file stem -> (attribute name, value names in code order 1..k)
DIRECT = {
    "category": ("category", ("shirt", "sweater", "t-shirt", "outerwear", "suit", "tank-top", "dress")),
    "sleevelength": ("sleeve_length", ("none", "short", "long")),
    "neckline": ("neckline", ("v-shape", "round", "other")),
    "collar": ("collar", ("no", "yes")),
    "gender": ("gender", ("male", "female")),
    "placket": ("placket", ("no", "yes")),
    "necktie": ("necktie", ("no", "yes")),
    "scarf": ("scarf", ("no", "yes")),
    "skin_exposure": ("skin_exposure", ("low", "high")),
}
PATTERN_FLAGS = ("solid", "floral", "spot", "graphics", "plaid", "stripe")
COLOR_FLAGS = ("black", "white", "gray", "red", "yellow", "green", "cyan", "blue", "purple", "brown")
MULTICOLOR = "multicolor"
NUM_ROWS = 1856
REGION_OF = {"sleeve_length": "sleeve", "neckline": "neck", "collar": "neck"}


def schema() -> Schema:
    attrs = [Attribute(name, values, region=REGION_OF.get(name)) for name, values in DIRECT.values()]
    attrs.append(Attribute("pattern", PATTERN_FLAGS))
    attrs.append(Attribute("color", (*COLOR_FLAGS, MULTICOLOR)))
    return Schema(
        tuple(attrs),
        regions=(Region("sleeve", "sleeve_length"), Region("neck", "neckline")),
        region_aware=("color", "pattern"),
        provenance={
            "dataset": "Clothing Attribute Dataset",
            "citation": "H. Chen, A. Gallagher, B. Girod, Describing Clothing by Semantic Attributes, ECCV 2012",
            "importer": "cad",
        },
    )


def _load_gt(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file missing (expected the original labels/<attr>_GT.mat layout)")
    try:
        gt = loadmat(str(path))["GT"]
    except Exception as e:  # scipy raises a variety of types on a bad file
        raise ValueError(f"{path}: cannot read a 'GT' matrix ({e})") from None
    gt = np.asarray(gt, dtype=np.float64).reshape(-1)
    if gt.shape[0] != NUM_ROWS:
        raise ValueError(f"{path}: GT has {gt.shape[0]} rows, expected {NUM_ROWS}")
    return gt


def _codes(gt: np.ndarray, k: int, path: Path) -> np.ndarray:
    """1..k codes (NaN allowed) -> 0-based value indices with UNKNOWN for NaN."""
    known = ~np.isnan(gt)
    bad = known & ~np.isin(gt, np.arange(1, k + 1))
    if bad.any():
        raise ValueError(f"{path}: values outside 1..{k} at rows {np.flatnonzero(bad)[:5] + 1}")
    out = np.full(gt.shape, UNKNOWN, dtype=np.int64)
    out[known] = gt[known].astype(np.int64) - 1
    return out


def single_from_flags(flags: np.ndarray) -> np.ndarray:
    """(N, F) binary flags coded 1=no, 2=yes, NaN -> index of the single 'yes' flag, else UNKNOWN."""
    yes = flags == 2
    n_yes = yes.sum(axis=1)
    return np.where(n_yes == 1, yes.argmax(axis=1), UNKNOWN).astype(np.int64)


def collect(src: str | Path) -> Collected:
    src = Path(src)
    labels_dir = src / "labels"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"{src}: no labels/ folder; expected the Clothing Attribute Dataset's original layout")
    sch = schema()
    columns = []
    for stem, (_, values) in DIRECT.items():
        path = labels_dir / f"{stem}_GT.mat"
        columns.append(_codes(_load_gt(path), len(values), path))
    pattern = single_from_flags(np.stack([_load_gt(labels_dir / f"pattern_{f}_GT.mat") for f in PATTERN_FLAGS], 1))
    colour_flags = np.stack([_load_gt(labels_dir / f"{c}_GT.mat") for c in COLOR_FLAGS], 1)
    many = _load_gt(labels_dir / "many_colors_GT.mat") == 2
    color = np.where(many, len(COLOR_FLAGS), single_from_flags(colour_flags))
    labels = np.stack([*columns, pattern, color], axis=1)
    cands = [
        Candidate(id=f"{i + 1:06d}", source=src / "images" / f"{i + 1:06d}.jpg", labels=tuple(int(v) for v in labels[i]))
        for i in range(NUM_ROWS)
    ]
    notes = [
        "pattern and color are single-valued: one 'yes' flag gives the value, 'many colors' gives multicolor, "
        "none or several give unknown",
        "no official split: train/val/test assigned by a seeded split stratified by each item's rarest value",
    ]
    return Collected(sch, cands, notes=notes)
