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

import torch
import torch.nn.functional as F

MINING = ("all", "batch_hard", "semi_hard")


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, B) of rows of x (B, D), with a gradient-safe square root."""
    x = x.float()
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    d2 = d2.masked_fill(eye, 0.0)
    return torch.sqrt(d2 + 1e-12) - 1e-6


def same_value_relevance(labels: torch.Tensor) -> torch.Tensor:
    """(B,) values (−1 unknown) -> (B, B) relevance: 1 same, 0 different, NaN if either is unknown."""
    known = labels >= 0
    rel = (labels[:, None] == labels[None, :]).float()
    return rel.masked_fill(~(known[:, None] & known[None, :]), float("nan"))


def shared_attributes_relevance(labels: torch.Tensor) -> torch.Tensor:
    """(B, A) values -> (B, B) number of attributes on which both are known and equal."""
    known = labels >= 0
    eq = (labels[:, None, :] == labels[None, :, :]) & known[:, None, :] & known[None, :, :]
    return eq.sum(-1).float()


def valid_triplets(rel: torch.Tensor) -> torch.Tensor:
    """(B, B) relevance -> (B, B, B) boolean mask of valid (i, j, k)."""
    b = rel.shape[0]
    defined = ~torch.isnan(rel) & ~torch.eye(b, dtype=torch.bool, device=rel.device)
    r = torch.nan_to_num(rel, nan=0.0)
    return defined[:, :, None] & defined[:, None, :] & (r[:, :, None] > r[:, None, :])


def triplet_loss(emb: torch.Tensor, rel: torch.Tensor, margin: float = 0.5, mining: str = "semi_hard") -> tuple[torch.Tensor, int]:
    """Triplet ranking loss of embeddings (B, D) under relevance (B, B); returns (loss, #terms)."""
    if mining not in MINING:
        raise ValueError(f"unknown mining {mining!r}; valid: {', '.join(MINING)}")
    d = pairwise_distances(emb)
    valid = valid_triplets(rel)
    if not valid.any():
        return emb.sum() * 0.0, 0
    viol = margin + d[:, :, None] - d[:, None, :]  # (i, j, k)
    if mining == "all":
        return F.relu(viol[valid]).mean(), int(valid.sum())
    if mining == "batch_hard":
        worst = viol.masked_fill(~valid, float("-inf")).flatten(1).max(1).values
        anchors = valid.flatten(1).any(1)
        return F.relu(worst[anchors]).mean(), int(anchors.sum())
    # semi-hard
    pairs = valid.any(2)  # (i, j) with at least one negative
    d_ik = d[:, None, :].expand_as(viol)
    farther = valid & (d_ik > d[:, :, None])
    inf = torch.tensor(float("inf"), device=d.device)
    closest_farther = torch.where(farther, d_ik, inf).min(2).values
    farthest = torch.where(valid, d_ik, -inf).max(2).values
    chosen = torch.where(farther.any(2), closest_farther, farthest)
    loss = F.relu(margin + d - chosen)[pairs]
    return loss.mean(), int(pairs.sum())


def classification_loss(stacked_logits: torch.Tensor, labels: torch.Tensor, num_values: tuple[int, ...]) -> torch.Tensor:
    """Mean over attributes (with any known label in the batch) of cross-entropy; −1 is ignored."""
    parts = []
    for a, logits in enumerate(torch.split(stacked_logits.float(), list(num_values), dim=1)):
        y = labels[:, a]
        if (y >= 0).any():
            parts.append(F.cross_entropy(logits, y, ignore_index=-1))
    if not parts:
        return stacked_logits.sum() * 0.0
    return torch.stack(parts).mean()


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
        tl = [triplet_loss(out.reps[:, a], same_value_relevance(labels[:, a]), margin, mining) for a in range(labels.shape[1])]
        active = [loss for loss, n in tl if n > 0]
        parts["attr_triplet"] = torch.stack(active).mean() if active else zero
    else:
        parts["attr_triplet"] = zero
    if weights.get("global_triplet", 0):
        parts["global_triplet"] = triplet_loss(out.global_rep, shared_attributes_relevance(labels), margin, mining)[0]
    else:
        parts["global_triplet"] = zero
    # every output enters the total (unused ones times 0), so each parameter is used in every
    # step: DistributedDataParallel then needs no unused-parameter search
    touch = out.gap_logits.float().sum() + out.attr_logits.float().sum() + out.global_rep.float().sum()
    parts["total"] = sum(weights.get(k, 0.0) * v for k, v in parts.items()) + 0.0 * touch
    return parts
