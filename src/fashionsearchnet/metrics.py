"""Evaluation metrics and the benchmark protocol's query generation, as pure numpy functions.

Label vectors use UNKNOWN (−1) for unlabelled attributes; two vectors match exactly when every
attribute is equal, unknowns included (as comparing the one-hot rows of published split files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import UNKNOWN

TOP_KS = (1, 5, 10, 20, 30, 50)


@dataclass(frozen=True)
class ManipulationQuery:
    row: int  # gallery row of the query item
    attribute: int  # attribute index whose value changes (for region queries: the labelled region attribute)
    value: int  # the new value
    target: tuple[int, ...]  # the wanted label vector


def manipulation_queries(labels: np.ndarray, num_values, attributes=None, max_queries: int | None = None, seed: int = 0) -> list[ManipulationQuery]:
    """Every (item, attribute, other value) whose exact target label vector exists in the gallery.

    ``labels`` (N, A) is the gallery, which is also the set of query items. ``attributes``
    restricts which attributes change (default all). The query item's own value must be known.
    With ``max_queries`` a seeded sample of that size is returned (same seed, same sample).
    """
    labels = np.asarray(labels)
    present = {tuple(int(x) for x in row) for row in labels}
    attrs = range(labels.shape[1]) if attributes is None else attributes
    out = []
    for i, row in enumerate(labels):
        base = [int(x) for x in row]
        for a in attrs:
            if base[a] == UNKNOWN:
                continue
            for v in range(num_values[a]):
                if v == base[a]:
                    continue
                target = base.copy()
                target[a] = v
                t = tuple(target)
                if t in present:
                    out.append(ManipulationQuery(i, a, v, t))
    if max_queries is not None and len(out) > max_queries:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(out), max_queries, replace=False))
        out = [out[j] for j in keep]
    return out


def exact_match(gallery_labels: np.ndarray, ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(Q, K) bool: does the ranked gallery row carry exactly the target vector? −1 rows never match."""
    ranked = np.asarray(ranked)
    g = gallery_labels[np.clip(ranked, 0, None)]  # (Q, K, A)
    match = (g == np.asarray(targets)[:, None, :]).all(-1)
    return match & (ranked >= 0)


def topk_accuracy(match: np.ndarray, ks=TOP_KS) -> dict[int, float]:
    """Share of queries with a hit among their first k results, for each k."""
    if len(match) == 0:
        return {k: float("nan") for k in ks}
    first = np.where(match.any(1), match.argmax(1), np.iinfo(np.int64).max)
    return {k: float((first < k).mean()) for k in ks}


def relevance(gallery_labels: np.ndarray, ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(Q, K) fraction of attributes equal to the target's (unknowns included); 0 for −1 rows."""
    g = gallery_labels[np.clip(ranked, 0, None)]
    rel = (g == np.asarray(targets)[:, None, :]).mean(-1)
    return np.where(np.asarray(ranked) >= 0, rel, 0.0)


def ndcg(rel: np.ndarray, k: int = 30) -> float:
    """Mean NDCG@k with gain 2^rel − 1 and the ideal list all ones (as in ADDE's public evaluation)."""
    if len(rel) == 0:
        return float("nan")
    rel = np.asarray(rel, np.float64)[:, :k]
    disc = 1.0 / np.log2(np.arange(rel.shape[1]) + 2.0)
    dcg = ((2.0**rel - 1.0) * disc).sum(1)
    idcg = disc.sum()
    return float((dcg / idcg).mean())


def attribute_accuracy(scores_or_pred: np.ndarray, labels: np.ndarray, top: int = 1) -> float:
    """Top-``top`` accuracy over known labels. ``scores_or_pred``: (N,) predictions or (N, V) scores."""
    known = labels != UNKNOWN
    if not known.any():
        return float("nan")
    x = np.asarray(scores_or_pred)
    if x.ndim == 1:
        if top != 1:
            raise ValueError("top-k accuracy needs scores, not predictions")
        return float((x[known] == labels[known]).mean())
    best = np.argsort(-x[known], axis=1, kind="stable")[:, :top]
    return float((best == labels[known][:, None]).any(1).mean())


def iou_hits(pred_boxes: np.ndarray, gt_boxes: list[list[tuple[float, float, float, float]]], thresh: float = 0.5) -> np.ndarray:
    """Per item: does the predicted box reach IoU ≥ thresh with its best-matching ground-truth part?"""
    out = np.zeros(len(pred_boxes), bool)
    for i, (p, parts) in enumerate(zip(pred_boxes, gt_boxes)):
        out[i] = max((_iou(p, g) for g in parts), default=0.0) >= thresh
    return out


def pointing_hits(points: np.ndarray, gt_boxes) -> np.ndarray:
    """Per item: does the map's peak (x, y) fall inside any ground-truth part?"""
    return np.asarray([any(g[0] <= x <= g[2] and g[1] <= y <= g[3] for g in parts) for (x, y), parts in zip(points, gt_boxes)], bool)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
