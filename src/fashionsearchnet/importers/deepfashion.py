"""DeepFashion Category and Attribute Prediction Benchmark (Liu et al., CVPR 2016).

Layout: ``Anno/list_attr_cloth.txt``, ``Anno/list_attr_img.txt``, ``Anno/list_category_cloth.txt``,
``Anno/list_category_img.txt``, ``Anno/list_bbox.txt``, ``Eval/list_eval_partition.txt`` and the
images under ``img/``. Each list file starts with a count line and a header line.

- category (50 values) becomes an attribute;
- each attribute type (texture, fabric, shape, part, style) becomes one single-valued attribute:
  the value is the one positive attribute of that type, unknown when none or several are positive;
- the item box becomes the ground-truth box of region ``garment`` (the ROI of ``category``);
- the official train/val/test partition is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..schema import UNKNOWN, Attribute, Region, Schema
from ._common import Candidate, Collected

TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}
SPLIT_NAMES = {"train": "train", "val": "val", "test": "test"}
REGION = "garment"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Data lines of a DeepFashion list file (after the count and header lines), checking the count."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected DeepFashion's Anno/ and Eval/ layout)")
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
        if not first.isdigit():
            raise ValueError(f"{path}:1: expected the number of entries, got {first!r}")
        f.readline()  # header
        n = 0
        for lineno, line in enumerate(f, start=3):
            if line.strip():
                n += 1
                yield lineno, line.rstrip("\n")
    if n != int(first):
        raise ValueError(f"{path}: header says {first} entries, found {n}")


def _name_and_last(line: str, path: Path, lineno: int) -> tuple[str, str]:
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
        raise ValueError(f"{path}:{lineno}: expected '<name> <number>'")
    return parts[0].strip(), parts[1]


def _ident(image_name: str) -> str:
    stem = image_name[4:] if image_name.startswith("img/") else image_name
    return stem.rsplit(".", 1)[0].replace("/", "--")


def collect(src: str | Path) -> Collected:
    src = Path(src)
    anno, ev = src / "Anno", src / "Eval"
    path = anno / "list_attr_cloth.txt"
    attr_names, attr_types = [], []
    for lineno, line in _lines(path):
        name, t = _name_and_last(line, path, lineno)
        if not t.isdigit() or int(t) not in TYPES:
            raise ValueError(f"{path}:{lineno}: attribute type {t!r} is not one of 1..5")
        attr_names.append(name)
        attr_types.append(int(t))
    path = anno / "list_category_cloth.txt"
    categories = [_name_and_last(line, path, n)[0] for n, line in _lines(path)]
    attr_types_arr = np.asarray(attr_types)
    type_members = {t: np.flatnonzero(attr_types_arr == t) for t in TYPES}

    def read_map(path: Path, width: int) -> dict[str, list[str]]:
        out = {}
        for lineno, line in _lines(path):
            parts = line.split()
            if len(parts) != width + 1:
                raise ValueError(f"{path}:{lineno}: expected {width + 1} fields, got {len(parts)}")
            out[parts[0]] = parts[1:]
        return out

    attr_img = read_map(anno / "list_attr_img.txt", len(attr_names))
    cat_img = read_map(anno / "list_category_img.txt", 1)
    bbox = read_map(anno / "list_bbox.txt", 4)
    part = read_map(ev / "list_eval_partition.txt", 1)

    sch = Schema(
        (
            Attribute("category", tuple(categories), region=REGION),
            *(
                Attribute(TYPES[t], tuple(attr_names[i] for i in type_members[t]), region=REGION)
                for t in TYPES
                if len(type_members[t]) >= 2
            ),
        ),
        regions=(Region(REGION, "category"),),
        provenance={"dataset": "DeepFashion Category and Attribute Prediction", "importer": "deepfashion"},
    )
    kept_types = [t for t in TYPES if len(type_members[t]) >= 2]
    cands = []
    for name, (cat,) in cat_img.items():
        if name not in attr_img or name not in part:
            raise ValueError(f"{name}: listed in list_category_img.txt but not in list_attr_img.txt or the partition")
        c = int(cat) - 1
        if not 0 <= c < len(categories):
            raise ValueError(f"{name}: category {cat} outside 1..{len(categories)}")
        flags = np.asarray([int(v) for v in attr_img[name]]) == 1
        labels = [c]
        for t in kept_types:
            on = np.flatnonzero(flags[type_members[t]])  # positions within this type's vocabulary
            labels.append(int(on[0]) if len(on) == 1 else UNKNOWN)
        split = SPLIT_NAMES.get(part[name][0])
        if split is None:
            raise ValueError(f"{name}: evaluation status {part[name][0]!r} is not train, val or test")
        boxes = {}
        if name in bbox:
            x0, y0, x1, y1 = (float(v) for v in bbox[name])
            if x1 > x0 and y1 > y0:
                boxes[REGION] = ((x0, y0, x1, y1),)
        dest = name.rsplit(".", 1)[0]
        cands.append(Candidate(_ident(name), src / name, tuple(labels), split, boxes=boxes, dest=dest))
    notes = ["attribute types become single-valued attributes: exactly one positive gives the value, else unknown"]
    return Collected(sch, cands, notes=notes)
