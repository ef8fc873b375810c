"""``fsn demo``: the whole pipeline on the built-in synthetic catalog, saying what each stage did.

synthetic catalog -> training (CPU, about 10 minutes; --quick: about a minute) -> index ->
evaluation report -> an example search -> the web page (unless --no-serve).
Every stage reuses its finished output in the working folder, so a second run starts serving at once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

QUICK = [
    "image_size=64", "conv_channels=32", "hidden=32", "embed_dim=16", "epochs_localization=1", "epochs_attributes=2",
    "epochs_global=1", "frozen_stages=7",
]


def example_query(cat):
    """A test item and a sleeve-colour edit whose exact target (every other label kept) exists in the
    catalog, so the example shows what a region edit should find; (item, edits, target labels)."""
    names = cat.schema.names
    if "sleeve_color" not in names:
        return cat.split("test")[0].id, [], None
    a = names.index("sleeve_color")
    values = cat.schema.attribute("sleeve_color").values
    labels = cat.labels(cat.records)
    test = [i for i, r in enumerate(cat.records) if r.split == "test"]
    body = cat.schema.attribute("color").values if "color" in names else ()
    for contrast in (True, False):  # prefer sleeves of a colour the body does not have
        for i in test[:300]:
            if (labels[i] < 0).any():
                continue
            for v in range(len(values)):
                if v == labels[i, a] or (contrast and body and body[labels[i, names.index("color")]] == values[v]):
                    continue
                t = labels[i].copy()
                t[a] = v
                if (labels == t).all(1).any():
                    return cat.records[i].id, [f"sleeve:color={values[v]}"], t
    return cat.split("test")[0].id, ["sleeve:color=red"], None


def run_demo(args: argparse.Namespace) -> int:
    from .catalog import read_catalog
    from .cli import progress
    from .synthetic import generate

    out: Path = args.out
    n, size = (600, 64) if args.quick else (args.n, args.size)
    catalog, model, index, report = out / "catalog", out / "model", out / "index", out / "report"
    steps = 6 if args.no_serve else 7

    def say(i: int, msg: str) -> None:
        print(f"[{i}/{steps}] {msg}", flush=True)

    t0 = time.perf_counter()
    if (catalog / "catalog.csv").is_file():
        say(1, f"synthetic catalog: reusing {catalog}")
    else:
        generate(catalog, n, size, args.seed, overwrite=True, progress=progress)
        say(1, f"synthetic catalog: drew {n} garments at {size} px into {catalog} ({time.perf_counter() - t0:.0f} s)")
    cat = read_catalog(catalog, check_images=True)
    print(f"      {len(cat)} items; attributes {', '.join(cat.schema.names)}; regions {', '.join(cat.schema.region_names)}")

    t = time.perf_counter()
    if (model / "summary.json").is_file():
        say(2, f"model: reusing {model}")
    else:
        from .train import load_config, train

        cfg = load_config("synthetic", QUICK if args.quick else [])
        say(2, f"training FashionSearchNet ({cfg.backbone}, {cfg.image_size} px) on the train split, selecting on val …")
        train(catalog, model, cfg, force=True, progress=progress)
    summary = json.loads((model / "summary.json").read_text())
    print(f"      best epoch {summary['best_epoch']}: val mean attribute accuracy {summary['val_attr_mean']:.3f} ({time.perf_counter() - t:.0f} s)")

    t = time.perf_counter()
    from .index.store import current_version, load_index

    built_by = None
    if current_version(index) is not None:
        live = load_index(index, backend="numpy")
        built_by = live.model_fingerprint
        live.close()
    if built_by == summary["model"]:
        say(3, f"index: reusing {index}")
    else:
        from .indexing import build_index

        build_index(model, catalog, index, progress=progress)
        say(3, f"indexed {len(cat)} items into {index} ({time.perf_counter() - t:.0f} s)")

    t = time.perf_counter()
    if (report / "report.json").is_file():
        say(4, f"evaluation: reusing {report}")
    else:
        from .evaluate import evaluate, write_report

        rep = evaluate(model, catalog, max_queries=None if not args.quick else 300, progress=progress, log=lambda m: print("      " + m))
        write_report(rep, report, model)
        say(4, f"evaluated on the test split: {report / 'report.md'} ({time.perf_counter() - t:.0f} s)")
    r = json.loads((report / "report.json").read_text())
    for name, p in r["protocols"].items():
        fsn = p["methods"].get("fsn", {}).get("topk")
        if fsn:
            print(f"      {name} manipulation, {p['queries']} queries: FashionSearchNet top-1 {fsn['1']:.3f}, top-30 {fsn['30']:.3f}")
    print(f"      mean attribute accuracy (test) {r['attributes']['fsn']['mean_top1']:.3f}")
    print("      (the no-localization baseline needs a second model: fsn train … localization=false, then fsn evaluate --noloc-model)")

    from .search import Query, Searcher, parse_edit

    s = Searcher.open(index)
    try:
        item, edits, target = example_query(cat)
        resp = s.search(Query(item_id=item, edits=[parse_edit(e) for e in edits], k=5))
        say(5, f"example: fsn search --index {index} --item {item} --set {' --set '.join(edits)} --k 5")
        q = resp.query["predicted"]
        print("      query: " + ", ".join(f"{a}={v['value']}" for a, v in q.items()))
        truth = {r.id: row for r, row in zip(cat.records, cat.labels(cat.records))}
        for res in resp.results:
            mark = "  <- exactly the target (ground truth)" if target is not None and (truth[res.id] == target).all() else ""
            print(f"      {res.rank}. {res.id} score {res.score:.3f}: " + ", ".join(f"{a}={v['value']}" for a, v in res.predicted.items()) + mark)
    finally:
        s.close()
    say(6, f"done in {time.perf_counter() - t0:.0f} s; everything is in {out}/")
    if args.no_serve:
        return 0
    try:
        from .api import serve
    except ImportError as e:
        print(f"      not serving: {e} (pip install 'fashionsearchnet[serve]')")
        return 0
    say(7, f"open http://{args.host}:{args.port}/ in a browser (Ctrl-C stops)")
    serve(index, args.host, args.port)
    return 0
