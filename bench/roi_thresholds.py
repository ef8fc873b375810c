"""How well each attribute's ROI fits its ground-truth region, for several ROI thresholds.

    python bench/roi_thresholds.py --model RUN --data CATALOG [--split val] [--thresholds 0.3,0.5,0.6,0.7,0.8] [--norm minmax|median] [--maps value|attribute]

For a catalog with region boxes (the synthetic one), prints per region attribute the share of
items whose ROI reaches IoU ≥ 0.5 with the best-matching ground-truth part, at each threshold,
computed from the trained model's activation maps (the ROIs are extracted again; the model is not
retrained). ``--norm`` scales the maps as the model's ``roi_norm`` option would (default: the
model's own). ``--maps attribute`` draws each ROI from the attribute-level map (the mean of the
attribute's min-max normalised value maps, ``localization.attribute_maps``) instead of the map of
the predicted value (what the model does). Use it on the val split to choose ``roi_thresholds``
and ``roi_norm`` (never on test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashionsearchnet import checkpoint as ckpt  # noqa: E402
from fashionsearchnet.catalog import read_catalog  # noqa: E402
from fashionsearchnet.data import load_many, normalise  # noqa: E402
from fashionsearchnet.localization import ROI_NORMS, attribute_maps, boxes_from_maps  # noqa: E402
from fashionsearchnet.metrics import iou_hits  # noqa: E402


@torch.no_grad()
def activation_maps(model, paths, batch: int = 100, kind: str = "value") -> torch.Tensor:
    """(N, A, H, W): each attribute's map of its predicted value, or its attribute-level map."""
    cfg, out = model.cfg, []
    for s in range(0, len(paths), batch):
        x = normalise(load_many(paths[s : s + batch], cfg.image_size), cfg.mean, cfg.std)
        conv7, logits = model.forward_maps(model.forward_features(x))
        if kind == "attribute":
            out.append(attribute_maps(model.all_activation_maps(conv7), cfg.num_values))
        else:
            out.append(model.activation_maps(conv7, model.predict_values(logits.float())).float())
    return torch.cat(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--thresholds", default="0.3,0.5,0.6,0.7,0.8")
    ap.add_argument("--maps", choices=["value", "attribute"], default="value", help="the predicted value's map (the model's ROIs) or the attribute-level map")
    ap.add_argument("--norm", choices=ROI_NORMS, default=None, help="map scaling before the threshold (default: the model's roi_norm)")
    args = ap.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        ap.error(f"--thresholds: expected numbers separated by commas, got {args.thresholds!r}")
    if not all(0.0 <= t < 1.0 for t in thresholds):
        ap.error("--thresholds: each must be in [0, 1)")
    from PIL import Image

    cat = read_catalog(args.data)
    recs = cat.split(args.split)
    model, schema = ckpt.load_model(args.model, torch.device("cpu"))
    model.eval()
    norm = args.norm or ("the model's" if model.cfg.median_rois else model.cfg.roi_norm)
    maps = activation_maps(model, [cat.image_path(r) for r in recs], kind=args.maps)
    h, w = maps.shape[-2:]
    sizes = []
    for r in recs:
        with Image.open(cat.image_path(r)) as im:
            sizes.append(im.size)
    print(f"{args.model} on {args.data} ({args.split}, {len(recs)} items): share of ROIs with IoU ≥ 0.5 ({args.maps} maps, {norm} scaling)")
    print(f"{'attribute':<16} {'items':>6} " + " ".join(f"{'t=' + format(t, 'g'):>7}" for t in thresholds))
    for a, attr in enumerate(schema.attributes):
        rows = [i for i, r in enumerate(recs) if attr.region and r.boxes.get(attr.region)]
        if not rows:
            continue
        gts = [[(x0 / sizes[i][0], y0 / sizes[i][1], x1 / sizes[i][0], y1 / sizes[i][1]) for x0, y0, x1, y1 in recs[i].boxes[attr.region]] for i in rows]
        cells = []
        for t in thresholds:
            boxes = boxes_from_maps(maps[rows, a], t, model.cfg.roi_upsample, args.norm or model.cfg.norm_of(a)) / torch.tensor([w, h, w, h])
            cells.append(f"{iou_hits(boxes.numpy(), gts).mean():>7.2f}")
        print(f"{attr.name:<16} {len(rows):>6} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
