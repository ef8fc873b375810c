"""Readable reports of an evaluation: Markdown and PNG figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METHOD_NAMES = {
    "fsn": "FashionSearchNet",
    "fsn_noloc": "FSN without localization",
    "attribute_only": "attribute-only",
    "global_feature": "global feature (no manipulation)",
}


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def markdown(r: dict[str, Any], figures: list[str]) -> str:
    s = r["settings"]
    lines = [
        "# FashionSearchNet evaluation",
        "",
        f"- model: `{r['model']['path']}` ({r['model']['backbone']}, fingerprint {r['model']['fingerprint']}, selected at epoch {r['model']['selected_epoch']} on the val split)",
        f"- no-localization model: `{r['noloc_model']}`" if r["noloc_model"] else "- no-localization model: not given",
        f"- data: `{r['data']}`, split `{r['split']}`: {r['gallery']} gallery items (the query items are in the gallery)",
        f"- extra weight on changed attributes: {s['extra_weight']}; query sample: {s['max_queries'] or 'all'} (seed {s['seed']}); {r['seconds']} s",
    ]
    if s.get("held_out"):
        lines.append(f"- held out (never seen in training; targets still match on them, no query changes them globally): {', '.join(s['held_out'])}")
    lines.append("")
    for name, p in r["protocols"].items():
        lines += [f"## {name.capitalize()} manipulation: top-k accuracy (%) and NDCG@30", ""]
        if p.get("dropped_no_prototype"):
            lines += [f"{p['dropped_no_prototype']} queries were dropped for every method: their target value has no training item, so no prototype.", ""]
        if not p.get("methods"):
            lines += [p.get("note", "no queries"), ""]
            continue
        ks = next(iter(m["topk"] for m in p["methods"].values() if "topk" in m))
        lines.append("| method | queries | " + " | ".join(f"top-{k}" for k in ks) + " | NDCG@30 |")
        lines.append("|---|---:|" + "---:|" * (len(ks) + 1))
        for m, v in p["methods"].items():
            if "topk" not in v:
                lines.append(f"| {METHOD_NAMES.get(m, m)} | – | {v.get('note', '')} |")
                continue
            lines.append(f"| {METHOD_NAMES.get(m, m)} | {v['queries']} | " + " | ".join(_fmt(v["topk"][k]) for k in ks) + f" | {_fmt(v['ndcg30'])} |")
        fsn = p["methods"].get("fsn", {}).get("topk", {}).get("30")
        gains = []
        for m, v in p["methods"].items():
            if m != "fsn" and "topk" in v and fsn is not None:
                base = v["topk"]["30"]
                rel = f", {100 * (fsn - base) / base:+.0f}% relative" if base > 0 else ""
                gains.append(f"{METHOD_NAMES.get(m, m)} {100 * (fsn - base):+.1f} points{rel}")
        if gains:
            lines += ["", "FashionSearchNet at top-30 against " + "; ".join(gains) + "."]
        lines.append("")
    lines += ["## Attribute prediction (top-1 %, top-3 % for attributes with more than 5 values)", ""]
    models = list(r["attributes"])
    lines.append("| attribute | known | " + " | ".join(METHOD_NAMES.get(m, m) for m in models) + " |")
    lines.append("|---|---:|" + "---:|" * len(models))
    first = r["attributes"][models[0]]["per_attribute"]
    for a, row in first.items():
        cells = []
        for m in models:
            x = r["attributes"][m]["per_attribute"][a]
            cells.append(_fmt(x["top1"]) + (f" (top-3 {_fmt(x['top3'])})" if "top3" in x else ""))
        lines.append(f"| {a} | {row['known']} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(_fmt(r["attributes"][m]["mean_top1"]) for m in models) + " |")
    lines.append("")
    if r["localization"]:
        lines += ["## Localization (activation-map ROIs against ground-truth boxes)", "", "| attribute | region | items | IoU ≥ 0.5 (%) | pointing game (%) |", "|---|---|---:|---:|---:|"]
        for a, v in r["localization"].items():
            lines.append(f"| {a} | {v['region']} | {v['items']} | {_fmt(v['iou50'])} | {_fmt(v['pointing'])} |")
        lines.append("")
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def write_figures(report: dict[str, Any], out: Path, model_path: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, p in report["protocols"].items():
        methods = {m: v for m, v in p.get("methods", {}).items() if "topk" in v}
        if not methods:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for m, v in methods.items():
            ks = [int(k) for k in v["topk"]]
            ax.plot(ks, [100 * v["topk"][str(k)] for k in ks], marker="o", label=METHOD_NAMES.get(m, m))
        ax.set_xlabel("k")
        ax.set_ylabel("top-k accuracy (%)")
        ax.set_title(f"{name} manipulation ({p['queries']} queries)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        f = out / f"topk_{name}.png"
        fig.savefig(f)
        plt.close(fig)
        files.append(f)
    attrs = report["attributes"]
    names = list(next(iter(attrs.values()))["per_attribute"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4), dpi=110)
    width = 0.8 / len(attrs)
    for j, (m, t) in enumerate(attrs.items()):
        vals = [100 * t["per_attribute"][a]["top1"] for a in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=METHOD_NAMES.get(m, m))
    ax.set_xticks(np.arange(len(names)) + width * (len(attrs) - 1) / 2, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("attribute prediction")
    fig.tight_layout()
    f = out / "attributes.png"
    fig.savefig(f)
    plt.close(fig)
    files.append(f)
    if report.get("_examples"):
        files.append(gallery(report, out / "gallery.png", model_path))
    return files


def gallery(report: dict[str, Any], path: Path, model_path: Path, thumb: int = 112) -> Path:
    """Rows: query with the activation map of the changed attribute, then the top-5 results (green = exact target)."""
    import torch
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from .checkpoint import load_model
    from .data import load_resized, normalise

    cat, records = report["_catalog"], report["_records"]
    model, schema = load_model(model_path, "cpu")
    rows = [(p, ex) for p, exs in report["_examples"].items() for ex in exs]
    pad, label_h = 6, 16
    canvas = Image.new("RGB", (pad + 6 * (thumb + pad), pad + len(rows) * (thumb + label_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    jet = colormaps["jet"]
    for i, (proto, (row, edit, ranked, hits)) in enumerate(rows):
        y = pad + i * (thumb + label_h + pad)
        img = load_resized(cat.image_path(records[row]), model.cfg.image_size)
        attr = edit.split("=")[0].split(":")[-1]
        region = edit.split(":")[0] if ":" in edit.split("=")[0] else None
        a = schema.attribute_index(schema.region(region).roi_attribute if region else attr)
        with torch.no_grad():
            x = normalise(img[None], model.cfg.mean, model.cfg.std)
            conv7, gap = model.forward_maps(model.forward_features(x))
            m = model.roi_maps(conv7, model.predict_values(gap))[0, a]
        m = (m - m.min()) / (m.max() - m.min() + 1e-9)
        heat = (jet(m.numpy())[..., :3] * 255).astype(np.uint8)
        heat = Image.fromarray(heat).resize((thumb, thumb), Image.BILINEAR)
        base = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((thumb, thumb), Image.BILINEAR)
        canvas.paste(Image.blend(base, heat, 0.45), (pad, y + label_h))
        draw.text((pad, y + 2), f"{proto}: {edit}"[:40], fill="black")
        for j, (r, hit) in enumerate(zip(ranked, hits)):
            if r < 0:
                continue
            th = Image.fromarray(load_resized(cat.image_path(records[r]), thumb).permute(1, 2, 0).numpy())
            xx = pad + (j + 1) * (thumb + pad)
            canvas.paste(th, (xx, y + label_h))
            draw.rectangle((xx - 2, y + label_h - 2, xx + thumb + 1, y + label_h + thumb + 1), outline=(0, 170, 0) if hit else (200, 0, 0), width=3)
    canvas.save(path)
    return path
