"""Region boxes of the synthetic catalog, per attribute value: what the ROIs hit, and what they could.

    python bench/region_boxes.py --data CATALOG [--split val] [--model RUN]

For a catalog drawn by ``fsn synth`` (its items are redrawn from the seed in ``synth.json``):

- the neckline bound: a box fitting the drawn neckline exactly (``synthetic.neckline_box``: the
  skin opening, and the collar band of a round neck) against the catalog's ``neck`` box, which is
  the area any of the three necklines may cover. Its IoU is what an ROI that finds the neckline
  itself, and nothing around it, would score;
- with ``--model``: the model's ROIs as ``fsn evaluate`` computes them (the predicted value's map),
  per value of each region attribute, as the share with IoU ≥ 0.5 against the ground truth (the
  best-matching part), their mean area next to the ground-truth parts', and for the neckline also against the drawn neckline's box.

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


def model_rois(run: Path, cat, recs, size: int) -> tuple[np.ndarray, object]:
    """(N, A, 4) ROIs in pixels of the catalog's (square, ``size`` px) images, as ``fsn evaluate`` computes them."""
    import torch

    from fashionsearchnet import checkpoint as ckpt
    from fashionsearchnet.data import load_many
    from fashionsearchnet.embed import embed_batch

    model, schema = ckpt.load_model(run, torch.device("cpu"))
    model.eval()
    out = [embed_batch(model, load_many([cat.image_path(r) for r in recs[s : s + 100]], model.cfg.image_size), torch.device("cpu")).rois for s in range(0, len(recs), 100)]
    return np.concatenate(out) * size, schema


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a catalog written by `fsn synth`")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--model", type=Path, help="a run folder of `fsn train` on this catalog")
    args = ap.parse_args(argv)
    info_path = args.data / "synth.json"
    if not info_path.is_file():
        ap.error(f"--data: {args.data} has no synth.json; this benchmark redraws the items of a catalog written by `fsn synth`")
    info = json.loads(info_path.read_text())
    cat = read_catalog(args.data)
    recs = cat.split(args.split)
    specs = []
    for r in recs:
        m = re.fullmatch(r"syn(\d+)", r.id)
        if not m:
            ap.error(f"--data: item id {r.id!r} is not one `fsn synth` writes (synNNNNNN)")
        specs.append(syn.sample_spec(np.random.default_rng([info["seed"], int(m.group(1))])))
    size = info["size"]
    neck = [r.boxes["neck"][0] for r in recs]
    drawn = [syn.neckline_box(s, size) for s in specs]
    bound = np.array([_iou(d, n) for d, n in zip(drawn, neck)])
    value = np.array([s.neckline for s in specs])
    print(f"{args.data} ({args.split}, {len(recs)} items, {size} px)")
    print("A box fitting the drawn neckline against the neck-area box (the ground truth):")
    print(f"{'neckline':<10} {'items':>6} {'mean IoU':>9} {'IoU>=0.5':>9} {'IoU>=0.7':>9} {'drawn area':>11} {'neck area':>10}")
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1]) / size**2  # noqa: E731
    for v, name in [*enumerate(syn.NECKLINES), (None, "all")]:
        sel = np.ones(len(recs), bool) if v is None else value == v
        print(f"{name:<10} {sel.sum():>6} {bound[sel].mean():>9.3f} {(bound[sel] >= 0.5).mean() * 100:>8.1f}% {(bound[sel] >= 0.7).mean() * 100:>8.1f}%"
              f" {np.mean([area(d) for d, s in zip(drawn, sel) if s]):>11.3f} {np.mean([area(n) for n, s in zip(neck, sel) if s]):>10.3f}")
    if args.model is None:
        return 0
    rois, schema = model_rois(args.model, cat, recs, size)
    print(f"\n{args.model}: ROI IoU >= 0.5 with the ground truth per value (mean ROI area, share of the picture)")
    print(f"{'attribute':<14} {'value':<10} {'items':>6} {'IoU>=0.5':>9} {'ROI area':>9} {'GT area':>8} {'vs drawn neckline':>18}")
    labels = np.array([s.labels() for s in specs])
    for a, attr in enumerate(schema.attributes):
        if not attr.region:
            continue
        for v, vname in enumerate(attr.values):
            rows = [i for i in range(len(recs)) if labels[i, a] == v and recs[i].boxes.get(attr.region)]
            if not rows:
                continue
            hit = np.mean([max(_iou(rois[i, a], g) for g in recs[i].boxes[attr.region]) >= 0.5 for i in rows]) * 100
            extra = ""
            if attr.name == "neckline":
                extra = f"{np.mean([_iou(rois[i, a], drawn[i]) >= 0.5 for i in rows]) * 100:>17.1f}%"
            print(f"{attr.name:<14} {vname:<10} {len(rows):>6} {hit:>8.1f}% {np.mean([area(rois[i, a]) for i in rows]):>9.3f}"
                  f" {np.mean([area(g) for i in rows for g in recs[i].boxes[attr.region]]):>8.3f} {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
