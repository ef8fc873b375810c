"""The procedural synthetic catalog: garments whose attributes live in known regions.

Each image shows one garment drawn with PIL polygons over a cluttered background:

- ``category`` from the body's silhouette (t-shirt, dress, coat, crop top),
- ``color`` and ``pattern`` (solid, stripes, dots, checks) of the body,
- ``sleeve_length`` (none, short, long) and ``sleeve_color`` (often not the body's colour;
  unknown when there are no sleeves),
- ``neckline`` (round, v-neck, boat) cut into the top of the body,

with nuisance a global descriptor cannot ignore: distractor shapes in the same palette, random
position, scale and rotation, a lighting gradient and pixel noise. Every item also records its
ground-truth regions, one box per part: ``sleeve`` (two boxes), ``neck`` (the area any neckline
occupies, the same for every value) and ``body``.

Everything is drawn from ``numpy.random.default_rng([seed, index])``, so an item depends only on
the seed and its index (not on worker count), and the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .catalog import Record, StagingDir, write_catalog_files
from .schema import UNKNOWN, Attribute, Region, Schema
from .splits import stratified_splits

PALETTE = {
    "red": (205, 35, 35),
    "yellow": (235, 205, 35),
    "green": (35, 155, 60),
    "blue": (35, 70, 210),
    "purple": (135, 45, 170),
    "black": (30, 30, 30),
}
COLORS = tuple(PALETTE)
CATEGORIES = ("t-shirt", "dress", "coat", "crop-top")
SLEEVES = ("none", "short", "long")
NECKLINES = ("round", "v-neck", "boat")
PATTERNS = ("solid", "stripes", "dots", "checks")
SKIN = (225, 185, 150)
# The neck region's box: where any of the three necklines lies (the union of their extents), so the
# box neither gives the value away nor degenerates (a boat neck alone is 0.05 high: under a map cell).
NECK_AREA = (-0.15, 0.0, 0.15, 0.24)  # x0, y0, x1, y1 in the garment frame, y from the shoulder line
ROUND_BAND = 0.10  # radius of the round neck's collar band (its outline), garment frame


def schema() -> Schema:
    return Schema(
        (
            Attribute("category", CATEGORIES, region="body"),
            Attribute("color", COLORS, region="body"),
            Attribute("pattern", PATTERNS, region="body"),
            Attribute("sleeve_length", SLEEVES, region="sleeve"),
            Attribute("sleeve_color", COLORS, region="sleeve", describes="color"),
            Attribute("neckline", NECKLINES, region="neck"),
        ),
        regions=(Region("sleeve", "sleeve_length"), Region("neck", "neckline"), Region("body", "color")),
        region_aware=("color",),
        provenance={"dataset": "fashionsearchnet synthetic catalog", "importer": "synth"},
    )


@dataclass
class Spec:
    """Everything that decides one image. Sizes are fractions of the image side."""

    category: int
    color: int
    pattern: int
    sleeve_length: int
    sleeve_color: int
    neckline: int
    cx: float = 0.5
    cy: float = 0.5
    scale: float = 1.0
    angle: float = 0.0  # degrees, counter-clockwise on screen
    background: tuple[int, int, int] = (200, 200, 200)
    distractors: list[tuple] = field(default_factory=list)
    brightness: float = 1.0
    gradient: tuple[float, float] = (0.0, 0.0)
    noise: float = 0.0
    noise_seed: int = 0

    def labels(self) -> tuple[int, ...]:
        sc = self.sleeve_color if self.sleeve_length != 0 else UNKNOWN
        return (self.category, self.color, self.pattern, self.sleeve_length, sc, self.neckline)


def sample_spec(rng: np.random.Generator) -> Spec:
    nc = len(COLORS)
    color = int(rng.integers(nc))
    sleeve_length = int(rng.integers(len(SLEEVES)))
    # sleeves often differ from the body, so colour must be looked for in the right place
    sleeve_color = color if rng.random() < 0.35 else int((color + rng.integers(1, nc)) % nc)
    spec = Spec(
        category=int(rng.integers(len(CATEGORIES))),
        color=color,
        pattern=int(rng.integers(len(PATTERNS))),
        sleeve_length=sleeve_length,
        sleeve_color=sleeve_color,
        neckline=int(rng.integers(len(NECKLINES))),
        cx=float(rng.uniform(0.38, 0.62)),
        cy=float(rng.uniform(0.42, 0.58)),
        scale=float(rng.uniform(0.72, 1.0)),
        angle=float(rng.uniform(-12, 12)),
        background=tuple(int(v) for v in rng.integers(90, 236, size=3)),
        brightness=float(rng.uniform(0.8, 1.15)),
        gradient=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))),
        noise=float(rng.uniform(2, 8)),
        noise_seed=int(rng.integers(2**31)),
    )
    for _ in range(int(rng.integers(3, 7))):
        kind = int(rng.integers(3))
        # distractors reuse the garment palette (and its patterns' shapes) so global colour or
        # texture statistics do not give the answer away
        col = PALETTE[COLORS[int(rng.integers(nc))]] if rng.random() < 0.7 else tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0.0, 1.0, 2)
        w, h = rng.uniform(0.06, 0.22, 2)
        spec.distractors.append((kind, float(x), float(y), float(w), float(h), col))
    return spec


# -- geometry (garment frame: origin at the garment centre, y down, unit = image side × scale) --
def _silhouette(category: int) -> tuple[list[tuple[float, float]], float, float]:
    """Body polygon, shoulder y (top) and half shoulder width."""
    top, hw = -0.30, 0.17
    if category == 0:  # t-shirt: straight, hip length
        pts = [(-hw, top), (hw, top), (hw, 0.14), (-hw, 0.14)]
    elif category == 1:  # dress: fitted waist, flared long skirt
        pts = [(-hw, top), (hw, top), (0.13, -0.02), (0.29, 0.40), (-0.29, 0.40), (-0.13, -0.02)]
    elif category == 2:  # coat: long, wide, straight
        pts = [(-hw - 0.02, top), (hw + 0.02, top), (hw + 0.04, 0.38), (-hw - 0.04, 0.38)]
        hw += 0.02
    else:  # crop top: short and wide
        pts = [(-hw - 0.03, top), (hw + 0.03, top), (hw + 0.03, -0.08), (-hw - 0.03, -0.08)]
        hw += 0.03
    return pts, top, hw


def _sleeves(sleeve_length: int, top: float, hw: float) -> list[list[tuple[float, float]]]:
    if sleeve_length == 0:
        return []
    length = 0.13 if sleeve_length == 1 else 0.40
    ang = math.radians(32)  # from vertical, pointing outwards
    out = []
    for side in (-1, 1):
        d = (side * math.sin(ang), math.cos(ang))
        n = (d[1] * side, -d[0] * side)  # normal pointing up/outwards
        base_o = (side * hw, top)  # shoulder point
        base_i = (side * hw - side * 0.01, top + 0.13)  # armpit
        width = 0.11
        tip_i = (base_i[0] + d[0] * length, base_i[1] + d[1] * length)
        tip_o = (tip_i[0] + n[0] * width, tip_i[1] + n[1] * width)
        out.append([base_o, base_i, tip_i, tip_o])
    return out


def _neck(neckline: int, top: float) -> list[tuple[float, float]]:
    # three shapes told apart by their outline at the scale of a stride-8 grid cell
    if neckline == 0:  # round: half disc below the shoulder line
        return [(0.10 * math.cos(t), top + 0.10 * math.sin(t)) for t in np.linspace(0, math.pi, 13)]
    if neckline == 1:  # v-neck: narrow and deep
        return [(-0.08, top), (0.08, top), (0.0, top + 0.24)]
    return [(-0.15, top), (0.15, top), (0.13, top + 0.05), (-0.13, top + 0.05)]  # boat: wide and shallow


def _collar_band(spec: Spec, size: int, top: float) -> tuple[list[tuple[float, float]], int]:
    """The round neck's collar band: its centre line (garment frame) and its width in pixels."""
    line = [(ROUND_BAND * math.cos(t), top + ROUND_BAND * math.sin(t)) for t in np.linspace(0, math.pi, 17)]
    return line, max(2, round(0.035 * spec.scale * size))


