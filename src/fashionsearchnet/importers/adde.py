"""Split files of the published attribute-manipulation benchmarks (ADDE, ICCV 2021).

Folder ``SRC`` holds ``attr_num.txt`` (values per attribute), ``imgs_{train,test}.txt`` (image paths
relative to an images root), ``labels_{train,test}.txt`` (one-hot rows, sum(attr_num) columns; an
attribute with no 1 is unknown) and optionally the fixed queries ``ref_test.txt`` (test row of each
query's reference image), ``indfull_test.txt`` (+1 new value, −1 old value) and ``gt_test.txt``
(one-hot target labels). The query files are copied under ``adde/`` in the catalog with
``adde/test_ids.txt`` mapping each test row to its item id, so ``fsn evaluate`` can use the
published queries exactly as given.

The benchmarks have no validation split; a seeded, stratified tenth of the training rows becomes
``val`` so that checkpoints are never selected on the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import UNKNOWN, Attribute, Schema
from ..splits import stratified_splits
from ._common import Candidate, Collected

QUERY_FILES = ("ref_test.txt", "indfull_test.txt", "gt_test.txt")
SHOPPING100K_SIZES = (16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15)


def _loadtxt(path: Path, dtype=int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected ADDE's split files)")
    try:
        return np.loadtxt(path, dtype=dtype, ndmin=1)
    except ValueError as e:
        raise ValueError(f"{path}: not a whitespace-separated integer table ({e})") from None


def one_hot_to_labels(rows: np.ndarray, attr_num: np.ndarray, path: Path) -> np.ndarray:
    """(N, ΣV) one-hot rows -> (N, A) value indices, UNKNOWN where an attribute block is all zero."""
    rows = np.atleast_2d(rows)
    if rows.shape[1] != attr_num.sum():
        raise ValueError(f"{path}: rows have {rows.shape[1]} columns, attr_num.txt sums to {attr_num.sum()}")
    if not np.isin(rows, (0, 1)).all():
        raise ValueError(f"{path}: one-hot rows must hold only 0 and 1")
    out = np.full((rows.shape[0], len(attr_num)), UNKNOWN, dtype=np.int64)
    start = 0
    for a, k in enumerate(attr_num):
        block = rows[:, start : start + k]
        s = block.sum(axis=1)
        if (s > 1).any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(s > 1)[0]) + 1} has several values for attribute {a + 1}")
        out[s == 1, a] = block[s == 1].argmax(axis=1)
        start += k
    return out


def collect(src: str | Path, images: str | Path | None = None, attribute_names: str | None = None, seed: int = 0) -> Collected:
    src = Path(src)
    root = Path(images) if images else src
    attr_num = _loadtxt(src / "attr_num.txt")
    if (attr_num < 2).any():
        raise ValueError(f"{src / 'attr_num.txt'}: every attribute needs at least 2 values")
    if attribute_names:
        names = [n.strip() for n in attribute_names.split(",")]
        if len(names) != len(attr_num):
            raise ValueError(f"--attribute-names gives {len(names)} names, attr_num.txt has {len(attr_num)} attributes")
    else:
        names = [f"attr{a + 1:02d}" for a in range(len(attr_num))]
    sch = Schema(
        tuple(Attribute(n, tuple(f"v{i + 1:02d}" for i in range(k))) for n, k in zip(names, attr_num)),
        provenance={"dataset": "ADDE benchmark split", "importer": "adde", "attr_num": [int(k) for k in attr_num]},
    )
    cands: list[Candidate] = []
    test_ids: list[str] = []
    for split in ("train", "test"):
        imgs_path = src / f"imgs_{split}.txt"
        if not imgs_path.is_file():
            raise FileNotFoundError(f"{imgs_path}: missing (expected ADDE's split files)")
        imgs = [ln.strip() for ln in imgs_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        lab_path = src / f"labels_{split}.txt"
        labels = one_hot_to_labels(_loadtxt(lab_path), attr_num, lab_path)
        if len(imgs) != len(labels):
            raise ValueError(f"{imgs_path}: {len(imgs)} images but {lab_path.name} has {len(labels)} rows")
        splits = ["test"] * len(imgs)
        if split == "train":
            splits = ["val" if s == "val" else "train" for s in stratified_splits(labels, seed, (0.9, 0.1, 0.0))]
        for i, (img, lab, s) in enumerate(zip(imgs, labels, splits)):
            item_id = f"{split}{i:06d}"
            if split == "test":
                test_ids.append(item_id)
            dest = f"images/{split}/{i:06d}"
            cands.append(Candidate(item_id, root / img, tuple(int(v) for v in lab), s, title=img, dest=dest))
    extra: dict[str, Path | bytes] = {}
    present = [f for f in QUERY_FILES if (src / f).is_file()]
    if present and len(present) != len(QUERY_FILES):
        raise FileNotFoundError(f"{src}: fixed queries need all of {', '.join(QUERY_FILES)}; found only {', '.join(present)}")
    notes = ["train rows split 9:1 into train and val (seeded, stratified); test rows kept in order"]
    if present:
        ref = _loadtxt(src / "ref_test.txt")
        ind = np.atleast_2d(_loadtxt(src / "indfull_test.txt"))
        gt = np.atleast_2d(_loadtxt(src / "gt_test.txt"))
        if not (len(ref) == len(ind) == len(gt)):
            raise ValueError(f"{src}: query files disagree in length ({len(ref)}, {len(ind)}, {len(gt)})")
        if ref.min() < 0 or ref.max() >= len(test_ids):
            raise ValueError(f"{src / 'ref_test.txt'}: reference rows must be in 0..{len(test_ids) - 1}")
        one_hot_to_labels(gt, attr_num, src / "gt_test.txt")
        for f in QUERY_FILES:
            extra[f"adde/{f}"] = src / f
        extra["adde/test_ids.txt"] = ("\n".join(test_ids) + "\n").encode()
        notes.append(f"{len(ref)} fixed queries kept under adde/")
    return Collected(sch, cands, extra_files=extra, notes=notes)
