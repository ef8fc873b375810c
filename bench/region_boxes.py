"""Region boxes of the synthetic catalog, per attribute value: what the ROIs hit, and what they could.

    python bench/region_boxes.py --data CATALOG [--split val] [--model RUN]

For a catalog drawn by ``fsn synth`` (its items are redrawn from the seed in ``synth.json``):

- the neckline bound: a box fitting the drawn neckline exactly (``synthetic.neckline_box``: the
  skin opening, and the collar band of a round neck) against the catalog's ``neck`` box, which is
  the area any of the three necklines may cover. Its IoU is what an ROI that finds the neckline
  itself, and nothing around it, would score;
- with ``--model``: the model's ROIs as ``fsn evaluate`` computes them (the predicted value's map),
  per value of each region attribute: the share with IoU ≥ 0.5 against the ground truth (the
  best-matching part), their mean area next to the ground-truth parts', and for the neckline the
  share against the drawn neckline's box.

Measurement only (nothing is chosen from it); run it on val unless a figure for test is wanted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashionsearchnet import synthetic as syn  # noqa: E402
from fashionsearchnet.catalog import read_catalog  # noqa: E402
from fashionsearchnet.metrics import _iou  # noqa: E402


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def redraw_specs(recs, seed: int) -> list:
    """The ``synthetic.Spec`` of each record of a catalog written by ``fsn synth`` with ``seed``."""
    out = []
    for r in recs:
        m = re.fullmatch(r"syn(\d+)", r.id)
        if not m:
            raise ValueError(f"item id {r.id!r} is not one `fsn synth` writes (synNNNNNN)")
        out.append(syn.sample_spec(np.random.default_rng([seed, int(m.group(1))])))
    return out


def model_rois(run: Path, cat, recs, size: int) -> tuple[np.ndarray, object]:
    """(N, A, 4) ROIs in pixels of the catalog's (square, ``size`` px) images, computed by the code
    ``fsn evaluate`` runs, and the model's schema (its attributes index the ROIs)."""
    import torch

    from fashionsearchnet.checkpoint import read_meta
    from fashionsearchnet.evaluate import embed_split
    from fashionsearchnet.schema import Schema

    e = embed_split(run, cat, recs, torch.device("cpu"), 100)
    return e.emb.rois * size, Schema.from_dict(read_meta(run)["schema"])


def roi_hits_by_value(rois: np.ndarray, recs, schema, catalog_schema, drawn) -> list[tuple]:
    """Per (region attribute, value) with ground-truth boxes: (attribute, value, items, IoU ≥ 0.5
    hits against the best-matching part, mean ROI area, mean part area, hits against the drawn
    neckline's box or None for other attributes). ``schema`` is the model's (it indexes ``rois``),
    ``catalog_schema`` the catalog's (it indexes the records' labels). Boxes and areas in pixels."""
    out = []
    for a, attr in enumerate(schema.attributes):
        if not attr.region:
            continue
        col = catalog_schema.attribute_index(attr.name)
        for v, vname in enumerate(attr.values):
            rows = [i for i, r in enumerate(recs) if r.labels[col] == v and r.boxes.get(attr.region)]
            if not rows:
                continue
            hits = sum(max(_iou(rois[i, a], g) for g in recs[i].boxes[attr.region]) >= 0.5 for i in rows)
            drawn_hits = sum(_iou(rois[i, a], drawn[i]) >= 0.5 for i in rows) if attr.name == "neckline" else None
            parts = [_area(g) for i in rows for g in recs[i].boxes[attr.region]]
            out.append((attr.name, vname, len(rows), int(hits), float(np.mean([_area(rois[i, a]) for i in rows])), float(np.mean(parts)), drawn_hits))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a catalog written by `fsn synth`")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--model", type=Path, help="a run folder of `fsn train` on this catalog")
    args = ap.parse_args(argv)
    info_path = args.data / "synth.json"
    if not info_path.is_file():
        ap.error(f"--data: {args.data} has no synth.json; this benchmark redraws the items of a catalog written by `fsn synth`")
    if args.model is not None:
        from fashionsearchnet.checkpoint import CheckpointError, read_meta

        try:
            read_meta(args.model)
        except CheckpointError as e:
            ap.error(f"--model: {e}")
    info = json.loads(info_path.read_text())
    size = info["size"]
    cat = read_catalog(args.data)
    recs = cat.split(args.split)
    try:
        specs = redraw_specs(recs, info["seed"])
    except ValueError as e:
        ap.error(f"--data: {e}")
    neck = [r.boxes["neck"][0] for r in recs]
    drawn = [syn.neckline_box(s, size) for s in specs]
    bound = np.array([_iou(d, n) for d, n in zip(drawn, neck)])
    value = np.array([s.neckline for s in specs])
    pic = size * size
    print(f"{args.data} ({args.split}, {len(recs)} items, {size} px)")
    print("A box fitting the drawn neckline against the neck-area box (the ground truth):")
    print(f"{'neckline':<10} {'items':>6} {'mean IoU':>9} {'IoU>=0.5':>9} {'IoU>=0.7':>9} {'drawn area':>11} {'neck area':>10}")
    for v, name in [*enumerate(syn.NECKLINES), (None, "all")]:
        sel = np.ones(len(recs), bool) if v is None else value == v
        print(f"{name:<10} {sel.sum():>6} {bound[sel].mean():>9.3f} {(bound[sel] >= 0.5).mean() * 100:>8.1f}% {(bound[sel] >= 0.7).mean() * 100:>8.1f}%"
              f" {np.mean([_area(d) for d, s in zip(drawn, sel) if s]) / pic:>11.3f} {np.mean([_area(n) for n, s in zip(neck, sel) if s]) / pic:>10.3f}")
    if args.model is None:
        return 0
    rois, schema = model_rois(args.model, cat, recs, size)
    print(f"\n{args.model}: ROI IoU >= 0.5 with the ground truth per value (areas: share of the picture)")
    print(f"{'attribute':<14} {'value':<10} {'items':>6} {'IoU>=0.5':>9} {'ROI area':>9} {'GT area':>8} {'vs drawn neckline':>18}")
    for name, vname, n, hits, roi_area, gt_area, drawn_hits in roi_hits_by_value(rois, recs, schema, cat.schema, drawn):
        extra = "" if drawn_hits is None else f"{drawn_hits / n * 100:>17.1f}%"
        print(f"{name:<14} {vname:<10} {n:>6} {hits / n * 100:>8.1f}% {roi_area / pic:>9.3f} {gt_area / pic:>8.3f} {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