def neckline_box(spec: Spec, size: int) -> tuple[float, float, float, float]:
    """The pixel box of the neckline as drawn: its skin opening and, for a round neck, the collar band.

    Not a ground-truth region of the catalog (the ``neck`` box is the area any neckline may cover,
    the same for every value): it measures how much of that area a box fitting the drawn neckline
    alone can cover (``bench/region_boxes.py``).
    """
    tf = _transform(spec, size)
    _, top, _ = _silhouette(spec.category)
    pts = tf(_neck(spec.neckline, top))
    if spec.neckline == 0:
        _, width = _collar_band(spec, size, top)
        r = ROUND_BAND + width / 2 / (spec.scale * size)  # the band's outer edge
        pts += tf([(r * math.cos(t), top + r * math.sin(t)) for t in np.linspace(0, math.pi, 33)])
    return _bbox(pts, size)


def _transform(spec: Spec, size: int):
    a = math.radians(spec.angle)
    ca, sa = math.cos(a), math.sin(a)
    s = spec.scale * size
    ox, oy = spec.cx * size, spec.cy * size

    def f(pts):
        # counter-clockwise on screen (y down): x' = x cos + y sin, y' = -x sin + y cos
        return [(ox + s * (x * ca + y * sa), oy + s * (-x * sa + y * ca)) for x, y in pts]

    return f


