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


@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_batched_triplet_losses_match_one_group_at_a_time(mining, monkeypatch):
    from fashionsearchnet import losses

    g = torch.Generator().manual_seed(1)
    emb = torch.randn(5, 8, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 3, (5, 8), generator=g)
    labels[2] = 1  # one group where every item shares the value: no valid triplet
    got, n = losses.triplet_losses(emb, same_value_relevance(labels), 0.6, mining)
    for i in range(5):
        want, n_want = naive(emb[i].tolist(), same_value_relevance(labels[i]).tolist(), 0.6, mining)
        assert int(n[i]) == n_want and float(got[i]) == pytest.approx(want, abs=1e-6)
    assert int(n[2]) == 0 and float(got[2]) == 0.0
    # chunked over groups when the (G, B, B, B) cells would be too many: the same numbers
    monkeypatch.setattr(losses, "_TRIPLET_CELLS", 2 * 8**3)
    got2, n2 = losses.triplet_losses(emb, same_value_relevance(labels), 0.6, mining)
    torch.testing.assert_close(got2, got)
    assert torch.equal(n2, n)


def test_classification_loss_matches_per_attribute_loop():
    g = torch.Generator().manual_seed(2)
    num_values = (3, 5, 2, 4)
    logits = torch.randn(7, sum(num_values), generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.stack([torch.randint(-1, n, (7,), generator=g) for n in num_values], 1)
    labels[:, 2] = -1  # an attribute with no known label in the batch is left out of the mean
    got = classification_loss(logits, labels, num_values)
    parts = []
    for a, part in enumerate(torch.split(logits, list(num_values), 1)):
        known = labels[:, a] >= 0
        if known.any():
            parts.append(torch.nn.functional.cross_entropy(part[known], labels[known, a]))
    want = torch.stack(parts).mean()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    (ga,) = torch.autograd.grad(got, logits)
    (gw,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(ga.double(), gw)
    bad = labels.clone()
    bad[0, 3] = 4  # attribute 3 has 4 values: 0-3
    with pytest.raises(ValueError, match="label 4 of attribute 3 is out of range: it has 4 values"):
        classification_loss(logits, bad, num_values)
    none = classification_loss(logits, torch.full_like(labels, -1), num_values)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_fsn_losses_attribute_triplet_is_mean_over_attributes_with_terms():
    from types import SimpleNamespace

    from fashionsearchnet.losses import fsn_losses

    g = torch.Generator().manual_seed(3)
    b, a, d = 10, 4, 5
    reps = torch.nn.functional.normalize(torch.randn(b, a, d, generator=g), dim=-1)
    labels = torch.stack([torch.randint(-1, 3, (b,), generator=g) for _ in range(a)], 1)
    labels[:, 1] = 0  # no valid triplet for attribute 1
    out = SimpleNamespace(reps=reps, gap_logits=torch.randn(b, 12, generator=g), attr_logits=torch.randn(b, 12, generator=g),
                          global_rep=reps.flatten(1))
    w = {"aam": 1.0, "attr_ce": 0.5, "attr_triplet": 2.0, "global_triplet": 1.0}
    parts = fsn_losses(out, labels, (3, 3, 3, 3), w, 0.5, "semi_hard")
    per = [triplet_loss(reps[:, i], same_value_relevance(labels[:, i]), 0.5) for i in range(a)]
    want = torch.stack([loss for loss, n in per if n > 0]).mean()
    assert float(parts["attr_triplet"]) == pytest.approx(float(want), rel=1e-5)
    glob = triplet_loss(reps.flatten(1), shared_attributes_relevance(labels), 0.5)[0]
    assert float(parts["global_triplet"]) == pytest.approx(float(glob), rel=1e-5)
    total = sum(w[k] * parts[k] for k in w)
    assert float(parts["total"]) == pytest.approx(float(total), rel=1e-5)


@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_same_value_fast_path_equals_general_mining(mining):
    from fashionsearchnet.losses import same_value_triplet_losses, triplet_losses

    g = torch.Generator().manual_seed(6)
    for trial in range(3):
        emb = torch.randn(4, 12, 3, generator=g, dtype=torch.float64)
        emb[:, 5] = emb[:, 2]  # equal distances: ties between positives and negatives
        labels = torch.randint(-1, 3, (4, 12), generator=g)
        labels[1] = 2  # a group with no negative
        labels[3, :11] = -1  # a group with one known label
        a = emb.clone().requires_grad_(True)
        b = emb.clone().requires_grad_(True)
        got, n = same_value_triplet_losses(a, labels, 0.4, mining)
        want, n_want = triplet_losses(b, same_value_relevance(labels), 0.4, mining)
        assert torch.equal(n, n_want)
        torch.testing.assert_close(got, want)
        (ga,) = torch.autograd.grad(got.sum(), a)
        (gb,) = torch.autograd.grad(want.sum(), b)
        torch.testing.assert_close(ga, gb)
        # and against the loop over enumerated triplets, group by group
        for i in range(4):
            w, nw = naive(emb[i].tolist(), same_value_relevance(labels[i]).tolist(), 0.4, mining)
            assert int(n[i]) == nw and float(got[i].detach()) == pytest.approx(w, abs=1e-6)
