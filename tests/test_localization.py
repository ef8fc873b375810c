"""ROI extraction against a naive per-pixel loop."""

from collections import deque

import numpy as np
import pytest
import torch

from fashionsearchnet.localization import attribute_maps, background_normalise_maps, boxes_from_maps, box_iou, connected_components, largest_component_boxes, normalise_maps, peak_points


def naive_largest_box(mask: np.ndarray):
    """BFS over 8-neighbours; largest component, ties to the smallest max-flat-index; whole map if empty."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best = None  # (size, -maxindex, pixels)
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                comp, q = [], deque([(i, j)])
                seen[i, j] = True
                while q:
                    y, x = q.popleft()
                    comp.append((y, x))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = y + dy, x + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                q.append((ny, nx))
                key = (len(comp), -max(y * w + x for y, x in comp))
                if best is None or key > best[0]:
                    best = (key, comp)
    if best is None:
        return [0.0, 0.0, float(w), float(h)]
    ys = [p[0] for p in best[1]]
    xs = [p[1] for p in best[1]]
    return [float(min(xs)), float(min(ys)), float(max(xs) + 1), float(max(ys) + 1)]


@pytest.mark.parametrize("shape", [(5, 7), (13, 13), (1, 9), (16, 3)])
def test_boxes_match_naive_loop(shape):
    rng = np.random.default_rng(1)
    masks = rng.random((40, *shape)) < rng.uniform(0.05, 0.6, size=(40, 1, 1))
    masks[0] = False  # empty
    masks[1] = True  # full
    got = largest_component_boxes(torch.from_numpy(masks)).numpy()
    want = np.array([naive_largest_box(m) for m in masks])
    np.testing.assert_array_equal(got, want)


def test_ties_and_diagonal_connectivity():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = m[2, 2] = True  # diagonal chain of 3: one component under 8-connectivity
    m[0, 4] = m[0, 5] = m[1, 5] = True  # another component of 3; its largest flat index (11) is smaller than 14
    got = largest_component_boxes(torch.from_numpy(m[None]))[0].tolist()
    assert got == naive_largest_box(m) == [4.0, 0.0, 6.0, 2.0]
    m[3, 3] = True  # now the diagonal chain has 4 pixels and wins
    assert largest_component_boxes(torch.from_numpy(m[None]))[0].tolist() == [0.0, 0.0, 4.0, 4.0]


def test_labels_are_max_index_per_component():
    m = torch.tensor([[[1, 0, 1], [1, 0, 0], [0, 0, 1]]], dtype=torch.bool)
    lab = connected_components(m)[0]
    assert lab.tolist() == [[4, 0, 3], [4, 0, 0], [0, 0, 9]]


def test_boxes_from_maps_threshold_and_invariants():
    rng = np.random.default_rng(2)
    maps = torch.from_numpy(rng.normal(size=(30, 9, 11)).astype(np.float32))
    for up in (1, 2, 4):
        b = boxes_from_maps(maps, 0.2, up)
        assert ((b[:, 0] >= 0) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= 11)).all()
        assert ((b[:, 1] >= 0) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= 9)).all()
    # without upsampling the threshold is applied exactly as in the naive loop
    norm = normalise_maps(maps).numpy()
    want = np.array([naive_largest_box(n >= 0.5) for n in norm])
    np.testing.assert_array_equal(boxes_from_maps(maps, 0.5, 1).numpy(), want)


def test_single_blob_is_found():
    m = torch.zeros(1, 10, 10)
    m[0, 2:5, 6:9] = 5.0
    m[0, 8, 0] = 4.0  # a separate, smaller hot spot
    assert boxes_from_maps(m, 0.5).tolist() == [[6.0, 2.0, 9.0, 5.0]]
    assert peak_points(m).tolist()[0] in ([6.5, 2.5], [7.5, 3.5], [8.5, 4.5], [6.5, 3.5], [7.5, 2.5], [8.5, 2.5], [6.5, 4.5], [7.5, 4.5], [8.5, 3.5])
    assert boxes_from_maps(torch.ones(1, 4, 6), 0.2).tolist() == [[0.0, 0.0, 6.0, 4.0]]


def test_box_iou():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 2, 3, 3], [0, 0, 2, 2]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [1 / 7, 0.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="threshold"):
        boxes_from_maps(torch.zeros(1, 2, 2), 1.5)


def test_per_map_thresholds_equal_one_call_per_map():
    g = torch.Generator().manual_seed(5)
    maps = torch.rand(12, 9, 11, generator=g)
    thr = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.0] * 2)
    got = boxes_from_maps(maps, thr, upsample=2)
    want = torch.stack([boxes_from_maps(maps[i : i + 1], float(thr[i]), upsample=2)[0] for i in range(12)])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="one per map"):
        boxes_from_maps(maps, thr[:5])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        boxes_from_maps(maps, torch.full((12,), 1.0))


def test_background_normalisation_matches_loop():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(25, 7, 8)).astype(np.float32)
    maps[0] = 3.0  # constant: nothing above the median
    maps[1, :, :] = -1.0
    maps[1, 2, 3] = 4.0  # one peak over a flat background
    want = []
    for m in maps:
        v = np.sort(m.ravel())
        med = v[(v.size - 1) // 2]  # the lower median
        pos = np.clip(m - med, 0, None)
        want.append(pos / pos.max() if pos.max() > 0 else np.ones_like(m))
    got = background_normalise_maps(torch.from_numpy(maps)).numpy()
    np.testing.assert_allclose(got, np.array(want), rtol=1e-6, atol=1e-7)
    assert got[1, 2, 3] == 1.0 and (np.delete(got[1].ravel(), 2 * 8 + 3) == 0).all()
    # boxes with median scaling: the threshold applied to those values, as in the naive loop
    want_boxes = np.array([naive_largest_box(n >= 0.3) for n in np.array(want)])
    np.testing.assert_array_equal(boxes_from_maps(torch.from_numpy(maps), 0.3, 1, norm="median").numpy(), want_boxes)


def test_median_scaling_ignores_evidence_against():
    # a peak (the part), a flat background and a strongly negative body: min-max scaling lifts the
    # background over 0.5 and the box becomes the whole map; median scaling keeps the peak alone
    m = torch.zeros(1, 8, 8)
    m[0, 3:7, 2:6] = -10.0
    m[0, 1, 5:7] = 3.0
    assert boxes_from_maps(m, 0.5, 1).tolist() == [[0.0, 0.0, 8.0, 8.0]]
    assert boxes_from_maps(m, 0.5, 1, norm="median").tolist() == [[5.0, 1.0, 7.0, 2.0]]
    with pytest.raises(ValueError, match="normalisation"):
        boxes_from_maps(m, 0.5, 1, norm="zscore")


def test_long_winding_components_match_naive_loop():
    """Shapes that need many propagation rounds: a spiral, a serpentine and a diagonal staircase."""
    n = 15
    spiral = np.zeros((n, n), bool)
    y, x, dy, dx = 0, 0, 0, 1
    for _ in range(n * n):
        spiral[y, x] = True
        ny, nx = y + 2 * dy, x + 2 * dx
        if not (0 <= ny < n and 0 <= nx < n) or spiral[ny, nx] or spiral[y + dy, x + dx] and (dy, dx) != (0, 0):
            dy, dx = dx, -dy  # turn right
            ny, nx = y + 2 * dy, x + 2 * dx
            if not (0 <= ny < n and 0 <= nx < n) or spiral[ny, nx]:
                break
        y, x = y + dy, x + dx
    serpentine = np.zeros((n, n), bool)
    serpentine[::2] = True
    serpentine[1::4, -1] = serpentine[3::4, 0] = True
    stairs = np.zeros((n, n), bool)
    for i in range(n):
        stairs[i, i] = True
    stairs[:, n // 2] |= np.arange(n) % 3 == 0
    masks = np.stack([spiral, serpentine, stairs, spiral[::-1].copy(), serpentine.T.copy()])
    got = largest_component_boxes(torch.from_numpy(masks)).numpy()
    want = np.array([naive_largest_box(m) for m in masks])
    np.testing.assert_array_equal(got, want)
    # and the labels: one per component, the component's largest flat index + 1
    lab = connected_components(torch.from_numpy(masks)).numpy()
    for m, lb in zip(masks, lab):
        for v in np.unique(lb[m]):
            comp = lb == v
            assert v == np.flatnonzero(comp.ravel()).max() + 1


def test_attribute_maps_against_a_loop():
    torch.manual_seed(3)
    nv = (3, 2, 4)
    maps = torch.randn(2, sum(nv), 5, 6)
    maps[1, 3] = 7.0  # a constant map scales to all ones
    got = attribute_maps(maps, nv)
    assert got.shape == (2, 3, 5, 6)
    for n in range(2):
        start = 0
        for a, k in enumerate(nv):
            want = torch.zeros(5, 6)
            for v in range(start, start + k):
                m = maps[n, v]
                lo, hi = m.min(), m.max()
                want += (m - lo) / (hi - lo) if hi > lo else torch.ones(5, 6)
            torch.testing.assert_close(got[n, a], want / k)
            start += k
    with pytest.raises(ValueError, match="9 value maps for attributes with 8 values"):
        attribute_maps(torch.zeros(1, 9, 4, 4), (4, 4))


def test_per_map_median_scaling_matches_separate_calls():
    """``median`` marks the maps to scale by their median; the others keep ``norm``: the same boxes as
    calling boxes_from_maps on each map with its own scaling."""
    maps = torch.randn(12, 9, 9, generator=torch.Generator().manual_seed(4))
    maps[::3, 2:6, 2:6] -= 6.0  # evidence against: the two scalings then give different boxes
    median = torch.tensor([i % 2 == 0 for i in range(12)])
    thr = torch.linspace(0.2, 0.6, 12)
    got = boxes_from_maps(maps, thr, 2, "minmax", median)
    for i in range(12):
        want = boxes_from_maps(maps[i : i + 1], float(thr[i]), 2, "median" if median[i] else "minmax")
        assert torch.equal(got[i], want[0]), i
    assert not torch.equal(got, boxes_from_maps(maps, thr, 2, "minmax"))
    assert torch.equal(boxes_from_maps(maps, thr, 2, "median", median), boxes_from_maps(maps, thr, 2, "median"))