def _bbox(pts, size: int) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (max(0.0, min(xs)), max(0.0, min(ys)), min(float(size), max(xs)), min(float(size), max(ys)))


def _ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (245, 245, 240) if lum < 150 else (25, 25, 25)


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: int, tf, ink, size: int, scale: float) -> None:
    step = 0.06
    lw = max(1, round(0.022 * scale * size))
    grid = np.arange(-0.36, 0.45, step)  # covers every silhouette in the garment frame
    if pattern in (1, 3):  # stripes (horizontal), checks add vertical lines
        for y in grid:
            draw.line(tf([(-0.5, y), (0.5, y)]), fill=ink, width=lw)
    if pattern == 3:
        for x in grid:
            draw.line(tf([(x, -0.5), (x, 0.5)]), fill=ink, width=lw)
    if pattern == 2:  # dots
        r = 0.018 * scale * size
        coarse = np.arange(-0.34, 0.44, 0.075)
        for i, y in enumerate(coarse):
            for x in coarse + (0.0375 if i % 2 else 0):
                (px, py), = tf([(x, y)])
                draw.ellipse((px - r, py - r, px + r, py + r), fill=ink)


def render(spec: Spec, size: int) -> tuple[Image.Image, dict[str, list[tuple[float, float, float, float]]]]:
    """Draw one item; return the RGB image and its ground-truth boxes per region."""
    img = Image.new("RGB", (size, size), spec.background)
    draw = ImageDraw.Draw(img)
    for kind, x, y, w, h, col in spec.distractors:
        box = (x * size, y * size, (x + w) * size, (y + h) * size)
        if kind == 0:
            draw.rectangle(box, fill=col)
        elif kind == 1:
            draw.ellipse(box, fill=col)
        else:
            draw.line((box[0], box[1], box[2], box[3]), fill=col, width=max(2, round(0.035 * size)))
    tf = _transform(spec, size)
    body, top, hw = _silhouette(spec.category)
    body_px = tf(body)
    body_color = PALETTE[COLORS[spec.color]]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(body_px, fill=255)
    layer = Image.new("RGB", (size, size), body_color)
    if spec.pattern:
        _draw_pattern(ImageDraw.Draw(layer), spec.pattern, tf, _ink(body_color), size, spec.scale)
    img.paste(layer, (0, 0), mask)
    neck_px = tf(_neck(spec.neckline, top))
    draw.polygon(neck_px, fill=SKIN)
    if spec.neckline == 0:
        # a round neck's ribbed collar band: evidence of its own in the neck area. Without it the
        # network recognised `round` by the absence of v-neck and boat outlines, and its activation
        # map lit the background (README, "Localization")
        band, width = _collar_band(spec, size, top)
        draw.line(tf(band), fill=_ink(body_color), width=width, joint="curve")
    if spec.category == 2:  # the coat's opening
        neck_bottom = max(p[1] for p in _neck(spec.neckline, top)) - top
        draw.line(tf([(0, top + neck_bottom), (0, 0.38)]), fill=(20, 20, 20), width=max(1, round(0.012 * spec.scale * size)))
    sleeves_px = [tf(s) for s in _sleeves(spec.sleeve_length, top, hw)]
    sleeve_col = PALETTE[COLORS[spec.sleeve_color]]
    for s in sleeves_px:
        draw.polygon(s, fill=sleeve_col)
    x0, y0, x1, y1 = NECK_AREA
    neck_area = tf([(x0, top + y0), (x1, top + y0), (x1, top + y1), (x0, top + y1)])
    boxes = {"body": [_bbox(body_px, size)], "neck": [_bbox(neck_area, size)]}
    if sleeves_px:
        boxes["sleeve"] = [_bbox(s, size) for s in sleeves_px]
    return _light(img, spec), boxes


