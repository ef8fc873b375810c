"""``fsn demo``: every stage that exists, on the built-in synthetic catalog, saying what it did."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def run_demo(args: argparse.Namespace) -> int:
    from .catalog import read_catalog
    from .synthetic import generate

    out: Path = args.out
    n, size = (400, 64) if args.quick else (args.n, args.size)
    catalog = out / "catalog"
    t0 = time.perf_counter()
    if (catalog / "catalog.csv").is_file():
        print(f"[1/1] synthetic catalog: reusing {catalog}")
    else:
        generate(catalog, n, size, args.seed, overwrite=True)
        print(f"[1/1] synthetic catalog: drew {n} items at {size} px into {catalog} ({time.perf_counter() - t0:.1f} s)")
    cat = read_catalog(catalog, check_images=True)
    splits = ", ".join(f"{s} {len(cat.split(s))}" for s in ("train", "val", "test"))
    print(f"      {len(cat)} items ({splits}); attributes: {', '.join(cat.schema.names)}")
    print("done: the catalog is ready. Training, indexing, search and serving join this demo as they land.")
    return 0
