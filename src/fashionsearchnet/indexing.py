"""``fsn index``: embed a catalog with a model and write a searchable index (crash-safe, resumable).

Work is done in chunks; each finished chunk is saved under ``INDEX/building/parts``. A killed run
leaves the live version untouched; ``--resume`` embeds only the chunks still missing. ``--add``
builds a new version holding the current items plus a catalog's new ones (same model only).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import checkpoint as ckpt
from .catalog import read_catalog
from .index.backends import EF_SEARCH, NPROBE
from .index.store import IndexError_, commit_version, current_version, load_index, load_parts, save_part, start_build


def build_index(
    model_dir: str | Path,
    catalog_dir: str | Path,
    out: str | Path,
    backend: str = "faiss",
    kind: str = "flat",
    uri: str | None = None,
    nprobe: int = NPROBE,
    ef_search: int = EF_SEARCH,
    split: str | None = None,
    resume: bool = False,
    add: bool = False,
    batch_size: int = 64,
    chunk: int = 512,
    device: str = "auto",
    progress: Callable | None = None,
    log: Callable[[str], Any] = print,
    _after_part: Callable[[int], None] | None = None,
) -> str:
    """Build (or extend) the index in ``out``; returns the new live version's name."""

    from .data import load_many
    from .device import resolve_device, resolve_precision
    from .embed import embed_batch

    out, model_dir = Path(out), Path(model_dir)
    if backend not in ("faiss", "milvus", "numpy"):
        raise ValueError(f"unknown backend {backend!r}; valid: faiss, milvus, numpy")
    if chunk < 1 or batch_size < 1:
        raise ValueError("--chunk and --batch-size must be positive")
    if nprobe < 1 or ef_search < 1:
        raise ValueError("--nprobe and --ef-search must be positive")
    meta = ckpt.read_meta(model_dir)
    fp = ckpt.fingerprint(model_dir)
    model_file = model_dir / ckpt.MODEL_FILE if model_dir.is_dir() else model_dir
    protos_file = model_file.parent / ckpt.PROTOTYPES_FILE
    if not protos_file.is_file():
        raise FileNotFoundError(f"{protos_file}: missing; the prototypes are written at the end of `fsn train`")
    from .embed import load_prototypes

    _, proto_fp = load_prototypes(protos_file)
    if proto_fp != fp:
        raise IndexError_(f"{protos_file} was computed with model {proto_fp}, not {fp}; retrain or recompute prototypes")
    from .schema import Schema, SchemaError, catalog_columns

    model_schema = Schema.from_dict(meta["schema"])
    cat = read_catalog(catalog_dir)
    try:
        cols = catalog_columns(model_schema, cat.schema)
    except SchemaError as e:
        raise IndexError_(f"catalog {catalog_dir} does not match the model's schema: {e}") from None
    records = cat.split(split)
    base = None
    if add:
        base = load_index(out, backend="numpy")
        if base.model_fingerprint != fp:
            raise IndexError_(f"{out} was built with model {base.model_fingerprint}; --add needs that model, got {fp}")
        clash = sorted(set(r.id for r in records) & set(base.id_to_row))
        if clash:
            raise IndexError_(f"{len(clash)} ids of {catalog_dir} are already in {out}: {', '.join(clash[:5])}")
    if not records:
        raise ValueError(f"{catalog_dir}: no items to index" + (f" in split {split!r}" if split else ""))
    ids = [r.id for r in records]
    signature = {
        "model": fp, "catalog": str(Path(catalog_dir).resolve()), "split": split or "all", "n": len(ids),
        "ids": hashlib.sha1("\n".join(ids).encode()).hexdigest(), "chunk": chunk, "add_to": base.version if base else None,
    }
    bdir, done = start_build(out, signature, resume)
    n_parts = math.ceil(len(records) / chunk)
    todo = [p for p in range(n_parts) if p not in done]
    if resume:
        log(f"resuming: {len(done)} of {n_parts} chunks already embedded")
    if todo:
        dev = resolve_device(device)
        dtype = resolve_precision("auto", dev)
        model, _ = ckpt.load_model(model_file, dev)
        size = model.cfg.image_size
        t0, n_done = time.perf_counter(), 0
        it = progress(todo, desc="indexing", unit="chunk") if progress else todo
        for p in it:
            recs = records[p * chunk : (p + 1) * chunk]
            images = load_many([cat.image_path(r) for r in recs], size)
            embs = [embed_batch(model, images[s : s + batch_size], dev, dtype) for s in range(0, len(recs), batch_size)]
            arrays = {k: np.concatenate([e.arrays()[k] for e in embs]) for k in ("reps", "regions", "pred", "conf", "rois")}
            save_part(bdir, p, arrays)
            n_done += len(recs)
            if _after_part:
                _after_part(p)
        dt = time.perf_counter() - t0
        log(f"embedded {n_done} items in {dt:.1f} s ({n_done / max(dt, 1e-9):.0f} items/s)")
        weights = (model.global_weights().detach().cpu().numpy() ** 2).tolist()
    else:
        weights = None
    parts = load_parts(bdir, n_parts)
    n = len(records)
    reps, regions = parts["reps"], parts["regions"]
    d = reps.shape[2]
    vectors = np.concatenate([reps.reshape(n, -1), regions.reshape(n, -1)], 1).astype(np.float32)
    items = {
        "ids": np.asarray(ids),
        "images": np.asarray([str(cat.image_path(r).resolve()) for r in records]),
        "titles": np.asarray([r.title for r in records]),
        "splits": np.asarray([r.split for r in records]),
        "labels": cat.labels(records)[:, cols].astype(np.int16),
        "pred": parts["pred"].astype(np.int16),
        "conf": parts["conf"].astype(np.float32),
        "rois": parts["rois"].astype(np.float32),
    }
    catalogs = [signature["catalog"]]
    if base is not None:
        vectors = np.concatenate([np.asarray(base.vectors, np.float32), vectors])
        items = {k: np.concatenate([base.items[k], v]) for k, v in items.items()}
        catalogs = list(base.manifest["catalogs"]) + catalogs
        weights = weights or base.manifest["similarity_weights"][: len(model_schema.names)]
        base.close()
    if weights is None:  # nothing left to embed on resume: read the weights without running images
        model, _ = ckpt.load_model(model_file, "cpu")
        weights = (model.global_weights().detach().numpy() ** 2).tolist()
    pairs = model_schema.region_pairs()
    blocks = list(model_schema.names) + [f"{r}:{a}" for r, a in pairs]
    manifest = {
        "model": {"fingerprint": fp, "path": str(model_file.resolve()), "backbone": meta["model_config"]["backbone"]},
        "schema": model_schema.to_dict(),
        "catalogs": catalogs,
        "embed_dim": int(d),
        "blocks": blocks,
        # default similarity weight per block: the model's learned global weights squared
        # (F·F' = Σ w_a² cos_a); region-aware blocks only count when a region edit asks for them
        "similarity_weights": [float(w) for w in weights] + [0.0] * len(pairs),
        "backend": backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    old_milvus = _old_milvus(out)

    def write_backend(vdir: Path, version: str) -> dict[str, Any]:
        from .index.backends import FaissBackend, MilvusBackend

        if backend == "faiss":
            import faiss

            faiss.write_index(FaissBackend.build(vectors, kind), str(vdir / "faiss.index"))
            return {"faiss": {"kind": kind, "rerank": 4, "nprobe": nprobe, "ef_search": ef_search}}
        if backend == "milvus":
            if uri is None or not uri.startswith(("http://", "https://", "tcp://", "unix:")):
                MilvusBackend.build(str(vdir / "milvus.db"), "fsn", vectors)
                return {"milvus": {"uri": "milvus.db", "local": True, "collection": "fsn"}}
            collection = f"fsn_{out.name.replace('-', '_')}_{version}"
            MilvusBackend.build(uri, collection, vectors)
            return {"milvus": {"uri": uri, "local": False, "collection": collection}}
        return {}

    version = commit_version(out, vectors, items, manifest, {"model.safetensors": model_file, "prototypes.safetensors": protos_file}, write_backend)
    if old_milvus:  # collections of replaced versions on a Milvus server
        try:
            from pymilvus import MilvusClient

            c = MilvusClient(old_milvus["uri"])
            if c.has_collection(old_milvus["collection"]):
                c.drop_collection(old_milvus["collection"])
            c.close()
        except Exception as e:  # the new index is live; a stale collection is only wasted space
            log(f"note: could not drop old Milvus collection {old_milvus['collection']}: {e}")
    log(f"index {out} version {version}: {len(vectors)} items, {len(blocks)} blocks × {d} dims, backend {backend}" + (f" ({kind})" if backend == "faiss" else ""))
    return version


def _old_milvus(root: Path) -> dict | None:
    import json

    v = current_version(root)
    if v is None:
        return None
    m = json.loads((root / v / "manifest.json").read_text())
    spec = m.get("milvus")
    return spec if spec and not spec.get("local") else None
