"""Training throughput and peak memory per backbone at 224 px (CPU, and GPU with bf16 where present).

    python bench/train_throughput.py [--device cpu|cuda|all] [--batch N] [--steps N] [--pipeline] [--profile N]

Two measurements per backbone and device:
- ``model``: images per second of full training steps (forward, all four losses, backward,
  AdamW) on batches already on the device: what the model costs.
- ``pipeline`` (with --pipeline): the same steps fed from a catalog of 224 px JPEGs, through the
  training code's own input path (the in-memory uint8 cache + on-device augmentation), plus the
  decode rate of that cache build: what limits an end-to-end run.

``--profile N`` then runs N more steps of the first backbone under ``torch.profiler`` and prints
the operators that took the most device (or CPU) time, and the share of the step the device was
busy: what limits the step.

12 attributes with Shopping100k's value counts (16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15) and
the paper-sized head (conv6/conv7 1024 channels, 512-wide branches, 64-d representations).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashionsearchnet.data import augment, normalise  # noqa: E402
from fashionsearchnet.device import autocast, prepare_input, prepare_model  # noqa: E402
from fashionsearchnet.losses import fsn_losses  # noqa: E402
from fashionsearchnet.model import FashionSearchNet, ModelConfig  # noqa: E402

SHOPPING100K = (16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15)
WEIGHTS = {"aam": 1.0, "attr_ce": 1.0, "attr_triplet": 1.0, "global_triplet": 1.0}
BACKBONES = (("alexnet", False), ("mobilenet_v2", True), ("efficientnet_lite0", True))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; GPU {gpu}; torch {torch.__version__}"


def make_model(backbone: str, pretrained: bool, device: torch.device) -> FashionSearchNet:
    from fashionsearchnet.backbones import backbone_info

    info = backbone_info(backbone)
    cfg = ModelConfig(num_values=SHOPPING100K, backbone=backbone, image_size=224, mean=info.mean, std=info.std)
    torch.manual_seed(0)
    return prepare_model(FashionSearchNet(cfg, pretrained=pretrained), device).train()


def labels_for(batch: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # P×K-like structure: groups of 8 sharing the first attribute's value
    y = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in SHOPPING100K], 1)
    y[:, 0] = torch.arange(batch) // 8 % SHOPPING100K[0]
    return y.to(device)


def step_fn(model, opt, device, dtype):
    def step(images_u8: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        x = prepare_input(augment(normalise(images_u8, model.cfg.mean, model.cfg.std), gen), device)
        with autocast(device, dtype):
            out = model(x, y)
        parts = fsn_losses(out, y, model.cfg.num_values, WEIGHTS, 0.5, "semi_hard")
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        opt.step()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(backbone, pretrained, device, dtype, batch, fused=False):
    """A model, its optimizer, a step function and one batch on the device."""
    model = make_model(backbone, pretrained, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4, fused=fused or None)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
    return model, opt, step_fn(model, opt, device, dtype), images, labels_for(batch, device), torch.Generator().manual_seed(0)


def run_steps(step, images, y, gen, n, device) -> float:
    """Seconds for n steps, the device's queue drained before and after."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step(images, y, gen)
    sync(device)
    return time.perf_counter() - t


def bench_model(backbone, pretrained, device, dtype, batch, steps, warmup=2, fused=False):
    model, opt, step, images, y, gen = setup(backbone, pretrained, device, dtype, batch, fused)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_steps(step, images, y, gen, warmup, device)
    return model, opt, batch * steps / run_steps(step, images, y, gen, steps, device)


def profile_steps(backbone, pretrained, device, dtype, batch, steps) -> None:
    from torch.profiler import ProfilerActivity, profile

    _model, _opt, step, images, y, gen = setup(backbone, pretrained, device, dtype, batch)
    run_steps(step, images, y, gen, 2, device)
    wall = run_steps(step, images, y, gen, steps, device) / steps  # per step, not profiled
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step(images, y, gen)
        sync(device)
    events = prof.key_averages()
    if device.type == "cuda":
        from torch.autograd import DeviceType

        key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        busy = sum(getattr(e, key) for e in events if e.device_type == DeviceType.CUDA) / 1e6 / steps  # kernels only
        print(f"\nprofile: {backbone} on cuda, batch {batch}: a step takes {1e3 * wall:.1f} ms (not profiled); the GPU's kernels "
              f"run {1e3 * busy:.1f} ms of it ({100 * busy / wall:.0f} %); the rest is the host issuing work or waiting")
    else:
        key = "self_cpu_time_total"
        print(f"\nprofile: {backbone} on cpu, batch {batch}: a step takes {1e3 * wall:.1f} ms (not profiled)")
    ops = [e for e in events if e.key.startswith("aten::")]
    syncs = sum(e.count for e in ops if e.key in ("aten::_local_scalar_dense", "aten::nonzero", "aten::equal"))
    print(f"aten operator calls per step (nested included): {sum(e.count for e in ops) / steps:.0f}; "
          f"calls reading a value back (item, nonzero, equal) per step: {syncs / steps:.1f} "
          f"(those on CPU tensors, such as the optimizer's step counters, do not wait for a GPU)")
    print(events.table(sort_by=key, row_limit=25, max_name_column_width=60))


