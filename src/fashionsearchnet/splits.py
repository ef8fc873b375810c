"""Deterministic, seeded train/val/test splits stratified by each item's rarest attribute value."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from .catalog import SPLITS
from .schema import UNKNOWN

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def stratified_splits(labels: np.ndarray, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> list[str]:
    """Assign each row of ``labels`` (N, A; UNKNOWN = -1) to train, val or test.

    Items are grouped by their rarest known (attribute, value); groups are visited rarest first and
    their items, shuffled with ``seed``, go one by one to the split furthest below its target share
    of everything assigned so far. So every rare value is spread over the splits as evenly as its
    count allows, and the overall proportions match ``fractions`` to within one item per split.
    The result depends only on ``labels``, ``seed`` and ``fractions``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    labels = np.asarray(labels)
    n = labels.shape[0]
    counts = Counter()
    for a in range(labels.shape[1] if labels.ndim == 2 else 0):
        for v, c in zip(*np.unique(labels[:, a], return_counts=True)):
            if v != UNKNOWN:
                counts[(a, int(v))] = int(c)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in range(n):
        keys = [(counts[(a, int(v))], a, int(v)) for a, v in enumerate(labels[i]) if v != UNKNOWN]
        groups[min(keys) if keys else (n + 1, -1, -1)].append(i)
    rng = np.random.default_rng(seed)
    assigned = np.zeros(3)
    out = [""] * n
    for key in sorted(groups):
        members = np.asarray(groups[key])
        for i in members[rng.permutation(len(members))]:
            total = assigned.sum() + 1
            s = int(np.argmax(np.asarray(fractions) * total - assigned))
            assigned[s] += 1
            out[int(i)] = SPLITS[s]
    return out
