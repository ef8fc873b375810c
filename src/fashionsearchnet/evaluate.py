"""``fsn evaluate``: the published attribute-manipulation protocol, baselines in the same run, reports.

Methods, all on the same test split (gallery = query set = test items, as in published work):

- ``fsn``: FashionSearchNet: prototype substitution, weighted per-attribute similarity;
- ``fsn_noloc``: the same, with a model trained without localization (``--noloc-model``);
- ``attribute_only``: the FSN model's predicted attributes, the query's with the edit applied,
  ranked by the number of agreeing attributes, ties broken by visual similarity;
- ``global_feature``: cosine of the backbone's global average feature, no manipulation.

Protocols: ``global`` (change one attribute, method.md §5) and, on catalogs whose schema has
region-specific labelled attributes (``describes``), ``region`` (change one attribute inside one
region, keep everything else, the other regions' values included). Catalogs imported with
``adde`` are evaluated on their fixed published queries.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import checkpoint as ckpt
from .catalog import Catalog, read_catalog
from .embed import Embedding, Prototypes, load_prototypes
from .metrics import TOP_KS, ManipulationQuery, exact_match, iou_hits, manipulation_queries, ndcg, pointing_hits, relevance, topk_accuracy
from .schema import UNKNOWN, Schema, SchemaError, catalog_columns
from .search import Edit

REPORT_SCHEMA_VERSION = 1
# decimals kept in report.json: enough that the tables' one-decimal percentages round the exact
# fraction (4 decimals rounded twice: 493/567 = 86.949 % was stored as 0.8695 and shown as 87.0)
DIGITS = 10
K_MAX = max(TOP_KS)


@dataclass
class Embedded:
    """A model's view of the test split."""

    emb: Embedding
    protos: Prototypes
    weights: np.ndarray  # (B,) base similarity weights
    fingerprint: str


def embed_split(run: Path, cat: Catalog, records, device, batch: int, progress=None) -> Embedded:
    from .data import load_many
    from .device import resolve_precision
    from .embed import embed_batch

    model, schema = ckpt.load_model(run, device)
    dtype = resolve_precision("auto", device)
    protos, pfp = load_prototypes(Path(run) / ckpt.PROTOTYPES_FILE)
    fp = ckpt.fingerprint(run)
    if pfp != fp:
        raise ValueError(f"{run}: prototypes were computed with another model ({pfp} vs {fp})")
    parts = []
    rng = range(0, len(records), batch)
    it = progress(rng, desc=f"embedding {len(records)} items ({Path(run).name})", unit="batch") if progress else rng
    for s in it:
        images = load_many([cat.image_path(r) for r in records[s : s + batch]], model.cfg.image_size)
        parts.append(embed_batch(model, images, device, dtype))
    w2 = (model.global_weights().detach().cpu().numpy() ** 2).astype(np.float32)
    weights = np.concatenate([w2, np.zeros(len(schema.region_pairs()), np.float32)])
    return Embedded(Embedding.concat(parts), protos, weights, fp)


# -- ranking ------------------------------------------------------------------------------------
def _searcher(schema: Schema, e: Embedded):
    """A Searcher over the in-memory test split (brute force, exact)."""
    from .index.backends import NumpyBackend
    from .index.store import LoadedIndex
    from .search import Searcher

    n = len(e.emb)
    vectors = np.concatenate([e.emb.reps.reshape(n, -1), e.emb.regions.reshape(n, -1)], 1).astype(np.float32)
    blocks = list(schema.names) + [f"{r}:{a}" for r, a in schema.region_pairs()]
    manifest = {"model": {"fingerprint": e.fingerprint}, "embed_dim": e.emb.reps.shape[2], "blocks": blocks, "similarity_weights": e.weights.tolist()}
    items = {"ids": np.arange(n).astype(str), "pred": e.emb.pred, "conf": e.emb.conf, "rois": e.emb.rois,
             "labels": np.zeros((n, len(schema.names)), np.int16), "titles": np.asarray([""] * n)}
    idx = LoadedIndex(Path("<memory>"), "memory", manifest, schema, vectors, items, NumpyBackend(vectors), {str(i): i for i in range(n)})
    return Searcher(idx, e.protos)


def resolvable(searchers: list, edits: list[list[Edit]]) -> np.ndarray:
    """Which queries every model's Searcher can answer: an edit towards a value no training item
    has has no prototype. Such queries are dropped for all methods alike, so they stay comparable."""
    from .search import SearchError

    ok: dict[tuple, bool] = {}
    out = np.ones(len(edits), bool)
    for j, ed in enumerate(edits):
        key = tuple(str(x) for x in ed)
        if key not in ok:
            try:
                for s in searchers:
                    s.resolve(ed)
                ok[key] = True
            except SearchError:
                ok[key] = False
        out[j] = ok[key]
    return out