def peak_memory(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def bench_pipeline(model, opt, device, dtype, batch, steps, catalog: Path):
    from fashionsearchnet.catalog import read_catalog
    from fashionsearchnet.data import ImageSource

    cat = read_catalog(catalog)
    paths = [cat.image_path(r) for r in cat.records]
    t = time.perf_counter()
    src = ImageSource(paths, 224, cache=True)
    decode_rate = len(paths) / (time.perf_counter() - t)
    cached = src.cached.to(device) if device.type == "cuda" else src.cached  # the whole cache on the GPU
    step = step_fn(model, opt, device, dtype)
    y = labels_for(batch, device)
    gen = torch.Generator().manual_seed(1)
    n = cached.shape[0]
    sync(device)
    t = time.perf_counter()
    for _s in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen).to(cached.device)
        step(cached[idx].to(device, non_blocking=True), y, gen)
    sync(device)
    return batch * steps / (time.perf_counter() - t), decode_rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--batch", type=int, default=0, help="default: 32 on CPU, 256 on GPU")
    ap.add_argument("--steps", type=int, default=0, help="default: 3 on CPU, 30 on GPU")
    ap.add_argument("--pipeline", action="store_true", help="also measure the JPEG input pipeline")
    ap.add_argument("--pipeline-images", type=int, default=2000)
    ap.add_argument("--fused-adam", action="store_true", help="on GPU, also time each backbone with the fused AdamW kernel")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile N steps of the first backbone on each device")
    ap.add_argument("--backbones", default="alexnet,mobilenet_v2,efficientnet_lite0")
    args = ap.parse_args(argv)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"machine: {machine()}")
    catalog = None
    if args.pipeline:
        from fashionsearchnet.synthetic import generate

        catalog = Path(tempfile.mkdtemp()) / "cat"
        generate(catalog, args.pipeline_images, 224, seed=0)
    wanted = set(args.backbones.split(","))
    print(f"{'device':<6} {'backbone':<19} {'batch':>5} {'precision':>9} {'model img/s':>12} {'pipeline img/s':>15} {'decode img/s':>13}  peak memory")
    for device in devices:
        batch = args.batch or (256 if device.type == "cuda" else 32)
        steps = args.steps or (30 if device.type == "cuda" else 3)
        dtype = torch.bfloat16 if device.type == "cuda" else None
        for name, pretrained in BACKBONES:
            if name not in wanted:
                continue
            model, opt, rate = bench_model(name, pretrained, device, dtype, batch, steps)
            pipe, dec = (float("nan"), float("nan"))
            if catalog is not None:
                pipe, dec = bench_pipeline(model, opt, device, dtype, batch, steps, catalog)
            print(f"{device.type:<6} {name:<19} {batch:>5} {'bf16' if dtype else 'fp32':>9} {rate:>12.1f} {pipe:>15.1f} {dec:>13.1f}  {peak_memory(device)}", flush=True)
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if args.fused_adam and device.type == "cuda":
                model, opt, rate = bench_model(name, pretrained, device, dtype, batch, steps, fused=True)
                print(f"{device.type:<6} {name + ' fused-adam':<19} {batch:>5} {'bf16':>9} {rate:>12.1f} {'':>15} {'':>13}  {peak_memory(device)}", flush=True)
                del model, opt
                torch.cuda.empty_cache()
    for device in devices if args.profile else ():
        name, pretrained = next(b for b in BACKBONES if b[0] in wanted)
        batch = args.batch or (256 if device.type == "cuda" else 32)
        profile_steps(name, pretrained, device, torch.bfloat16 if device.type == "cuda" else None, batch, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
