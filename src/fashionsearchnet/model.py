"""FashionSearchNet: architecture only (no I/O, no losses, no optimisers).

Named stages, each callable alone (letters: B batch, A attributes, V values of all attributes,
C backbone channels, K conv7 channels, H×W grid, D embedding, P region pairs):

1. ``forward_features``   images (B, 3, S, S)            -> Features: conv5-level (B, C, H, W) and the
                                                            map branch's input (by default the same)
2. ``forward_maps``       features                       -> conv7 (B, K, h, w), pooled logits (B, V)
   ``activation_maps``    conv7, values (B, A)           -> attribute activation maps (B, A, h, w)
3. ``forward_rois``       maps                           -> ROIs (B, A, 4) in map cells
4. ``forward_attributes`` features, ROIs                 -> representations (B, A, D), logits (B, V)
   ``forward_regions``    features, ROIs                 -> region-aware representations (B, P, D)
   ``global_representation`` representations            -> F (B, A·D), each block scaled by w_a

ROIs live on the activation-map grid (h × w); pooling maps them onto the conv5 grid (H × W).

Attribute representations are L2-normalised per attribute; the similarity of two items is
Σ_a w_a² cos(f_a, g_a), which is the inner product of their global representations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from .backbones import backbone_info, build_backbone, fold_batchnorm, freeze_after, freeze_stages, remove_stride, run_backbone
from .localization import ROI_NORMS, attribute_maps, boxes_from_maps, whole_map_boxes


AAM_POOLINGS = ("gap", "lse", "max", "lse-contrast")
# ModelConfig options that name a set of attributes (by index; by name in TrainConfig)
ATTRIBUTE_SET_OPTIONS = ("attribute_rois", "median_rois", "coarse_maps", "max_maps")


@dataclass(frozen=True)
class ModelConfig:
    """What the model *is*; stored in every checkpoint."""

    num_values: tuple[int, ...]
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    conv_channels: int = 1024  # conv6 / conv7 width
    roi_size: int = 3  # ROI pooling grid (roi_align output)
    hidden: int = 512  # width of the first two fully connected layers of each branch
    embed_dim: int = 64  # D, per attribute
    roi_threshold: float = 0.5  # of each map's min-max range (0.5 localized best on synthetic val; CAM papers use 0.2 of max)
    roi_thresholds: tuple[float, ...] = ()  # per attribute, overriding roi_threshold (empty: roi_threshold for all)
    roi_upsample: int = 2  # maps are upsampled before thresholding: boxes finer than the grid
    roi_norm: str = "minmax"  # how a map is scaled before its threshold: minmax (its range) | median (height above its median, / peak)
    # attributes whose ROI comes from their attribute-level map (the mean of their values' normalised
    # maps, localization.attribute_maps) instead of the map of the value: () = none, as in the paper
    attribute_rois: tuple[int, ...] = ()
    median_rois: tuple[int, ...] = ()  # attributes whose maps are scaled by their median (roi_norm=median for them alone)
    localization: bool = True  # False: the no-localization ablation (every branch pools the whole map)
    freeze_bn: bool = True  # keep the pretrained backbone's batch-norm statistics (folded into the convs)
    frozen_stages: int = 0  # leading backbone stages kept as loaded (no gradient, no backward cost)
    region_pairs: tuple[tuple[int, int], ...] = ()  # (ROI attribute, branch attribute) per region rep
    map_stage: int = -1  # backbone stage feeding conv6 (−1: the last, as in the paper); earlier = finer, more local maps
    # backbone stage whose stride-2 convolution runs at stride 1, later ones dilated (−1: none): a
    # map grid twice as fine (32×32 instead of 16×16 at 128 px from MobileNetV2's stage 6 with 4)
    dilate_from: int = -1
    # attributes whose activation maps come from a second conv6/conv7 head on every other cell of
    # the map grid, which with ``dilate_from`` is the backbone's own, coarser grid (the à-trous
    # identity): fine maps for small parts, coarse maps, whose cells see a whole neck area, for
    # these (needs dilate_from ≥ 0; () = one head, as in the paper)
    coarse_maps: tuple[int, ...] = ()
    coarse_channels: int = 0  # width of that head's conv6/conv7 (0: conv_channels)
    # how class-score maps become logits: gap (the paper), lse (log-sum-exp), max, or lse-contrast
    # (log-sum-exp minus the map's own mean, plus the class bias: a value scores by its peak above its
    # map's average, so it cannot win with a plateau, e.g. by the absence of the other values' evidence)
    aam_pooling: str = "gap"
    lse_r: float = 5.0  # sharpness of lse pooling
    # attributes whose class-score maps are max-pooled whatever aam_pooling says: a value then wins
    # only by its single strongest cell (() = aam_pooling for all, checkpoints before the option too)
    max_maps: tuple[int, ...] = ()
    map_padding: str = "zeros"  # conv6/conv7 padding; "replicate" gives border cells no artificial response
    # conv6/conv7 kernel size (odd): 3 as in CAM-style heads; 1 adds no spatial spread of its own, so
    # a part's map is no wider than the backbone's features make it (checkpoints before the option: 3)
    map_kernel: int = 3
    # which features the ROIs pool: conv5 (the backbone's last stage, as in the paper) or maps (the
    # input of conv6, i.e. stage map_stage: finer and more local, so a region's content dominates)
    pool_from: str = "conv5"
    # roi_align sampling points per bin side: 0 = adaptive (ceil(bin size), so every cell of a large
    # ROI counts: the whole-map pooling of the no-localization ablation included); checkpoints
    # written before this option used 2
    roi_sampling: int = 0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if not self.num_values or min(self.num_values) < 2:
            raise ValueError("every attribute needs at least 2 values")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if self.aam_pooling not in AAM_POOLINGS:
            raise ValueError(f"aam_pooling must be one of {', '.join(AAM_POOLINGS)}, got {self.aam_pooling!r}")
        if self.roi_norm not in ROI_NORMS:
            raise ValueError(f"roi_norm must be one of {', '.join(ROI_NORMS)}, got {self.roi_norm!r}")
        for option in ATTRIBUTE_SET_OPTIONS:
            idx = getattr(self, option)
            if any(not 0 <= a < len(self.num_values) for a in idx) or len(set(idx)) != len(idx):
                raise ValueError(f"{option} {idx}: expected distinct attributes in 0..{len(self.num_values) - 1}")
        if self.coarse_maps and self.dilate_from < 0:
            raise ValueError("coarse_maps needs a finer grid to be coarser than: set dilate_from (e.g. 4 with MobileNetV2)")
        if self.coarse_channels < 0:
            raise ValueError(f"coarse_channels must be 0 (conv_channels) or positive, got {self.coarse_channels}")
        if self.dilate_from < -1:
            raise ValueError(f"dilate_from must be a backbone stage or -1 (none), got {self.dilate_from}")
        if self.map_kernel < 1 or self.map_kernel % 2 == 0:
            raise ValueError(f"map_kernel must be an odd positive kernel size (1, 3, 5, …), got {self.map_kernel}")
        if self.roi_sampling < 0:
            raise ValueError(f"roi_sampling must be 0 (adaptive) or positive, got {self.roi_sampling}")
        if self.pool_from not in ("conv5", "maps"):
            raise ValueError(f"pool_from must be conv5 or maps, got {self.pool_from!r}")
        if self.roi_thresholds and len(self.roi_thresholds) != len(self.num_values):
            raise ValueError(f"roi_thresholds has {len(self.roi_thresholds)} entries for {len(self.num_values)} attributes")
        if not all(0.0 <= t < 1.0 for t in (self.roi_threshold, *self.roi_thresholds)):
            raise ValueError("ROI thresholds must be in [0, 1)")
        for r, a in self.region_pairs:
            if not (0 <= r < len(self.num_values) and 0 <= a < len(self.num_values)):
                raise ValueError(f"region pair {(r, a)} names an attribute outside 0..{len(self.num_values) - 1}")

    def threshold_of(self, attribute: int) -> float:
        return self.roi_thresholds[attribute] if self.roi_thresholds else self.roi_threshold

    def norm_of(self, attribute: int) -> str:
        return "median" if attribute in self.median_rois else self.roi_norm

    @property
    def num_attributes(self) -> int:
        return len(self.num_values)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["num_values"] = tuple(d["num_values"])
        d["region_pairs"] = tuple(tuple(p) for p in d.get("region_pairs", ()))
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        d["roi_thresholds"] = tuple(float(t) for t in d.get("roi_thresholds", ()))
        for option in ATTRIBUTE_SET_OPTIONS:  # absent from older checkpoints: none
            d[option] = tuple(int(a) for a in d.get(option, ()))
        d.setdefault("roi_sampling", 2)  # what checkpoints written before the option used
        d.setdefault("map_kernel", 3)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class Features(NamedTuple):
    conv5: torch.Tensor  # (B, C, H, W) pooled into attribute representations
    maps_in: torch.Tensor  # (B, C', h, w) input of conv6


@dataclass
class FSNOutput:
    gap_logits: torch.Tensor  # (B, V) activation-map branch (GAP classifiers)
    rois: torch.Tensor  # (B, A, 4) grid cells
    reps: torch.Tensor  # (B, A, D) L2-normalised attribute representations
    attr_logits: torch.Tensor  # (B, V) attribute-branch classifiers
    global_rep: torch.Tensor  # (B, A·D)
    grid: tuple[int, int] = field(default=(0, 0))  # the activation-map grid (h, w) the ROIs live on


class BranchStack(nn.Module):
    """A independent 3-layer MLPs applied at once with batched matmuls: (A', B, F) -> (A', B, D).

    ``idx`` chooses which branch processes each of the A' inputs, so one attribute's branch can
    also run on another attribute's region (region-aware representations).
    """

    def __init__(self, n: int, fin: int, hidden: int, dout: int):
        super().__init__()
        dims = [(fin, hidden), (hidden, hidden), (hidden, dout)]
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(n, i, o)) for i, o in dims])
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(n, 1, o)) for _, o in dims])
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound * math.sqrt(3), bound * math.sqrt(3))  # kaiming-uniform, ReLU gain
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            if idx is not None:
                w, b = w[idx], b[idx]
            x = torch.baddbmm(b, x, w)
            if layer < 2:
                x = F.relu(x)
        return x


class FashionSearchNet(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool | str = False):
        super().__init__()
        self.cfg = cfg
        info = backbone_info(cfg.backbone)
        self.backbone = build_backbone(cfg.backbone, pretrained)
        if cfg.dilate_from >= 0:
            remove_stride(self.backbone, cfg.dilate_from)
        if cfg.freeze_bn:
            fold_batchnorm(self.backbone)
        freeze_stages(self.backbone, cfg.frozen_stages)
        if cfg.pool_from == "maps" and cfg.map_stage >= 0:
            freeze_after(self.backbone, cfg.map_stage)  # their output only feeds the global-feature baseline
        c, k = info.channels, cfg.conv_channels
        c_map = c
        if cfg.map_stage >= 0:
            with torch.no_grad():  # the tapped stage's width, from a tiny probe
                c_map = run_backbone(self.backbone.eval(), torch.zeros(1, 3, 64, 64), 0, cfg.map_stage)[1].shape[1]
        ks, pad = cfg.map_kernel, cfg.map_kernel // 2
        self.conv6 = nn.Conv2d(c_map, k, ks, padding=pad, padding_mode=cfg.map_padding)
        self.conv7 = nn.Conv2d(k, k, ks, padding=pad, padding_mode=cfg.map_padding)
        v_total = sum(cfg.num_values)
        offsets = torch.tensor([0, *torch.tensor(cfg.num_values).cumsum(0).tolist()])
        k_maps = k
        if cfg.coarse_maps:
            kc = cfg.coarse_channels or k
            self.conv6c = nn.Conv2d(c_map, kc, ks, padding=pad, padding_mode=cfg.map_padding)
            self.conv7c = nn.Conv2d(kc, kc, ks, padding=pad, padding_mode=cfg.map_padding)
            k_maps = k + kc
            # each value's classifier reads its own head's channels only (conv7 below is both heads' channels)
            coarse = torch.zeros(v_total, dtype=torch.bool)
            for a in cfg.coarse_maps:
                coarse[offsets[a] : offsets[a + 1]] = True
            mask = torch.zeros(v_total, k_maps)
            mask[~coarse, :k] = 1.0
            mask[coarse, k:] = 1.0
            self.register_buffer("gap_mask", mask, persistent=False)
        self.gap_classifier = nn.Linear(k_maps, v_total)  # one classifier per attribute, stacked
        c_pool = c_map if cfg.pool_from == "maps" else c
        self.branches = BranchStack(cfg.num_attributes, c_pool * cfg.roi_size**2, cfg.hidden, cfg.embed_dim)
        self.attr_classifier = nn.Parameter(torch.empty(cfg.num_attributes, cfg.embed_dim, max(cfg.num_values)))
        nn.init.normal_(self.attr_classifier, std=1.0 / math.sqrt(cfg.embed_dim))
        self.attr_bias = nn.Parameter(torch.zeros(cfg.num_attributes, 1, max(cfg.num_values)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # reps are unit vectors
        self.global_weight_raw = nn.Parameter(torch.full((cfg.num_attributes,), math.log(math.e - 1)))  # softplus -> 1
        self.register_buffer("value_offsets", offsets, persistent=False)
        # where each stacked value sits in the (A, Vmax) padded layout: index maps, so that
        # stacking and unstacking logits need no boolean indexing (a host sync on a GPU)
        vmax = max(cfg.num_values)
        padded_pos = torch.tensor([a * vmax + v for a, n in enumerate(cfg.num_values) for v in range(n)])
        self.register_buffer("padded_pos", padded_pos, persistent=False)
        self.register_buffer("roi_thr", torch.tensor([cfg.threshold_of(a) for a in range(cfg.num_attributes)]), persistent=False)
        self.register_buffer("roi_median", torch.tensor([a in cfg.median_rois for a in range(cfg.num_attributes)]), persistent=False)
        # per stacked value: max-pooled (its attribute is in max_maps) or pooled by aam_pooling
        self.register_buffer("value_max", torch.tensor([a in cfg.max_maps for a, n in enumerate(cfg.num_values) for _ in range(n)]), persistent=False)

    # -- stages ---------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> Features:
        # pooling from the maps stage, training needs nothing after it (conv5 then only feeds the
        # global-feature baseline at embedding time)
        stop = self.training and self.cfg.pool_from == "maps"
        conv5, tapped = run_backbone(self.backbone, x, self.cfg.frozen_stages, self.cfg.map_stage, stop)
        return Features(conv5, tapped)

    def gap_weight(self) -> torch.Tensor:
        """The stacked map classifiers (V, K); with ``coarse_maps`` each value's row reads only its head's channels."""
        w = self.gap_classifier.weight
        return w * self.gap_mask if self.cfg.coarse_maps else w

    def forward_maps(self, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.maps_in
        conv7 = F.relu(self.conv7(F.relu(self.conv6(x))))
        if self.cfg.coarse_maps:
            # every other cell of the dilated grid is the backbone's own grid (à-trous identity); the
            # coarse head's output is repeated onto the fine grid, so one tensor carries both
            coarse = F.relu(self.conv7c(F.relu(self.conv6c(x[..., ::2, ::2]))))
            conv7 = torch.cat([conv7, F.interpolate(coarse, size=conv7.shape[-2:], mode="nearest")], 1)
        if self.cfg.aam_pooling == "gap" and not self.cfg.max_maps:  # = mean of the class-score maps, computed cheaply
            return conv7, F.linear(conv7.mean((2, 3)), self.gap_weight(), self.gap_classifier.bias)
        scores = self.all_activation_maps(conv7).flatten(2) + self.gap_classifier.bias.view(1, -1, 1).to(conv7.dtype)
        logits = self._pool_scores(scores)
        if self.cfg.max_maps:
            logits = torch.where(self.value_max, scores.amax(2).float(), logits.float())
        return conv7, logits

    def _pool_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, V, cells) class-score maps → (B, V) logits by ``aam_pooling``."""
        if self.cfg.aam_pooling == "gap":
            return scores.mean(2)
        if self.cfg.aam_pooling == "max":
            return scores.amax(2)
        r = self.cfg.lse_r
        lse = (torch.logsumexp(r * scores.float(), 2) - math.log(scores.shape[2])) / r
        if self.cfg.aam_pooling == "lse-contrast":  # the bias cancels in lse − mean: add it back
            return lse - scores.float().mean(2) + self.gap_classifier.bias.float()
        return lse

    def activation_maps(self, conv7: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """AAM of attribute a for value values[b, a]: Σ_k W_a[v, k] · conv7_k (class activation map)."""
        rows = self.value_offsets[:-1].unsqueeze(0) + values.clamp_min(0)  # (B, A) rows of the stacked classifier
        w = self.gap_weight()[rows]  # (B, A, K)
        return torch.einsum("bak,bkhw->bahw", w.to(conv7.dtype), conv7)

    def all_activation_maps(self, conv7: torch.Tensor) -> torch.Tensor:
        """Maps for every value of every attribute: (B, V, H, W)."""
        return torch.einsum("vk,bkhw->bvhw", self.gap_weight().to(conv7.dtype), conv7)

    def roi_maps(self, conv7: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The maps the ROIs are drawn from (B, A, H, W): each attribute's map of ``values``, or its
        attribute-level map for the attributes in ``cfg.attribute_rois``."""
        maps = self.activation_maps(conv7, values)
        if not self.cfg.attribute_rois:
            return maps
        with torch.no_grad():
            idx = torch.tensor(self.cfg.attribute_rois, device=conv7.device)
            level = attribute_maps(self.all_activation_maps(conv7.detach()), self.cfg.num_values).index_select(1, idx)
        return maps.detach().float().index_copy(1, idx, level)

    def forward_rois(self, maps: torch.Tensor) -> torch.Tensor:
        b, a, h, w = maps.shape
        if not self.cfg.localization:
            return whole_map_boxes(b * a, h, w, maps.device).view(b, a, 4)
        with torch.no_grad():  # the ROI coordinates are not differentiated (method.md §2)
            thr = self.cfg.roi_threshold
            if self.cfg.roi_thresholds:  # (B·A,) in map order, from a buffer: no host-to-device copy per batch
                thr = self.roi_thr.repeat(b)
            median = self.roi_median.repeat(b) if self.cfg.median_rois else None
            boxes = boxes_from_maps(maps.reshape(b * a, h, w), thr, self.cfg.roi_upsample, self.cfg.roi_norm, median)
        return boxes.view(b, a, 4)

    def _pool(self, feats: Features, rois: torch.Tensor) -> torch.Tensor:
        """ROI-align conv5 features in (B, R, 4) map-grid boxes -> (R, B, C·s·s)."""
        mh, mw = feats.maps_in.shape[-2:]
        feats = feats.maps_in if self.cfg.pool_from == "maps" else feats.conv5
        h, w = feats.shape[-2:]
        if (mh, mw) != (h, w):
            rois = torch.stack([rois[..., 0] * (w / mw), rois[..., 1] * (h / mh), rois[..., 2] * (w / mw), rois[..., 3] * (h / mh)], -1)
        b, r, _ = rois.shape
        # boxes stay in fp32: in bf16 the batch index column rounds above 256 (image 257 would pool
        # image 256) and coordinates to 1/16 of a cell; the pooling runs in fp32, as autocast would
        batch_idx = torch.arange(b, device=feats.device, dtype=torch.float32).repeat_interleave(r)
        boxes = torch.cat([batch_idx[:, None], rois.reshape(b * r, 4).float()], 1)
        s = self.cfg.roi_size
        pooled = roi_align(feats.float(), boxes, (s, s), spatial_scale=1.0, sampling_ratio=self.cfg.roi_sampling, aligned=True)
        return pooled.to(feats.dtype).reshape(b, r, -1).transpose(0, 1)

    def forward_attributes(self, feats: Features, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.branches(self._pool(feats, rois))  # (A, B, D)
        reps = F.normalize(h.float(), dim=-1)
        logits = torch.baddbmm(self.attr_bias, reps, self.attr_classifier) * self.logit_scale.exp()  # (A, B, Vmax)
        return reps.transpose(0, 1), self._stack_logits(logits)

    def forward_regions(self, feats: Features, rois: torch.Tensor) -> torch.Tensor:
        """Region-aware representations (B, P, D): branch a applied inside the ROI of attribute r."""
        dev = feats.conv5.device
        if not self.cfg.region_pairs:
            return feats.conv5.new_zeros(feats.conv5.shape[0], 0, self.cfg.embed_dim).float()
        r_idx = torch.tensor([r for r, _ in self.cfg.region_pairs], device=dev)
        a_idx = torch.tensor([a for _, a in self.cfg.region_pairs], device=dev)
        h = self.branches(self._pool(feats, rois[:, r_idx]), a_idx)
        return F.normalize(h.float(), dim=-1).transpose(0, 1)

    def global_weights(self) -> torch.Tensor:
        return F.softplus(self.global_weight_raw)

    def global_representation(self, reps: torch.Tensor) -> torch.Tensor:
        return (reps * self.global_weights().view(1, -1, 1)).flatten(1)

    def _stack_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(A, B, Vmax) padded per-attribute logits -> (B, V) in the stacked value order."""
        b = logits.shape[1]
        return logits.transpose(0, 1).reshape(b, -1).index_select(1, self.padded_pos)

    # -- whole passes ---------------------------------------------------------------------------
    def predict_values(self, gap_logits: torch.Tensor) -> torch.Tensor:
        """Arg-max value per attribute from stacked logits (B, V) -> (B, A)."""
        b, a, vmax = gap_logits.shape[0], self.cfg.num_attributes, max(self.cfg.num_values)
        padded = gap_logits.new_full((b, a * vmax), float("-inf"))
        return padded.index_copy(1, self.padded_pos, gap_logits).view(b, a, vmax).argmax(-1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> FSNOutput:
        """Full pass. ``labels`` (B, A; -1 unknown) choose each ROI's value where known (training)."""
        feats = self.forward_features(x)
        conv7, gap_logits = self.forward_maps(feats)
        values = self.predict_values(gap_logits.detach())
        if labels is not None:
            values = torch.where(labels >= 0, labels, values)
        rois = self.forward_rois(self.roi_maps(conv7, values))
        reps, attr_logits = self.forward_attributes(feats, rois)
        return FSNOutput(gap_logits, rois, reps, attr_logits, self.global_representation(reps), tuple(conv7.shape[-2:]))


def split_logits(stacked: torch.Tensor, num_values: tuple[int, ...]) -> list[torch.Tensor]:
    """(B, V) stacked logits -> one (B, V_a) tensor per attribute."""
    return list(torch.split(stacked, list(num_values), dim=1))
