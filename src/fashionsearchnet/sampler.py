"""P×K batches over attribute values, for in-batch triplet mining.

Invariant of every batch (stated here, asserted in tests): the batch is P groups of K consecutive
indices; each group's items share one known value of the batch's attribute; the groups carry
min(P, values present) distinct values (when an attribute has fewer than P values, values repeat
in turn). Attributes take turns from batch to batch, so every attribute gets positives.

Batches depend only on (labels, seed, epoch): a resumed run sees the same batches, and under
distributed training every rank computes the same list and takes every world_size-th batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class PKBatchSampler:
    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0, batches_per_epoch: int | None = None, rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels)
        if p < 1 or k < 2:
            raise ValueError(f"P×K sampling needs P ≥ 1 and K ≥ 2, got P={p}, K={k}")
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        # per attribute: value -> item indices with that known value
        self.groups: list[list[np.ndarray]] = []
        for a in range(labels.shape[1]):
            col = labels[:, a]
            per_value = [np.flatnonzero(col == v) for v in np.unique(col[col >= 0])]
            per_value = [g for g in per_value if len(g) > 0]
            if len(per_value) >= 2:
                self.groups.append(per_value)
        if not self.groups:
            raise ValueError("P×K sampling needs an attribute with at least two known values")
        n = labels.shape[0]
        total = batches_per_epoch or max(1, n // (p * k))
        self.num_batches = max(1, total // world_size)  # per rank; every rank the same count

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _batch(self, rng: np.random.Generator, attr_groups: list[np.ndarray]) -> list[int]:
        nv = len(attr_groups)
        order = rng.permutation(nv)
        values = [order[i % nv] for i in range(self.p)]
        out: list[int] = []
        for v in values:
            g = attr_groups[v]
            pick = rng.choice(g, self.k, replace=len(g) < self.k)
            out.extend(int(i) for i in pick)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        start = int(rng.integers(len(self.groups)))
        total = self.num_batches * self.world_size
        batches = [self._batch(rng, self.groups[(start + b) % len(self.groups)]) for b in range(total)]
        yield from batches[self.rank :: self.world_size]
