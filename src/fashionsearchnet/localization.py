"""Pure tensor functions: attribute activation maps -> regions of interest, and their scores.

Coordinates: a map of H×W cells; cell (i, j) covers x ∈ [j, j+1), y ∈ [i, i+1). Boxes are
``[x0, y0, x1, y1]`` in those units with 0 ≤ x0 < x1 ≤ W and 0 ≤ y0 < y1 ≤ H, ready for
``torchvision.ops.roi_align(..., spatial_scale=1, aligned=True)`` on a feature map of the same grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (…, H, W) map to [0, 1]; a constant map becomes all ones."""
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.ones_like(flat))
    return out.view_as(maps)


ROI_NORMS = ("minmax", "median")


def background_normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each (…, H, W) map minus its median (the background level: a part covers a minority of the
    picture), clipped at 0 and divided by its maximum; a map with nothing above its median becomes
    all ones. A threshold on the result is then a fraction of the peak's height above the background,
    as in the CAM literature's "fraction of the maximum", without min-max scaling letting strongly
    negative cells (evidence against the value) lift the background over the threshold.
    """
    flat = maps.flatten(-2)
    med = flat.median(-1, keepdim=True).values  # the lower median for an even count
    pos = (flat - med).clamp_min(0)
    hi = pos.max(-1, keepdim=True).values
    out = torch.where(hi > 0, pos / hi.clamp_min(1e-12), torch.ones_like(pos))
    return out.view_as(maps)


def _run_slots(fg: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """One slot number per run (maximal foreground segment) along ``dim`` of a (N, H, W) mask,
    unique over the whole tensor (pixels of a run share it), and the number of slots. Computed
    once per mask."""
    fg_t = fg.movedim(dim, -1)
    prev = F.pad(fg_t[..., :-1], (1, 0), value=False)
    run = torch.cumsum((fg_t & ~prev).to(torch.int32), -1)  # run number within the line
    lines, length = fg_t.numel() // fg_t.shape[-1], fg_t.shape[-1]
    line = torch.arange(lines, device=fg.device, dtype=torch.int64).view(fg_t.shape[:-1] + (1,))
    return (run + line * (length + 1)).movedim(-1, dim), lines * (length + 1)


def _run_max(lab: torch.Tensor, fg: torch.Tensor, runs: tuple[torch.Tensor, int]) -> torch.Tensor:
    """Each foreground pixel gets the maximum label of its run (``runs`` from _run_slots)."""
    slots, size = runs
    best = torch.zeros(size, dtype=lab.dtype, device=lab.device)
    best = best.scatter_reduce(0, slots.flatten(), lab.flatten(), "amax")
    return torch.where(fg, best[slots], lab)


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Label 8-connected components of a boolean (N, H, W) mask.

    Returns int64 (N, H, W): 0 for background; a component's label is 1 + the largest flat index
    (row-major) among its pixels. Computed by max-propagation, all maps at once: each round spreads
    labels along whole row and column runs (segmented maxima), to the diagonal neighbours (a 3×3
    max-pool), and follows each label to the pixel it names (pointer jumping), until a round
    changes nothing. Blob-like components settle in a few rounds; the only host synchronisation is
    one convergence check per round.
    """
    n, h, w = mask.shape
    fg = mask.bool()
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.int64).view(1, h, w)
    lab = ids * fg
    fg4 = fg.unsqueeze(1).to(torch.float32)
    rows, cols = _run_slots(fg, 2), _run_slots(fg, 1)
    # float32 holds integers exactly up to 2**24: enough for any map we threshold (≤ 4096×4096)
    for _ in range(h * w):
        nxt = _run_max(_run_max(lab, fg, rows), fg, cols)
        nxt = (F.max_pool2d(nxt.unsqueeze(1).to(torch.float32), 3, 1, 1) * fg4).squeeze(1).to(torch.int64)
        flat = nxt.view(n, h * w)
        for _ in range(2):  # pointer jumping: a label is a pixel of the same component, whose label is ≥ it
            flat = torch.maximum(flat, flat.gather(1, (flat - 1).clamp_min(0))) * fg.view(n, h * w)
        nxt = flat.view(n, h, w)
        if torch.equal(nxt, lab):
            break
        lab = nxt
    return lab


