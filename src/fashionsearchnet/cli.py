"""``fsn``: one command line for the whole system. It parses and dispatches only.

Every subcommand imports what it needs inside its handler, so ``fsn --help`` (and any command that
does not touch a model) starts without importing torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__


class UsageError(Exception):
    """A command was called in a way that cannot work; the message says how to fix it."""


def progress(iterable, total: int | None = None, desc: str = "", unit: str = "it"):
    """A progress bar on stderr when it is a terminal; plain iteration otherwise."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)


# -- subcommands ---------------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from .importers import get_importer
    from .importers._common import build_catalog

    module = get_importer(args.format)
    options = {}
    if args.format == "adde":
        options = {"images": args.images, "attribute_names": args.attribute_names, "seed": args.seed}
    elif args.format == "folder":
        options = {"attribute": args.attribute}
    elif args.images or args.attribute_names:
        raise UsageError("--images and --attribute-names apply to the adde format only")
    collected = module.collect(args.src, **options)
    summary = build_catalog(collected, args.out, seed=args.seed, overwrite=args.force, progress=progress)
    print(f"imported {args.format} from {args.src} into {args.out}")
    print(summary.format())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from .synthetic import generate

    t0 = time.perf_counter()
    generate(args.out, args.n, args.size, args.seed, overwrite=args.force, workers=args.workers, progress=progress)
    dt = time.perf_counter() - t0
    print(f"wrote {args.n} synthetic items ({args.size} px, seed {args.seed}) to {args.out} in {dt:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .catalog import read_catalog

    cat = read_catalog(args.catalog, check_images=args.check_images)
    print(f"catalog {cat.root}: {len(cat)} items")
    print("splits: " + ", ".join(f"{s} {len(cat.split(s))}" for s in ("train", "val", "test")))
    for name, counts in cat.value_counts().items():
        unknown = counts.pop("", 0)
        vals = ", ".join(f"{v} {c}" for v, c in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"  {name} (unknown {unknown}): {vals}")
    if cat.schema.regions:
        print("regions: " + ", ".join(f"{r.name} (ROI of {r.roi_attribute})" for r in cat.schema.regions))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsn",
        description="FashionSearchNet: fashion image search with attribute manipulation and localization.",
    )
    p.add_argument("--version", action="version", version=f"fashionsearchnet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    from .importers import FORMATS

    sp = add("import", cmd_import, "import a dataset into the canonical catalog format")
    sp.add_argument("format", choices=list(FORMATS), help="source format: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    sp.add_argument("src", type=Path, help="source dataset folder")
    sp.add_argument("out", type=Path, help="catalog folder to write")
    sp.add_argument("--seed", type=int, default=0, help="seed of the split where the source has none (default 0)")
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    sp.add_argument("--images", type=Path, help="adde: root folder of the images (default: SRC)")
    sp.add_argument("--attribute-names", help="adde: comma-separated attribute names in attr_num.txt order")
    sp.add_argument("--attribute", default="label", help="folder: name of the attribute the subfolders give (default label)")

    sp = add("synth", cmd_synth, "draw a synthetic catalog with ground-truth regions")
    sp.add_argument("out", type=Path, help="catalog folder to write")
    sp.add_argument("--n", type=int, default=3000, help="number of items (default 3000)")
    sp.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")

    sp = add("info", cmd_info, "validate a catalog and print its summary")
    sp.add_argument("catalog", type=Path)
    sp.add_argument("--check-images", action="store_true", help="also check that every image file exists")

    sp = add("demo", cmd_demo, "run the whole pipeline on the built-in synthetic catalog")
    sp.add_argument("--out", type=Path, default=Path("fsn-demo"), help="working folder (default ./fsn-demo)")
    sp.add_argument("--n", type=int, default=3000, help="synthetic items (default 3000)")
    sp.add_argument("--size", type=int, default=128, help="image side (default 128)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--quick", action="store_true", help="a small, fast run (for smoke tests)")
    sp.add_argument("--no-serve", action="store_true", help="do not start the web server at the end")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fsn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fsn info … | head`
        sys.stderr.close()
        return 0
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ImportError) as e:
        print(f"fsn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
