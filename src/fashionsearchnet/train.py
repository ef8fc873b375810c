"""Training: optimiser, schedule, stages, precision, validation, checkpoints. Serving never imports this.

``fsn train --data CATALOG --out RUN [--config NAME|FILE] [key=value …] [--resume]``

Stages (``mode = "staged"``, the paper): localization (activation-map classification only), then
attribute representations (+ per-attribute classification and triplet ranking), then global
(+ the global ranking loss). ``mode = "joint"`` trains every loss from the start
(FashionSearchNet-v2). Validation runs after every epoch on the catalog's ``val`` split; the best
epoch of the final stage by mean validation attribute accuracy becomes ``model.safetensors``.
The test split is never read.

Under ``torchrun`` the same command trains with DistributedDataParallel (NCCL on GPUs, gloo on
CPU): each rank takes every world_size-th P×K batch, so the effective batch is world_size × P × K.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt
from .catalog import read_catalog
from .data import ImageSource, augment, fits_in_memory, normalise
from .device import autocast, prepare_input, prepare_model, resolve_device, resolve_precision, to_device
from .embed import compute_prototypes, embed_batches, iterate_images, save_prototypes, value_accuracy, Embedding
from .localization import ROI_NORMS, roi_areas
from .losses import MINING, fsn_losses
from .model import ATTRIBUTE_SET_OPTIONS, FashionSearchNet, ModelConfig
from .sampler import PKBatchSampler
from .schema import catalog_columns

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.json"


@dataclass
class TrainConfig:
    """How to train. Model fields (backbone … freeze_bn) become the stored ModelConfig."""

    # model
    backbone: str = "mobilenet_v2"
    pretrained: Any = True  # true: the backbone package's ImageNet weights; false; or a weight-file path (alexnet)
    image_size: int = 224
    conv_channels: int = 1024
    roi_size: int = 3
    hidden: int = 512
    embed_dim: int = 64
    roi_threshold: float = 0.5
    roi_thresholds: str = ""  # per attribute, e.g. "sleeve_color=0.7,category=0.4"; the rest use roi_threshold
    roi_upsample: int = 2
    roi_norm: str = "minmax"  # minmax | median (see ModelConfig)
    attribute_rois: str = ""  # attributes (comma-separated) whose ROI comes from the attribute-level map (see ModelConfig)
    median_rois: str = ""  # attributes (comma-separated) whose maps are median-scaled before the threshold (roi_norm for them alone)
    coarse_maps: str = ""  # attributes (comma-separated) whose maps come from the coarse head (see ModelConfig; needs dilate_from)
    coarse_channels: int = 0  # the coarse head's width (0: conv_channels)
    hold_out: str = ""  # attributes (comma-separated) the model never sees, kept in the catalog for evaluation
    localization: bool = True
    freeze_bn: bool = True
    frozen_stages: int = 0
    map_stage: int = -1
    dilate_from: int = -1  # backbone stage from which the stride is removed (see ModelConfig)
    aam_pooling: str = "gap"
    lse_r: float = 5.0
    max_maps: str = ""  # attributes (comma-separated) whose class-score maps are max-pooled whatever aam_pooling says
    map_padding: str = "zeros"
    map_kernel: int = 3  # conv6/conv7 kernel size (see ModelConfig)
    pool_from: str = "conv5"  # conv5 | maps (see ModelConfig)
    roi_sampling: int = 0  # roi_align points per bin side, 0 = adaptive (see ModelConfig)
    # schedule
    mode: str = "staged"  # staged | joint
    epochs_localization: int = 3
    epochs_attributes: int = 6
    epochs_global: int = 3
    epochs: int = 12  # joint mode
    batches_per_epoch: int = 0  # 0: one pass over the training split
    p: int = 8  # values per batch
    k: int = 8  # items per value
    grad_accum: int = 1  # batches per optimiser step (one process doing what grad_accum GPUs would)
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 5.0
    # losses
    margin: float = 0.5
    mining: str = "semi_hard"
    w_aam: float = 1.0
    w_attr_ce: float = 1.0
    w_attr_triplet: float = 1.0
    w_global_triplet: float = 1.0
    # data and machine
    augment: bool = True
    cache: str = "auto"  # auto | memory | disk
    cache_budget_gb: float = 8.0
    workers: int = 0  # image decoding threads; 0 = auto
    eval_batch_size: int = 128
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in ("staged", "joint"):
            raise ValueError(f"mode must be staged or joint, got {self.mode!r}")
        if self.mining not in MINING:
            raise ValueError(f"mining must be one of {', '.join(MINING)}, got {self.mining!r}")
        if self.roi_norm not in ROI_NORMS:
            raise ValueError(f"roi_norm must be {' or '.join(ROI_NORMS)}, got {self.roi_norm!r}")
        if self.cache not in ("auto", "memory", "disk"):
            raise ValueError(f"cache must be auto, memory or disk, got {self.cache!r}")
        if self.mode == "staged" and self.epochs_global + self.epochs_attributes < 1:
            raise ValueError("staged training needs at least one attributes or global epoch")
        if self.mode == "joint" and self.epochs < 1:
            raise ValueError("joint training needs epochs ≥ 1")
        if min(self.epochs_localization, self.epochs_attributes, self.epochs_global, self.epochs) < 0:
            raise ValueError("epoch counts cannot be negative")
        for name in ("grad_accum", "lr", "margin", "image_size", "conv_channels", "hidden", "embed_dim", "roi_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def stages(self) -> list[tuple[str, int, dict[str, float]]]:
        w = {"aam": self.w_aam, "attr_ce": self.w_attr_ce, "attr_triplet": self.w_attr_triplet, "global_triplet": self.w_global_triplet}
        if self.mode == "joint":
            return [("joint", self.epochs, w)]
        plan = [
            ("localization", self.epochs_localization, {"aam": w["aam"]}),
            ("attributes", self.epochs_attributes, {k: w[k] for k in ("aam", "attr_ce", "attr_triplet")}),
            ("global", self.epochs_global, w),
        ]
        return [s for s in plan if s[1] > 0]

    def held_out(self) -> tuple[str, ...]:
        """The attribute names of ``hold_out``."""
        return tuple(n.strip() for n in self.hold_out.split(",") if n.strip())

    def _held_elsewhere(self, names: Sequence[str]) -> set[str]:
        """Held-out attributes outside the model: per-attribute options naming them are skipped (a
        config written for the whole catalog)."""
        return set(self.held_out()) - set(names)

    def thresholds(self, names: Sequence[str]) -> tuple[float, ...]:
        """``roi_thresholds`` resolved against the attribute names: one value per attribute, or ()."""
        if not self.roi_thresholds.strip():
            return ()
        out = {n: self.roi_threshold for n in names}
        held = self._held_elsewhere(names)
        for item in self.roi_thresholds.split(","):
            name, sep, raw = item.strip().partition("=")
            if sep and name.strip() in held:
                continue
            if not sep or name.strip() not in out:
                raise ValueError(f"roi_thresholds entry {item.strip()!r}: expected attribute=value with an attribute of {', '.join(names)}")
            try:
                t = float(raw)
            except ValueError:
                raise ValueError(f"roi_thresholds entry {item.strip()!r}: {raw!r} is not a number") from None
            if not 0.0 <= t < 1.0:
                raise ValueError(f"roi_thresholds entry {item.strip()!r}: a threshold must be in [0, 1)")
            out[name.strip()] = t
        return tuple(out[n] for n in names)

    def attribute_indices(self, option: str, names: Sequence[str]) -> tuple[int, ...]:
        """A comma-separated attribute option (``attribute_rois``, ``median_rois``, ``coarse_maps``, ``max_maps``) resolved against
        the attribute names (held-out ones skipped)."""
        held = self._held_elsewhere(names)
        out = []
        for name in (n.strip() for n in getattr(self, option).split(",") if n.strip()):
            if name in held:
                continue
            if name not in names:
                raise ValueError(f"{option}: unknown attribute {name!r}; the model's attributes are {', '.join(names)}")
            out.append(list(names).index(name))
        return tuple(sorted(set(out)))

    def model_config(self, num_values: tuple[int, ...], region_pairs: tuple[tuple[int, int], ...], names: Sequence[str] = ()) -> ModelConfig:
        from .backbones import backbone_info

        info = backbone_info(self.backbone)
        by_name = ("roi_thresholds", *ATTRIBUTE_SET_OPTIONS)
        if any(getattr(self, o).strip() for o in by_name) and len(names) != len(num_values):
            raise ValueError(f"{', '.join(by_name[:-1])} and {by_name[-1]} need the attribute names")
        return ModelConfig(
            num_values=num_values, backbone=self.backbone, image_size=self.image_size, conv_channels=self.conv_channels,
            roi_size=self.roi_size, hidden=self.hidden, embed_dim=self.embed_dim, roi_threshold=self.roi_threshold,
            roi_thresholds=self.thresholds(names), attribute_rois=self.attribute_indices("attribute_rois", names),
            median_rois=self.attribute_indices("median_rois", names),
            coarse_maps=self.attribute_indices("coarse_maps", names), coarse_channels=self.coarse_channels,
            roi_upsample=self.roi_upsample, roi_norm=self.roi_norm, localization=self.localization, freeze_bn=self.freeze_bn, frozen_stages=self.frozen_stages,
            map_stage=self.map_stage, dilate_from=self.dilate_from, aam_pooling=self.aam_pooling, lse_r=self.lse_r, max_maps=self.attribute_indices("max_maps", names), map_padding=self.map_padding, map_kernel=self.map_kernel, pool_from=self.pool_from, roi_sampling=self.roi_sampling,
            region_pairs=region_pairs, mean=info.mean, std=info.std,
        )


# -- configuration ------------------------------------------------------------------------------
def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fashionsearchnet.configs").iterdir() if p.name.endswith(".toml"))


def _coerce(name: str, raw: Any, default: Any) -> Any:
    if name == "pretrained":  # bool or a path
        if isinstance(raw, bool):
            return raw
        low = str(raw).lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(low, str(raw))
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        low = str(raw).lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name} expects true or false, got {raw!r}")
    try:
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number"}.get(type(default), f"a {type(default).__name__}")
        raise ValueError(f"{name} expects {kind}, got {raw!r}") from None
    return str(raw)


def load_config(config: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then a TOML file (a path, or the name of a packaged config), then key=value overrides."""
    defaults = TrainConfig()
    values: dict[str, Any] = {}
    if config:
        path = Path(config)
        if not path.is_file():
            if config not in packaged_configs():
                raise FileNotFoundError(f"config {config!r} is neither a file nor a packaged config ({', '.join(packaged_configs())})")
            text = resources.files("fashionsearchnet.configs").joinpath(f"{config}.toml").read_text()
        else:
            text = path.read_text(encoding="utf-8")
        try:
            values.update(tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config {config}: not valid TOML ({e})") from None
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        values[k.strip()] = v.strip()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    cfg = TrainConfig(**{k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()})
    cfg.validate()
    return cfg


# -- distributed --------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if (device_name in ("auto", "cuda") and torch.cuda.is_available()) else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- the loop -----------------------------------------------------------------------------------
def _lr_lambda(total_steps: int, warmup: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _optimizer(model: FashionSearchNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    mult = cfg.backbone_lr_mult if cfg.pretrained else 1.0
    back = [p for p in model.backbone.parameters() if p.requires_grad]
    back_ids = {id(p) for p in back}
    rest = [p for p in model.parameters() if id(p) not in back_ids]
    return torch.optim.AdamW(
        [{"params": back, "lr": cfg.lr * mult}, {"params": rest, "lr": cfg.lr}], lr=cfg.lr, weight_decay=cfg.weight_decay
    )


@torch.no_grad()
def validate(model: FashionSearchNet, source: ImageSource, labels: np.ndarray, device, dtype, batch: int) -> dict[str, Any]:
    model.eval()
    gap_pred, attr_pred, areas = [], [], []
    for images in iterate_images(source, batch):
        x = prepare_input(normalise(images.to(device), model.cfg.mean, model.cfg.std), device)
        with autocast(device, dtype):
            out = model(x)
        gap_pred.append(model.predict_values(out.gap_logits.float()).cpu().numpy())
        attr_pred.append(model.predict_values(out.attr_logits.float()).cpu().numpy())
        areas.append(roi_areas(out.rois.float(), out.grid).cpu().numpy())
    gap = value_accuracy(np.concatenate(gap_pred), labels)
    attr = value_accuracy(np.concatenate(attr_pred), labels)
    return {"gap_acc": gap.tolist(), "attr_acc": attr.tolist(), "gap_mean": float(np.nanmean(gap)), "attr_mean": float(np.nanmean(attr)),
            "roi_area": np.concatenate(areas).mean(0).round(4).tolist()}



def _prefetch(batches, source: ImageSource):
    """Load the next batch's images in a background thread while the current one trains."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(batches)
    with ThreadPoolExecutor(1) as pool:
        try:
            nxt = next(it)
        except StopIteration:
            return
        fut = pool.submit(source.get, nxt)
        while True:
            idx, images = nxt, fut.result()
            try:
                nxt = next(it)
                fut = pool.submit(source.get, nxt)
            except StopIteration:
                nxt = None
            yield idx, images
            if nxt is None:
                return


def train(data: str | Path, out: str | Path, cfg: TrainConfig, resume: bool = False, force: bool = False, log=None, progress=None) -> dict[str, Any]:
    """Train a model on catalog ``data`` into run folder ``out``; returns the run summary."""
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out)
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device if d.world == 1 or cfg.device != "auto" else "auto")
    dtype = resolve_precision(cfg.precision, device)
    cat = read_catalog(data)
    schema = cat.schema.without(cfg.held_out())
    cols = catalog_columns(schema, cat.schema)
    # the model's configuration is checked before the run folder is touched: a bad option loses nothing
    region_pairs = tuple((schema.attribute_index(schema.region(r).roi_attribute), schema.attribute_index(a)) for r, a in schema.region_pairs())
    mcfg = cfg.model_config(schema.num_values, region_pairs, schema.names)
    if mcfg.dilate_from >= 0:  # needs the backbone's layout: checked on an untrained copy
        from .backbones import build_backbone, remove_stride

        remove_stride(build_backbone(mcfg.backbone), mcfg.dilate_from)
    train_recs, val_recs = cat.split("train"), cat.split("val")
    if len(train_recs) < 2:
        raise ValueError(f"{data}: the train split has {len(train_recs)} items; training needs at least 2")
    if not val_recs:
        raise ValueError(f"{data}: the val split is empty; checkpoints are selected on val, never on test")

    state_path = out / ckpt.STATE_FILE
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"{out}: nothing to resume (no {ckpt.STATE_FILE})")
    elif state_path.exists() and not force:
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it or --force to start over")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for f in (ckpt.MODEL_FILE, ckpt.MODEL_JSON, ckpt.LAST_FILE, ckpt.STATE_FILE, METRICS_FILE, ckpt.PROTOTYPES_FILE, "summary.json"):
                (out / f).unlink(missing_ok=True)
            ckpt.write_json(out / RUN_CONFIG_FILE, dataclasses.asdict(cfg) | {"data": str(Path(data).resolve())})
    _barrier(d)

    torch.manual_seed(cfg.seed)
    model = FashionSearchNet(mcfg, pretrained=cfg.pretrained)
    model = prepare_model(model, device)
    opt = _optimizer(model, cfg)
    plan = cfg.stages()
    total_epochs = sum(e for _, e, _ in plan)
    train_labels = cat.labels(train_recs)[:, cols]
    sampler = PKBatchSampler(train_labels, cfg.p, cfg.k, cfg.seed, cfg.batches_per_epoch or None, d.rank, d.world)
    if len(sampler) < cfg.grad_accum:
        raise ValueError(f"grad_accum={cfg.grad_accum} exceeds the {len(sampler)} batches per epoch")
    steps_per_epoch = len(sampler) // cfg.grad_accum
    total_steps = total_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, cfg.warmup_steps))

    start_epoch, best, history = 0, -1.0, []
    if resume:
        from safetensors.torch import load_file

        st = ckpt.load_state(state_path)
        model.load_state_dict(load_file(str(out / ckpt.LAST_FILE)))
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start_epoch, best, history = int(st["epoch"]) + 1, float(st["best"]), list(st.get("history", []))
        if d.main:
            log(f"resuming {out} after epoch {start_epoch} of {total_epochs}")

    ddp_model = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    size = cfg.image_size
    workers = cfg.workers or None
    cache = cfg.cache == "memory" or (cfg.cache == "auto" and fits_in_memory(len(train_recs) + len(val_recs), size, int(cfg.cache_budget_gb * 2**30)))
    t0 = time.perf_counter()
    train_src = ImageSource([cat.image_path(r) for r in train_recs], size, cache, workers, progress if d.main else None)
    val_src = ImageSource([cat.image_path(r) for r in val_recs], size, cache, workers)
    val_labels = cat.labels(val_recs)[:, cols]
    if d.main:
        where = "memory" if cache else "disk (decoded per batch)"
        log(f"data: {len(train_recs)} train / {len(val_recs)} val images at {size} px from {where} ({time.perf_counter() - t0:.1f} s); "
            f"device {device}, precision {dtype or 'fp32'}, world size {d.world}")
        log(f"model: {cfg.backbone} (pretrained={cfg.pretrained}), {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
            f"{'with' if cfg.localization else 'WITHOUT'} localization; stages: " + ", ".join(f"{n} {e}" for n, e, _ in plan))

    bounds = np.cumsum([e for _, e, _ in plan])
    final_stage_start = total_epochs - plan[-1][1]
    labels_t = torch.as_tensor(train_labels)
    for epoch in range(start_epoch, total_epochs):
        s_i = int(np.searchsorted(bounds, epoch, side="right"))
        stage, _, weights = plan[s_i]
        sampler.set_epoch(epoch)
        ddp_model.train()
        sums: dict[str, Any] = {}  # device tensors during the epoch, floats after it
        n_batches, n_images, t_ep = 0, 0, time.perf_counter()
        batches = _prefetch(sampler, train_src)
        if progress is not None and d.main:
            batches = progress(batches, total=len(sampler), desc=f"epoch {epoch + 1}/{total_epochs} {stage}", unit="batch")
        opt.zero_grad(set_to_none=True)
        for j, (idx, images) in enumerate(batches):
            if j >= steps_per_epoch * cfg.grad_accum:
                break
            x = normalise(to_device(images, device), mcfg.mean, mcfg.std)
            if cfg.augment:
                # seeded by the batch's global position: the same pixels whatever the world size
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + j * d.world + d.rank)
                x = augment(x, gen)
            x = prepare_input(x, device)
            y = to_device(labels_t[idx], device)
            with autocast(device, dtype):
                outp = ddp_model(x, y)
            parts = fsn_losses(outp, y, mcfg.num_values, weights, cfg.margin, cfg.mining)
            (parts["total"] / cfg.grad_accum).backward()
            if (j + 1) % cfg.grad_accum == 0:
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            # summed on the device and read every few batches: reading a loss waits for the GPU
            for k_, v in parts.items():
                sums[k_] = sums[k_] + v.detach().double() if k_ in sums else v.detach().double()
            n_batches += 1
            n_images += len(idx)
            if progress is not None and d.main and hasattr(batches, "set_postfix") and n_batches % 10 == 1:
                batches.set_postfix(loss=f"{float(sums['total']) / n_batches:.3f}")
        sums = {k_: float(v) for k_, v in sums.items()}
        dt = time.perf_counter() - t_ep
        if d.main:
            val = validate(model, val_src, val_labels, device, dtype, cfg.eval_batch_size)
            metric = val["gap_mean"] if stage == "localization" else val["attr_mean"]
            improved = epoch >= final_stage_start and metric > best
            if improved:
                best = metric
                ckpt.save_model(out / ckpt.MODEL_FILE, model, schema, {"epoch": epoch + 1, "val_attr_mean": metric})
                ckpt.write_json(out / ckpt.MODEL_JSON, ckpt.model_meta(model, schema) | {"epoch": epoch + 1, "val_attr_mean": metric})
            row = {
                "epoch": epoch + 1, "stage": stage, "batches": n_batches, "seconds": round(dt, 2),
                "images_per_second": round(n_images * d.world / dt, 1), "lr": sched.get_last_lr()[-1],
                "loss": {k_: round(v / max(1, n_batches), 5) for k_, v in sums.items()}, "val": val, "selected": improved,
            }
            history.append(row)
            # weights, then the state that points at them, then the log derived from the state:
            # a kill between any two leaves a run that resumes correctly
            ckpt.save_model(out / ckpt.LAST_FILE, model, schema, {"epoch": epoch + 1})
            ckpt.save_state(state_path, {"epoch": epoch, "best": best, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history})
            _write_metrics(out, history)
            losses = " ".join(f"{k_} {v / max(1, n_batches):.3f}" for k_, v in sums.items() if k_ != "total" and v)
            log(f"epoch {epoch + 1}/{total_epochs} [{stage}] {losses} | val attr {val['attr_mean']:.4f} aam {val['gap_mean']:.4f}"
                f" | {row['images_per_second']:.0f} img/s{' *' if improved else ''}")
        _barrier(d)

    summary: dict[str, Any] = {}
    if d.main:
        summary = finish_run(out, train_labels, train_src, device, dtype, cfg.eval_batch_size, progress)
        summary["train_seconds"] = round(time.perf_counter() - t0, 1)
        ckpt.write_json(out / "summary.json", summary)
        log(f"best epoch {summary['best_epoch']} (val attr {summary['val_attr_mean']:.4f}); prototypes from {summary['prototype_items']} train items -> {out}")
        chosen = [r["val"] for r in history if r.get("selected") and "roi_area" in r["val"]]
        if chosen and model.cfg.localization:
            log("ROI area on val, share of the picture (a map that does not localize gives a large one): "
                + ", ".join(f"{n} {a:.2f}" for n, a in zip(schema.names, chosen[-1]["roi_area"])))
    _barrier(d)
    if d.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return summary


def _write_metrics(out: Path, history: list[dict]) -> None:
    from .catalog import atomic_write_text

    atomic_write_text(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def finish_run(out: Path, train_labels: np.ndarray, train_src: ImageSource, device, dtype, batch: int, progress=None) -> dict[str, Any]:
    """Prototypes of the selected model over the training split, stored beside it."""
    model, schema = ckpt.load_model(out, device)
    meta = ckpt.read_meta(out)
    emb = Embedding.concat(list(embed_batches(model, iterate_images(train_src, batch), device, dtype, progress, math.ceil(len(train_src) / batch))))
    protos = compute_prototypes(emb, train_labels, schema)
    save_prototypes(out / ckpt.PROTOTYPES_FILE, protos, ckpt.fingerprint(out))
    return {"best_epoch": meta.get("epoch"), "val_attr_mean": meta.get("val_attr_mean"), "prototype_items": len(train_labels), "model": ckpt.fingerprint(out)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m fashionsearchnet.train`` (same arguments as ``fsn train``)."""
    from .cli import main as cli_main

    return cli_main(["train", *(argv or [])])
