"""Triplet mining against a loop over enumerated triplets; classification against hand cases."""

import itertools
import math

import numpy as np
import pytest
import torch

from fashionsearchnet.losses import classification_loss, same_value_relevance, shared_attributes_relevance, triplet_loss


def naive(emb, rel, margin, mining):
    b = len(emb)
    d = [[math.dist(emb[i], emb[j]) for j in range(b)] for i in range(b)]
    trip = [
        (i, j, k)
        for i, j, k in itertools.product(range(b), repeat=3)
        if i != j and i != k and not math.isnan(rel[i][j]) and not math.isnan(rel[i][k]) and rel[i][j] > rel[i][k]
    ]
    if not trip:
        return 0.0, 0
    hinge = lambda i, j, k: max(0.0, margin + d[i][j] - d[i][k])  # noqa: E731
    if mining == "all":
        return sum(hinge(*t) for t in trip) / len(trip), len(trip)
    if mining == "batch_hard":
        per = {}
        for i, j, k in trip:
            per[i] = max(per.get(i, -1e9), margin + d[i][j] - d[i][k])
        return sum(max(0.0, v) for v in per.values()) / len(per), len(per)
    pairs = sorted({(i, j) for i, j, _ in trip})
    losses = []
    for i, j in pairs:
        negs = [k for (a, p, k) in trip if a == i and p == j]
        farther = [k for k in negs if d[i][k] > d[i][j]]
        k = min(farther, key=lambda k: d[i][k]) if farther else max(negs, key=lambda k: d[i][k])
        losses.append(hinge(i, j, k))
    return sum(losses) / len(losses), len(pairs)


@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("graded", [False, True])
def test_triplet_matches_loop(mining, graded):
    rng = np.random.default_rng(0)
    for _trial in range(4):
        b = 9
        emb = torch.from_numpy(rng.normal(size=(b, 3)).astype(np.float64))
        if graded:
            labels = torch.from_numpy(rng.integers(-1, 3, size=(b, 4)))
            rel = shared_attributes_relevance(labels)
        else:
            labels = torch.from_numpy(rng.integers(-1, 3, size=b))
            rel = same_value_relevance(labels)
        got, n = triplet_loss(emb, rel, margin=0.7, mining=mining)
        want, n_want = naive(emb.tolist(), rel.tolist(), 0.7, mining)
        assert n == n_want
        assert float(got) == pytest.approx(want, abs=1e-5)


def test_relevance_unknowns_are_undefined():
    rel = same_value_relevance(torch.tensor([0, 0, -1, 1]))
    assert rel[0, 1] == 1 and rel[0, 3] == 0
    assert torch.isnan(rel[0, 2]) and torch.isnan(rel[2, 2])
    shared = shared_attributes_relevance(torch.tensor([[0, 1], [0, -1], [1, 1]]))
    assert shared.tolist() == [[2, 1, 1], [1, 1, 0], [1, 0, 2]]


def test_no_valid_triplet_gives_zero_with_gradient():
    emb = torch.randn(3, 2, requires_grad=True)
    loss, n = triplet_loss(emb, same_value_relevance(torch.tensor([0, 0, 0])))
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()


def test_classification_ignores_unknown():
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 2.0, 5.0, 0.0]])  # attribute 0: 2 values, attribute 1: 2 values
    labels = torch.tensor([[0, -1], [-1, -1]])
    want = torch.nn.functional.cross_entropy(logits[:1, :2], torch.tensor([0]))
    assert float(classification_loss(logits, labels, (2, 2))) == pytest.approx(float(want))
    with pytest.raises(ValueError, match="unknown mining"):
        triplet_loss(torch.zeros(2, 2), torch.zeros(2, 2), mining="hard")
