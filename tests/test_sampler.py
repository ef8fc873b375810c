import numpy as np
import pytest

from fashionsearchnet.sampler import PKBatchSampler


def test_pk_invariants():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 5, size=(300, 3))
    labels[:, 2] = rng.integers(-1, 2, size=300)  # a binary attribute: fewer values than P
    s = PKBatchSampler(labels, p=4, k=3, seed=1)
    seen_attrs = set()
    for batch in s:
        assert len(batch) == 12
        groups = [batch[g * 3 : (g + 1) * 3] for g in range(4)]
        # the batch's attribute: one where every group shares a known value
        attrs = [a for a in range(3) if all(len({labels[i, a] for i in g}) == 1 and labels[g[0], a] >= 0 for g in groups)]
        assert attrs
        a = attrs[0]
        seen_attrs.add(a)
        values = [labels[g[0], a] for g in groups]
        n_present = len(set(labels[:, a][labels[:, a] >= 0]))
        assert len(set(values)) == min(4, n_present)
    assert seen_attrs == {0, 1, 2}


def test_deterministic_per_epoch_and_sharded():
    labels = np.random.default_rng(1).integers(0, 6, size=(200, 2))
    a = PKBatchSampler(labels, 4, 4, seed=3)
    b = PKBatchSampler(labels, 4, 4, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    full = PKBatchSampler(labels, 4, 4, seed=3, batches_per_epoch=10)
    r0 = PKBatchSampler(labels, 4, 4, seed=3, batches_per_epoch=10, rank=0, world_size=2)
    r1 = PKBatchSampler(labels, 4, 4, seed=3, batches_per_epoch=10, rank=1, world_size=2)
    assert len(r0) == len(r1) == 5
    merged = [x for pair in zip(r0, r1) for x in pair]
    assert merged == list(full)


def test_needs_two_values():
    with pytest.raises(ValueError, match="at least two known values"):
        PKBatchSampler(np.full((10, 2), -1), 2, 2)
    with pytest.raises(ValueError, match="K ≥ 2"):
        PKBatchSampler(np.zeros((10, 1)), 2, 1)