def _light(img: Image.Image, spec: Spec) -> Image.Image:
    if spec.brightness == 1.0 and spec.gradient == (0.0, 0.0) and spec.noise == 0.0:
        return img
    a = np.asarray(img, dtype=np.float32)
    size = a.shape[0]
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gain = spec.brightness * (1.0 + spec.gradient[0] * ramp[None, :] + spec.gradient[1] * ramp[:, None])
    a = a * gain[:, :, None] + 0.5
    if spec.noise:
        # a crop of a fixed noise field: as random as fresh noise for our purpose, and 10x cheaper
        tile = _noise_tile(size)
        dy, dx = divmod(spec.noise_seed % (_NOISE_PAD * _NOISE_PAD), _NOISE_PAD)
        a += tile[dy : dy + size, dx : dx + size] * np.float32(spec.noise)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


_NOISE_PAD = 61
_noise_tiles: dict[int, np.ndarray] = {}


def _noise_tile(size: int) -> np.ndarray:
    if size not in _noise_tiles:
        rng = np.random.default_rng(20180618)
        _noise_tiles[size] = rng.standard_normal((size + _NOISE_PAD, size + _NOISE_PAD, 3), dtype=np.float32)
    return _noise_tiles[size]


def make_item(seed: int, index: int, size: int) -> tuple[Image.Image, Spec, dict]:
    spec = sample_spec(np.random.default_rng([seed, index]))
    img, boxes = render(spec, size)
    return img, spec, boxes


def _write_chunk(args) -> list[tuple[str, tuple[int, ...], dict]]:
    folder, seed, size, start, stop = args
    out = []
    for i in range(start, stop):
        img, spec, boxes = make_item(seed, i, size)
        rel = f"images/{i:06d}.jpg"
        img.save(Path(folder) / rel, format="JPEG", quality=92)
        out.append((rel, spec.labels(), boxes))
    return out


def generate(out: str | os.PathLike, n: int, size: int = 128, seed: int = 0, overwrite: bool = False, workers: int | None = None, progress=None) -> Path:
    """Write a synthetic catalog of ``n`` items at ``size`` px into ``out`` (atomically)."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if not 32 <= size <= 2048:
        raise ValueError(f"--size must be between 32 and 2048 pixels, got {size}")
    workers = workers or min(4, os.cpu_count() or 1)
    sch = schema()
    with StagingDir(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        chunk = 250
        jobs = [(str(tmp), seed, size, s, min(n, s + chunk)) for s in range(0, n, chunk)]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                parts = pool.map(_write_chunk, jobs)
                parts = progress(parts, total=len(jobs), desc="drawing", unit="chunk") if progress else parts
                items = [x for p in parts for x in p]
        else:
            parts = progress(jobs, desc="drawing", unit="chunk") if progress else jobs
            items = [x for job in parts for x in _write_chunk(job)]
        labels = np.asarray([lab for _, lab, _ in items])
        splits = stratified_splits(labels, seed=seed)
        records = [
            Record(f"syn{i:06d}", rel, split, lab, boxes={k: tuple(v) for k, v in boxes.items()})
            for i, ((rel, lab, boxes), split) in enumerate(zip(items, splits))
        ]
        write_catalog_files(tmp, sch, records)
        sch_info = {"n": n, "size": size, "seed": seed}
        (tmp / "synth.json").write_text(json.dumps(sch_info) + "\n")
    return Path(out)