def rank_fsn(s, queries: list[tuple[int, list[Edit]]], extra_weight: float, k: int = K_MAX) -> np.ndarray:
    """(Q, k) gallery rows of Searcher ``s`` for each (query row, edits), the query item included in the gallery."""
    qvecs = np.zeros((len(queries), s.index.vectors.shape[1]), np.float32)
    cache: dict[tuple, list] = {}
    for j, (row, edits) in enumerate(queries):
        key = tuple(str(x) for x in edits)
        if key not in cache:
            cache[key] = s.resolve(edits)
        blocks = s.index.block_vectors([row])[0].copy()
        weights = s.base_weights.copy()
        for b, vec, _ in cache[key]:
            blocks[b] = vec
        for b in {b for b, _, _ in cache[key]}:
            weights[b] = (weights[b] if b < len(s.schema.names) else s._region_base_weight(b)) * (1.0 + extra_weight)
        qvecs[j] = (blocks * weights[:, None]).reshape(-1)
    out = np.full((len(queries), k), -1, np.int64)
    for c in range(0, len(queries), 2048):
        out[c : c + 2048] = s.index.backend.search(qvecs[c : c + 2048], k)[1]
    return out


def rank_attribute_only(e: Embedded, queries: list[tuple[int, dict[int, int]]], k: int = K_MAX) -> np.ndarray:
    """Rank by agreeing predicted attributes (query's predictions with the edit applied), ties by visual similarity."""
    pred, glob = e.emb.pred, e.emb.glob
    out = np.full((len(queries), k), -1, np.int64)
    for j, (row, change) in enumerate(queries):
        want = pred[row].copy()
        for a, v in change.items():
            want[a] = v
        score = (pred == want[None, :]).sum(1) + 0.5 * (glob @ glob[row] + 1.0) / 2.0  # visual term < 1: ties only
        top = np.argsort(-score, kind="stable")[:k]
        out[j, : len(top)] = top
    return out


def rank_global(e: Embedded, rows: list[int], k: int = K_MAX) -> np.ndarray:
    glob = e.emb.glob
    top = np.argsort(-(glob[rows] @ glob.T), axis=1, kind="stable")[:, :k]
    out = np.full((len(rows), k), -1, np.int64)  # a gallery smaller than k leaves −1 padding
    out[:, : top.shape[1]] = top
    return out