def largest_component_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box of the largest 8-connected component of each (N, H, W) mask -> (N, 4).

    Ties go to the component whose largest flat index is smallest. An empty mask gives the whole map.
    """
    n, h, w = mask.shape
    lab = connected_components(mask).view(n, h * w)
    sizes = torch.zeros(n, h * w + 1, dtype=torch.int64, device=mask.device)
    sizes.scatter_add_(1, lab, torch.ones_like(lab))
    sizes[:, 0] = 0
    best = sizes.argmax(1, keepdim=True)  # first maximum = smallest label among the largest
    sel = (lab == best) & (best > 0)
    sel = sel.view(n, h, w)
    rows, cols = sel.any(2), sel.any(1)  # (N, H), (N, W)
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    big = torch.iinfo(torch.int64).max
    y0 = torch.where(rows, ar_h, big).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values + 1
    x0 = torch.where(cols, ar_w, big).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], 1)
    empty = ~sel.flatten(1).any(1)
    whole = torch.stack([torch.zeros_like(x0), torch.zeros_like(y0), torch.full_like(x1, w), torch.full_like(y1, h)], 1)
    return torch.where(empty[:, None], whole, boxes).to(torch.float32)


def boxes_from_maps(maps: torch.Tensor, threshold: float | torch.Tensor = 0.2, upsample: int = 1, norm: str = "minmax", median: torch.Tensor | None = None) -> torch.Tensor:
    """ROIs of activation maps (N, H, W) -> boxes (N, 4) in map-cell units (see module docstring).

    Each map is optionally upsampled bilinearly by ``upsample`` (finer boxes than the cell grid),
    normalised (``norm``: ``minmax`` scales its range to [0, 1]; ``median`` measures height above
    its median relative to the peak, see background_normalise_maps), thresholded at ``threshold``
    (one value, or one per map as an (N,) tensor), and the box of its largest connected component
    is returned. ``median`` (an (N,) bool tensor) scales the maps it marks by their median whatever
    ``norm`` says (per-attribute scaling). Thresholds given on the CPU are checked to lie in [0, 1); a threshold tensor
    already on a GPU is not (reading it back would wait for the GPU): the model's come from its
    checked config.
    """
    if norm not in ROI_NORMS:
        raise ValueError(f"ROI normalisation must be one of {', '.join(ROI_NORMS)}, got {norm!r}")
    thr = torch.as_tensor(threshold, dtype=torch.float32)
    if thr.dim() > 1 or (thr.dim() == 1 and thr.shape[0] != maps.shape[0]):
        raise ValueError(f"ROI thresholds: expected one value or one per map ({maps.shape[0]}), got shape {tuple(thr.shape)}")
    if thr.device.type == "cpu" and not bool(((thr >= 0) & (thr < 1)).all()):  # (on a GPU: checked by the caller)
        raise ValueError(f"ROI threshold must be in [0, 1), got {threshold}")
    thr = thr.to(maps.device, non_blocking=True)
    maps = maps.detach().float()
    if upsample > 1:
        maps = F.interpolate(maps.unsqueeze(1), scale_factor=upsample, mode="bilinear", align_corners=False).squeeze(1)
    scaled = background_normalise_maps(maps) if norm == "median" else normalise_maps(maps)
    if median is not None and norm != "median":
        scaled = torch.where(median.to(maps.device).view(-1, 1, 1), background_normalise_maps(maps), scaled)
    mask = scaled >= (thr.view(-1, 1, 1) if thr.dim() == 1 else thr)
    return largest_component_boxes(mask) / float(upsample)


def attribute_maps(value_maps: torch.Tensor, num_values: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Attribute-level maps: (N, V, H, W) maps of every value, stacked per attribute as in the
    model's classifier -> (N, A, H, W), each attribute's map the mean of its values' min-max
    normalised maps. Where a value's own map fires only on its most telling detail (the tip of a
    V-neck, a collar band), the other values' maps fire on theirs in the same area, so their union
    covers more of the part than any one of them.
    """
    if sum(num_values) != value_maps.shape[1]:
        raise ValueError(f"{value_maps.shape[1]} value maps for attributes with {sum(num_values)} values")
    scaled = normalise_maps(value_maps.detach().float())
    return torch.stack([part.mean(1) for part in torch.split(scaled, list(num_values), dim=1)], 1)


def whole_map_boxes(n: int, h: int, w: int, device=None) -> torch.Tensor:
    """(n, 4) boxes covering the whole map: the no-localization ablation."""
    boxes = torch.zeros(n, 4, device=device)
    boxes[:, 2], boxes[:, 3] = float(w), float(h)
    return boxes


def peak_points(maps: torch.Tensor, upsample: int = 1) -> torch.Tensor:
    """(N, H, W) maps -> (N, 2) x, y of each map's maximum (cell centre), in map-cell units."""
    maps = maps.detach().float()
    if upsample > 1:
        maps = F.interpolate(maps.unsqueeze(1), scale_factor=upsample, mode="bilinear", align_corners=False).squeeze(1)
    n, h, w = maps.shape
    idx = maps.view(n, -1).argmax(1)
    y, x = idx // w, idx % w
    return torch.stack([(x.float() + 0.5), (y.float() + 0.5)], 1) / float(upsample)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corresponding boxes (N, 4) and (N, 4) -> (N,)."""
    ix0, iy0 = torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])
    ix1, iy1 = torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])
    inter = (ix1 - ix0).clamp_min(0) * (iy1 - iy0).clamp_min(0)
    area = lambda t: (t[:, 2] - t[:, 0]).clamp_min(0) * (t[:, 3] - t[:, 1]).clamp_min(0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-12)

def roi_areas(rois: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, A, 4) ROIs in map cells -> (B, A) their share of the picture. Without boxes to score
    against (a retailer's own catalog), the val mean per attribute tells whether the maps localize:
    an attribute whose ROIs cover most of the picture has a map that does not."""
    h, w = grid
    return (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1]) / (h * w)
