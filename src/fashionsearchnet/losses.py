"""Classification and triplet ranking losses; composable, each reporting its parts.

A triplet (i, j, k) is valid when j and k differ from the anchor i and ``rel[i, j] > rel[i, k]``
(both defined): j is more relevant to i than k. Relevance is "same value" (1/0) for an attribute's
ranking loss and "number of shared attributes" for the global one, so one function serves both.
Unknown labels make a pair's relevance undefined (NaN): such pairs are never positives or negatives.

Mining strategies (d = Euclidean distance, m = margin):
- ``all``:        mean over every valid triplet of max(0, m + d_ij − d_ik)
- ``batch_hard``: per anchor, the hardest valid triplet max_{j,k} (m + d_ij − d_ik)₊; mean over anchors
- ``semi_hard``:  per valid pair (i, j), the closest negative farther than the positive
                  (d_ik > d_ij); if none, the farthest negative; mean over pairs (FaceNet / TF-Addons)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

MINING = ("all", "batch_hard", "semi_hard")
_TRIPLET_CELLS = 1 << 26  # (i, j, k) cells mined at once: about 1.3 GB of intermediates


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (…, B, B) of rows of x (…, B, D), with a gradient-safe square root."""
    x = x.float()
    sq = (x * x).sum(-1)
    d2 = (sq[..., :, None] + sq[..., None, :] - 2.0 * x @ x.transpose(-1, -2)).clamp_min(0.0)
    eye = torch.eye(x.shape[-2], dtype=torch.bool, device=x.device)
    d2 = d2.masked_fill(eye, 0.0)
    return torch.sqrt(d2 + 1e-12) - 1e-6


def same_value_relevance(labels: torch.Tensor) -> torch.Tensor:
    """(…, B) values (−1 unknown) -> (…, B, B) relevance: 1 same, 0 different, NaN if either is unknown."""
    known = labels >= 0
    rel = (labels[..., :, None] == labels[..., None, :]).float()
    return rel.masked_fill(~(known[..., :, None] & known[..., None, :]), float("nan"))


def shared_attributes_relevance(labels: torch.Tensor) -> torch.Tensor:
    """(B, A) values -> (B, B) number of attributes on which both are known and equal."""
    known = labels >= 0
    eq = (labels[:, None, :] == labels[None, :, :]) & known[:, None, :] & known[None, :, :]
    return eq.sum(-1).float()


