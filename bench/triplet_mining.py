"""Time of the attribute triplet losses (12 attributes, semi-hard mining, forward + backward).

    python bench/triplet_mining.py [--batches 64,128,256] [--device cpu|cuda]

Compares the general mining (``losses.triplet_losses``: every (anchor, positive, negative) cell,
G·B³ of them) with the same-value fast path the training uses for the per-attribute losses
(``losses.same_value_triplet_losses``: sorted negatives and a binary search, G·B²·log B), and
checks that both give the same losses.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashionsearchnet.losses import same_value_relevance, same_value_triplet_losses, triplet_losses  # noqa: E402


def timed(fn, device, repeats: int) -> float:
    fn()[0].sum().backward()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()[0].sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attributes", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"device {device}{' ' + torch.cuda.get_device_name(0) if device.type == 'cuda' else ''}; torch {torch.__version__}")
    print(f"{'batch':>5} {'general ms':>11} {'same-value ms':>14} {'speed-up':>9}  same losses")
    for b in (int(x) for x in args.batches.split(",")):
        g = torch.Generator().manual_seed(b)
        emb = torch.nn.functional.normalize(torch.randn(args.attributes, b, 64, generator=g), dim=-1).to(device).requires_grad_(True)
        labels = torch.randint(0, 12, (args.attributes, b), generator=g).to(device)
        general = lambda: triplet_losses(emb, same_value_relevance(labels), 0.5, "semi_hard")  # noqa: E731
        fast = lambda: same_value_triplet_losses(emb, labels, 0.5, "semi_hard")  # noqa: E731
        t_gen, t_fast = timed(general, device, args.repeats), timed(fast, device, args.repeats)
        same = torch.allclose(general()[0], fast()[0])
        print(f"{b:>5} {1e3 * t_gen:>11.1f} {1e3 * t_fast:>14.1f} {t_gen / t_fast:>8.0f}×  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