def score_ranking(ranked: np.ndarray, gallery_labels: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    match = exact_match(gallery_labels, ranked, targets)
    acc = topk_accuracy(match)
    return {"queries": int(len(targets)), "topk": {str(k): round(v, DIGITS) for k, v in acc.items()}, "ndcg30": round(ndcg(relevance(gallery_labels, ranked, targets), 30), DIGITS)}


# -- protocols ------------------------------------------------------------------------------------
def global_queries(schema: Schema, labels: np.ndarray, max_queries: int | None, seed: int, editable: list[int] | None = None) -> list[ManipulationQuery]:
    """Queries changing one attribute; ``editable``: the attributes a model can change (None: all;
    a held-out attribute has no branch to carry an edit)."""
    return manipulation_queries(labels, schema.num_values, editable, max_queries, seed)


def region_queries(schema: Schema, labels: np.ndarray, max_queries: int | None, seed: int) -> list[tuple[ManipulationQuery, str, str]]:
    """Queries changing a region-specific labelled attribute (sleeve_color = color in sleeve) as region edits."""
    region_attrs = [(schema.attribute_index(a.name), a.region, a.describes) for a in schema.attributes if a.describes]
    if not region_attrs:
        return []
    idx = [a for a, _, _ in region_attrs]
    qs = manipulation_queries(labels, schema.num_values, idx, max_queries, seed)
    by = {a: (r, d) for a, r, d in region_attrs}
    return [(q, *by[q.attribute]) for q in qs]


def adde_queries(cat: Catalog, test_ids: list[str]) -> tuple[list[ManipulationQuery], int]:
    """The fixed published queries of an ``adde`` catalog, mapped to test rows; returns (queries, dropped)."""
    from .importers.adde import one_hot_to_labels

    d = cat.root / "adde"
    attr_num = np.asarray(cat.schema.num_values)
    file_ids = (d / "test_ids.txt").read_text().split()
    ref = np.loadtxt(d / "ref_test.txt", dtype=int, ndmin=1)
    ind = np.atleast_2d(np.loadtxt(d / "indfull_test.txt", dtype=int))
    gt = one_hot_to_labels(np.atleast_2d(np.loadtxt(d / "gt_test.txt", dtype=int)), attr_num, d / "gt_test.txt")
    row_of = {i: r for r, i in enumerate(test_ids)}
    out, dropped = [], 0
    starts = np.concatenate([[0], np.cumsum(attr_num)[:-1]])
    for r, indicator, target in zip(ref, ind, gt):
        item = file_ids[int(r)]
        if item not in row_of:  # its image is absent from this copy
            dropped += 1
            continue
        plus = np.flatnonzero(indicator == 1)
        if len(plus) != 1:
            dropped += 1
            continue
        a = int(np.searchsorted(starts, plus[0], side="right") - 1)
        out.append(ManipulationQuery(row_of[item], a, int(plus[0] - starts[a]), tuple(int(x) for x in target)))
    return out, dropped


# -- attribute prediction and localization --------------------------------------------------------
def attribute_table(schema: Schema, e: Embedded, labels: np.ndarray) -> dict[str, Any]:
    from .metrics import attribute_accuracy

    out = {}
    logits = np.split(e.emb.logits, np.cumsum(schema.num_values)[:-1], axis=1)
    for a, attr in enumerate(schema.attributes):
        row = {"top1": round(attribute_accuracy(e.emb.pred[:, a], labels[:, a]), DIGITS), "known": int((labels[:, a] != UNKNOWN).sum())}
        if attr.num_values > 5:
            row["top3"] = round(attribute_accuracy(logits[a], labels[:, a], top=3), DIGITS)
        out[attr.name] = row
    vals = [r["top1"] for r in out.values() if not math.isnan(r["top1"])]
    return {"per_attribute": out, "mean_top1": round(float(np.mean(vals)), DIGITS) if vals else None}


def localization_table(schema: Schema, e: Embedded, cat: Catalog, records) -> dict[str, Any]:
    """IoU ≥ 0.5 rate and pointing game per attribute whose region has ground-truth boxes."""
    from PIL import Image

    sizes = []
    for r in records:
        with Image.open(cat.image_path(r)) as im:
            sizes.append(im.size)
    out = {}
    for a, attr in enumerate(schema.attributes):
        if not attr.region:
            continue
        rows, gts = [], []
        for i, (r, (w, h)) in enumerate(zip(records, sizes)):
            parts = r.boxes.get(attr.region)
            if parts:
                rows.append(i)
                gts.append([(x0 / w, y0 / h, x1 / w, y1 / h) for x0, y0, x1, y1 in parts])
        if not rows:
            continue
        iou = iou_hits(e.emb.rois[rows, a], gts)
        point = pointing_hits(e.emb.peaks[rows, a], gts)
        out[attr.name] = {"region": attr.region, "items": len(rows), "iou50": round(float(iou.mean()), DIGITS), "pointing": round(float(point.mean()), DIGITS)}
    return out


# -- the run --------------------------------------------------------------------------------------
def evaluate(
    model: str | Path,
    data: str | Path,
    split: str = "test",
    noloc_model: str | Path | None = None,
    max_queries: int | None = None,
    seed: int = 0,
    extra_weight: float = 1.0,
    batch: int = 64,
    device: str = "auto",
    progress: Callable | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    from .device import resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(device)
    cat = read_catalog(data)
    meta = ckpt.read_meta(model)
    schema = Schema.from_dict(meta["schema"])  # the model's: the catalog's, less any held-out attributes
    try:
        cols = catalog_columns(schema, cat.schema)
    except SchemaError as e:
        raise ValueError(f"catalog {data} does not match the model's schema: {e}") from None
    records = cat.split(split)
    if len(records) < 2:
        raise ValueError(f"split {split!r} of {data} has {len(records)} items; evaluation needs a gallery")
    labels = cat.labels(records)  # every catalog attribute: targets match on all of them, held-out ones included
    model_labels = labels[:, cols]
    fsn = embed_split(Path(model), cat, records, dev, batch, progress)
    runs = {"fsn": fsn}
    if noloc_model is not None:
        m2 = ckpt.read_meta(noloc_model)
        if m2["model_config"].get("localization", True):
            raise ValueError(f"--noloc-model {noloc_model} was trained with localization; train it with localization=false")
        if m2["model_config"]["backbone"] != meta["model_config"]["backbone"]:
            raise ValueError("--noloc-model must use the same backbone as --model for a fair comparison")
        if Schema.from_dict(m2["schema"]) != schema:
            raise ValueError("--noloc-model must be trained on the same attributes as --model (the same hold_out) for a fair comparison")
        runs["fsn_noloc"] = embed_split(Path(noloc_model), cat, records, dev, batch, progress)

    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model": {"path": str(Path(model).resolve()), "fingerprint": fsn.fingerprint, "backbone": meta["model_config"]["backbone"], "selected_epoch": meta.get("epoch")},
        "noloc_model": str(Path(noloc_model).resolve()) if noloc_model else None,
        "data": str(Path(data).resolve()),
        "split": split,
        "gallery": len(records),
        "settings": {"max_queries": max_queries, "seed": seed, "extra_weight": extra_weight, "query_in_gallery": True,
                     "held_out": [n for n in cat.schema.names if n not in schema.names]},
        "protocols": {},
    }
    # global protocol
    full = cat.schema  # queries and targets index the catalog's attributes
    protocols: list[tuple[str, list, list]] = []
    fixed = (cat.root / "adde" / "ref_test.txt").is_file() and split == "test"
    if fixed:
        qs, dropped = adde_queries(cat, [r.id for r in records])
        report["settings"]["fixed_queries"] = {"used": len(qs), "dropped_missing_images": dropped}
        if max_queries is not None and len(qs) > max_queries:
            keep = np.sort(np.random.default_rng(seed).choice(len(qs), max_queries, replace=False))
            qs = [qs[j] for j in keep]
    else:
        qs = global_queries(full, labels, max_queries, seed, editable=cols)
    protocols.append(("global", qs, [[Edit(full.names[q.attribute], full.attributes[q.attribute].values[q.value])] for q in qs]))
    rq = region_queries(full, labels, max_queries, seed)
    if any(a.describes for a in full.attributes):  # the catalog has region-specific labels
        protocols.append(("region", [q for q, _, _ in rq], [[Edit(d, full.attributes[q.attribute].values[q.value], r)] for q, r, d in rq]))
    searchers = {m: _searcher(schema, e) for m, e in runs.items()}
    model_col = {c: j for j, c in enumerate(cols)}
    for name, qs, edits in protocols:
        keep = resolvable(list(searchers.values()), edits)
        dropped = len(qs) - int(keep.sum())
        qs = [q for q, k in zip(qs, keep) if k]
        edits = [e for e, k in zip(edits, keep) if k]
        targets = np.asarray([q.target for q in qs], np.int64).reshape(len(qs), len(full.names))
        res: dict[str, Any] = {"queries": len(qs), "methods": {}}
        if dropped:
            res["dropped_no_prototype"] = dropped
            log(f"{name} protocol: {dropped} queries dropped: their target value has no training item, so no prototype")
        if not qs:
            res["note"] = "no query has its target label vector in the gallery"
            report["protocols"][name] = res
            continue
        rows = [q.row for q in qs]
        for mname, searcher in searchers.items():
            ranked = rank_fsn(searcher, list(zip(rows, edits)), extra_weight)
            res["methods"][mname] = score_ranking(ranked, labels, targets)
            if mname == "fsn":  # a few worked examples for the report's gallery figure
                pick = np.random.default_rng(seed).choice(len(qs), min(3, len(qs)), replace=False)
                report.setdefault("_examples", {})[name] = [
                    (rows[j], str(edits[j][0]), ranked[j, :5].tolist(), exact_match(labels, ranked[j : j + 1, :5], targets[j : j + 1])[0].tolist()) for j in pick
                ]
        # predicted attributes can express an edit only of an attribute the model predicts: one held
        # out (sleeve_color) leaves the query's predictions as they are
        ranked = rank_attribute_only(fsn, [(q.row, {model_col[q.attribute]: q.value} if q.attribute in model_col else {}) for q in qs])
        res["methods"]["attribute_only"] = score_ranking(ranked, labels, targets)
        res["methods"]["global_feature"] = score_ranking(rank_global(fsn, rows), labels, targets)
        if "fsn_noloc" not in runs:
            res["methods"]["fsn_noloc"] = {"note": "not run: give --noloc-model (a model trained with localization=false)"}
        report["protocols"][name] = res
        log(f"{name} protocol: {len(qs)} queries; top-30 " + ", ".join(f"{m} {r['topk']['30']:.3f}" for m, r in res["methods"].items() if "topk" in r))
    report["attributes"] = {m: attribute_table(schema, e, model_labels) for m, e in runs.items()}
    report["localization"] = localization_table(schema, fsn, cat, records)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["_runs"] = runs  # in-memory only: figures use them; never serialised
    report["_records"] = records
    report["_catalog"] = cat
    return report


def public(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def write_report(report: dict[str, Any], out: Path, model_path: Path, figures: bool = True) -> list[Path]:
    from .catalog import atomic_write_text
    from .report import markdown, write_figures

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(public(report), indent=1) + "\n")
    written = [out / "report.json"]
    figs = write_figures(report, out, model_path) if figures else []
    atomic_write_text(out / "report.md", markdown(public(report), [f.name for f in figs]))
    return written + [out / "report.md"] + figs