def valid_triplets(rel: torch.Tensor) -> torch.Tensor:
    """(…, B, B) relevance -> (…, B, B, B) boolean mask of valid (i, j, k)."""
    b = rel.shape[-1]
    defined = ~torch.isnan(rel) & ~torch.eye(b, dtype=torch.bool, device=rel.device)
    r = torch.nan_to_num(rel, nan=0.0)
    return defined[..., :, :, None] & defined[..., :, None, :] & (r[..., :, :, None] > r[..., :, None, :])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of values where mask over the last ``dims`` dims (0 where none) and the count; no sync."""
    flat_v, flat_m = values.flatten(-dims), mask.flatten(-dims)
    n = flat_m.sum(-1)
    total = torch.where(flat_m, flat_v, torch.zeros((), dtype=flat_v.dtype, device=flat_v.device)).sum(-1)
    return total / n.clamp_min(1), n


def triplet_losses(emb: torch.Tensor, rel: torch.Tensor, margin: float = 0.5, mining: str = "semi_hard") -> tuple[torch.Tensor, torch.Tensor]:
    """Triplet ranking losses of G groups at once: embeddings (G, B, D) under relevances (G, B, B).

    Returns (loss (G,), number of terms (G,)); a group with no valid triplet has loss 0 (with a
    gradient) and 0 terms. Everything stays on the device: no host synchronisation, so a training
    step on a GPU is not held up waiting for the mining.
    """
    if mining not in MINING:
        raise ValueError(f"unknown mining {mining!r}; valid: {', '.join(MINING)}")
    g, b = emb.shape[0], emb.shape[1]
    per_chunk = max(1, _TRIPLET_CELLS // max(1, b**3))
    if g > per_chunk:  # bound the (G, B, B, B) intermediates: a few groups at a time
        parts = [triplet_losses(emb[i : i + per_chunk], rel[i : i + per_chunk], margin, mining) for i in range(0, g, per_chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    d = pairwise_distances(emb)  # (G, B, B)
    valid = valid_triplets(rel)  # (G, B, B, B)
    zero = emb.float().sum((-1, -2)) * 0.0  # keeps every group in the graph
    viol = margin + d[..., :, :, None] - d[..., :, None, :]  # (g, i, j, k)
    if mining == "all":
        loss, n = _masked_mean(F.relu(viol), valid, 3)
        return loss + zero, n
    if mining == "batch_hard":
        anchors = valid.flatten(-2).any(-1)  # (G, B)
        worst = viol.masked_fill(~valid, float("-inf")).flatten(-2).amax(-1)
        loss, n = _masked_mean(F.relu(worst.masked_fill(~anchors, 0.0)), anchors, 1)
        return loss + zero, n
    # semi-hard: per valid pair (i, j), the closest negative farther than the positive, else the farthest
    pairs = valid.any(-1)  # (G, i, j) with at least one negative
    d_ik = d[..., :, None, :].expand_as(viol)
    farther = valid & (d_ik > d[..., :, :, None])
    inf = d.new_full((), float("inf"))
    closest_farther = torch.where(farther, d_ik, inf).amin(-1)
    farthest = torch.where(valid, d_ik, -inf).amax(-1)
    chosen = torch.where(farther.any(-1), closest_farther, farthest)
    chosen = torch.where(pairs, chosen, d)  # pairs without a negative: a finite placeholder, masked below
    loss, n = _masked_mean(F.relu(margin + d - chosen), pairs, 2)
    return loss + zero, n


def same_value_triplet_losses(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.5, mining: str = "semi_hard") -> tuple[torch.Tensor, torch.Tensor]:
    """``triplet_losses`` under same-value relevance, for G groups: embeddings (G, B, D), values (G, B).

    The same numbers as ``triplet_losses(emb, same_value_relevance(labels), …)`` without its
    (G, B, B, B) cells: with a yes/no relevance an anchor's negatives do not depend on the positive,
    so batch-hard mining takes the farthest positive and the closest negative per anchor, and
    semi-hard mining finds, for each pair, the closest negative farther than the positive by a
    binary search in the anchor's sorted negative distances: O(G·B²·log B) work and O(G·B²) memory.
    ``all`` falls back to the general function.
    """
    if mining not in MINING:
        raise ValueError(f"unknown mining {mining!r}; valid: {', '.join(MINING)}")
    if mining == "all":
        return triplet_losses(emb, same_value_relevance(labels), margin, mining)
    b = emb.shape[1]
    d = pairwise_distances(emb)  # (G, B, B)
    known = labels >= 0
    both = known[..., :, None] & known[..., None, :]
    same = labels[..., :, None] == labels[..., None, :]
    pos = both & same & ~torch.eye(b, dtype=torch.bool, device=emb.device)  # (G, i, j)
    neg = both & ~same  # (G, i, k)
    zero = emb.float().sum((-1, -2)) * 0.0  # keeps every group in the graph
    inf = d.new_full((), float("inf"))
    if mining == "batch_hard":
        anchors = pos.any(-1) & neg.any(-1)
        hardest = d.masked_fill(~pos, 0.0).amax(-1) - torch.where(neg, d, inf).amin(-1).masked_fill(~anchors, 0.0)
        loss, n = _masked_mean(F.relu(margin + hardest), anchors, 1)
        return loss + zero, n
    n_neg = neg.sum(-1, keepdim=True)  # (G, i, 1)
    neg_sorted = torch.sort(torch.where(neg, d, inf), -1).values.contiguous()  # each anchor's negatives, nearest first
    pairs = pos & (n_neg > 0)
    first_farther = torch.searchsorted(neg_sorted, d.contiguous(), right=True)  # first negative with d_ik > d_ij
    pick = torch.where(first_farther < n_neg, first_farther, n_neg - 1).clamp(0, b - 1)  # else the farthest
    chosen = torch.where(pairs, neg_sorted.gather(-1, pick), d)  # pairs without a negative: masked below
    loss, n = _masked_mean(F.relu(margin + d - chosen), pairs, 2)
    return loss + zero, n


def triplet_loss(emb: torch.Tensor, rel: torch.Tensor, margin: float = 0.5, mining: str = "semi_hard") -> tuple[torch.Tensor, int]:
    """Triplet ranking loss of embeddings (B, D) under relevance (B, B); returns (loss, #terms)."""
    loss, n = triplet_losses(emb[None], rel[None], margin, mining)
    return loss[0], int(n[0])


@functools.lru_cache(maxsize=64)
def _padded_positions(num_values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Where each stacked value sits in the (A, Vmax) padded layout; made once per device."""
    vmax = max(num_values)
    return torch.tensor([i * vmax + v for i, n in enumerate(num_values) for v in range(n)], device=device)


def classification_loss(stacked_logits: torch.Tensor, labels: torch.Tensor, num_values: tuple[int, ...]) -> torch.Tensor:
    """Mean over attributes (with any known label in the batch) of cross-entropy; −1 is ignored.

    Computed for all attributes at once on logits padded to the widest attribute (no host sync).
    """
    b, a, vmax = labels.shape[0], len(num_values), max(num_values)
    if labels.device.type == "cpu":  # (on a GPU this check would wait for it; catalogs are validated on reading)
        too_big = labels >= torch.tensor(num_values)
        if bool(too_big.any()):
            col = int(too_big.any(0).nonzero()[0])
            raise ValueError(f"label {int(labels[:, col].max())} of attribute {col} is out of range: it has {num_values[col]} values")
    pos = _padded_positions(tuple(num_values), stacked_logits.device)
    padded = stacked_logits.new_full((b, a * vmax), float("-inf"), dtype=torch.float32)
    padded = padded.index_copy(1, pos, stacked_logits.float()).view(b, a, vmax)
    known = labels >= 0
    nll = -torch.log_softmax(padded, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, A)
    per_attr, n = _masked_mean(nll.T, known.T, 1)  # (A,)
    active = n > 0
    return _masked_mean(per_attr, active, 1)[0]


def fsn_losses(out, labels: torch.Tensor, num_values: tuple[int, ...], weights: dict[str, float], margin: float, mining: str) -> dict[str, torch.Tensor]:
    """All FashionSearchNet loss parts for one batch; ``total`` is their weighted sum.

    ``weights`` keys: aam (activation-map classification), attr_ce, attr_triplet, global_triplet.
    A part with weight 0 is skipped (reported as 0).
    """
    zero = out.reps.sum() * 0.0
    parts: dict[str, torch.Tensor] = {}
    parts["aam"] = classification_loss(out.gap_logits, labels, num_values) if weights.get("aam", 0) else zero
    parts["attr_ce"] = classification_loss(out.attr_logits, labels, num_values) if weights.get("attr_ce", 0) else zero
    if weights.get("attr_triplet", 0):
        # all attributes at once; the mean is over attributes with at least one valid triplet
        losses, n = same_value_triplet_losses(out.reps.transpose(0, 1), labels.T, margin, mining)
        parts["attr_triplet"] = _masked_mean(losses, n > 0, 1)[0] + zero
    else:
        parts["attr_triplet"] = zero
    if weights.get("global_triplet", 0):
        parts["global_triplet"] = triplet_losses(out.global_rep[None], shared_attributes_relevance(labels)[None], margin, mining)[0][0]
    else:
        parts["global_triplet"] = zero
    # every output enters the total (unused ones times 0), so each parameter is used in every
    # step: DistributedDataParallel then needs no unused-parameter search
    touch = out.gap_logits.float().sum() + out.attr_logits.float().sum() + out.global_rep.float().sum()
    parts["total"] = sum(weights.get(k, 0.0) * v for k, v in parts.items()) + 0.0 * touch
    return parts
