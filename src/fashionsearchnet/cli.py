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


def cmd_train(args: argparse.Namespace) -> int:
    from .train import load_config, train

    if args.resume and (args.config or args.overrides):
        raise UsageError("--resume continues with the run's stored configuration; drop --config and key=value overrides")
    if args.resume:
        import json

        stored = json.loads((args.out / "run_config.json").read_text()) if (args.out / "run_config.json").is_file() else None
        if stored is None:
            raise FileNotFoundError(f"{args.out}: nothing to resume (no run_config.json)")
        stored.pop("data", None)
        cfg = load_config(None, [f"{k}={v}" for k, v in stored.items()])
    else:
        cfg = load_config(args.config, args.overrides)
    train(args.data, args.out, cfg, resume=args.resume, force=args.force, progress=progress)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .indexing import build_index

    if args.model is None:
        raise UsageError("--model RUN is required")
    build_index(args.model, args.data, args.out, backend=args.backend, kind=args.kind, uri=args.uri, split=args.split,
                nprobe=args.nprobe, ef_search=args.ef_search,
                resume=args.resume, add=args.add, batch_size=args.batch_size, chunk=args.chunk, device=args.device, progress=progress)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from .search import Query, Searcher, parse_edit

    if (args.item is None) == (args.image is None):
        raise UsageError("give exactly one of --item ID or --image PATH")
    edits = [parse_edit(e) for e in args.set]
    filters = {}
    for f in args.filter:
        if "=" not in f:
            raise UsageError(f"--filter {f!r} must look like attribute=value")
        k, v = f.split("=", 1)
        filters[k.strip()] = v.strip()
    searcher = Searcher.open(args.index, model=args.model, backend=args.backend)
    try:
        image = None
        if args.image is not None:
            from .images import load_image

            image = load_image(args.image)
        q = Query(item_id=args.item, image=image, edits=edits, filters=filters, k=args.k, offset=args.offset, extra_weight=args.extra_weight)
        resp = searcher.search(q)
    finally:
        searcher.close()
    if args.json:
        print(json.dumps(resp.to_dict(), indent=1))
        return 0
    qi = resp.query
    print(f"query {qi['id'] or args.image}: " + ", ".join(f"{a}={p['value']} ({p['confidence']:.2f})" for a, p in qi["predicted"].items()))
    if qi["edits"]:
        print("edits: " + ", ".join(e["edit"] for e in qi["edits"]) + f" -> blocks {', '.join(qi['changed_blocks'])}")
    for r in resp.results:
        top = ", ".join(f"{b} {v:+.2f}" for b, v in sorted(r.breakdown.items(), key=lambda kv: -abs(kv[1]))[:4])
        attrs = ", ".join(f"{a}={p['value']}" for a, p in r.predicted.items())
        print(f"{r.rank:>3}. {r.id:<14} score {r.score:.4f}  [{attrs}]  ({top})")
    print(f"{len(resp.results)} of {resp.total} items shown")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate, public, write_report

    log = (lambda m: print(m, file=sys.stderr)) if args.json else print  # stdout carries only the JSON
    report = evaluate(args.model, args.data, split=args.split, noloc_model=args.noloc_model, max_queries=args.max_queries,
                      seed=args.seed, extra_weight=args.extra_weight, device=args.device, progress=progress, log=log)
    if args.out:
        files = write_report(report, args.out, args.model, figures=not args.no_figures)
        log("wrote " + ", ".join(str(f) for f in files))
    if args.json:
        print(json.dumps(public(report), indent=1))
    elif not args.out:
        from .report import markdown

        print(markdown(public(report), []))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .api import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: the API is reachable from other machines", file=sys.stderr)
    serve(args.index, args.host, args.port, args.model, args.max_body_mb, args.timeout)
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

    sp = add("train", cmd_train, "train a FashionSearchNet model on a catalog")
    sp.add_argument("--data", type=Path, required=True, help="catalog folder (uses its train and val splits)")
    sp.add_argument("--out", type=Path, required=True, help="run folder to write")
    sp.add_argument("--config", help="a TOML file, or a packaged config: synthetic, cad, fashion-product, paper-alexnet")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. epochs_global=2 localization=false")
    sp.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    sp.add_argument("--force", action="store_true", help="start over in a folder that holds a run")

    sp = add("index", cmd_index, "embed a catalog with a trained model into a searchable index")
    sp.add_argument("--model", type=Path, help="run folder (or model.safetensors) of a trained model")
    sp.add_argument("--data", type=Path, required=True, help="catalog to index")
    sp.add_argument("--out", type=Path, required=True, help="index folder")
    sp.add_argument("--backend", default="faiss", choices=["faiss", "milvus", "numpy"], help="vector engine (default faiss)")
    sp.add_argument("--kind", default="flat", choices=["flat", "ivf", "hnsw"], help="FAISS index kind (default flat: exact)")
    sp.add_argument("--ef-search", type=int, default=256,
                    help="HNSW search depth (default 256: recall@30 0.99 at 100k items; use 512 at 1M, see bench/search_latency.py)")
    sp.add_argument("--nprobe", type=int, default=16, help="IVF lists probed per query (default 16)")
    sp.add_argument("--uri", help="Milvus URI: a server (http://host:19530) or, by default, a milvus-lite file inside the index")
    sp.add_argument("--split", choices=["train", "val", "test"], help="index one split only (default: all items)")
    sp.add_argument("--resume", action="store_true", help="continue an interrupted build")
    sp.add_argument("--add", action="store_true", help="add the catalog's items to the existing index")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--chunk", type=int, default=512, help="items per saved chunk (the unit of --resume)")
    sp.add_argument("--device", default="auto")

    sp = add("search", cmd_search, "search an index: similar items, attribute and region edits")
    sp.add_argument("--index", type=Path, required=True)
    sp.add_argument("--item", help="query by catalog item id")
    sp.add_argument("--image", type=Path, help="query by an image file")
    sp.add_argument("--set", action="append", default=[], metavar="[REGION:]ATTR=VALUE", help="change an attribute (repeatable): neckline=v-neck, sleeve:color=red")
    sp.add_argument("--filter", action="append", default=[], metavar="ATTR=VALUE", help="keep only items predicted to have this value (repeatable)")
    sp.add_argument("--k", type=int, default=10)
    sp.add_argument("--offset", type=int, default=0)
    sp.add_argument("--extra-weight", type=float, default=1.0, help="extra weight on changed attributes (default 1: doubled)")
    sp.add_argument("--model", type=Path, help="check that the index was built with this model")
    sp.add_argument("--backend", choices=["faiss", "milvus", "numpy"], help="override the index's backend (numpy: brute force)")
    sp.add_argument("--json", action="store_true", help="print the full response as JSON")

    sp = add("evaluate", cmd_evaluate, "benchmark protocol, baselines and reports on a catalog's test split")
    sp.add_argument("--model", type=Path, required=True, help="run folder of the FashionSearchNet model")
    sp.add_argument("--data", type=Path, required=True)
    sp.add_argument("--split", default="test", choices=["train", "val", "test"])
    sp.add_argument("--noloc-model", type=Path, help="the same setup trained with localization=false (baseline)")
    sp.add_argument("--max-queries", type=int, help="a reproducible sample of the protocol's queries")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--extra-weight", type=float, default=1.0)
    sp.add_argument("--out", type=Path, help="report folder: report.json, report.md, PNG figures")
    sp.add_argument("--no-figures", action="store_true")
    sp.add_argument("--json", action="store_true", help="print the JSON report")
    sp.add_argument("--device", default="auto")

    sp = add("serve", cmd_serve, "serve the web page and the HTTP API for an index")
    sp.add_argument("--index", type=Path, required=True)
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--model", type=Path, help="refuse to start unless the index was built with this model")
    sp.add_argument("--max-body-mb", type=float, default=8.0, help="largest accepted request body (default 8 MB)")
    sp.add_argument("--timeout", type=float, default=20.0, help="per-request time limit in seconds (default 20)")

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
