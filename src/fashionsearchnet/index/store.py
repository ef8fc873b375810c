"""The on-disk index: versioned, built aside, switched atomically.

::

    INDEX/
      CURRENT              the name of the live version ("v000003"), replaced atomically
      v000003/
        manifest.json      written last inside the version: what built it, what it holds
        vectors.npy        (N, B·D) float32: per item the B = A + P unit blocks (attributes, then regions)
        items.npz          ids, images, titles, splits, labels, predicted values, confidences, ROIs
        model.safetensors  the model that built it (image queries; the fingerprint check)
        prototypes.safetensors
        faiss.index | milvus.db
      building/            an unfinished build: parts/part-NNNNNN.npz + progress.json (for --resume)

A reader follows CURRENT to a complete version; a build writes a new version folder under a
temporary name, renames it into place, then replaces CURRENT. A process killed at any moment leaves
the previous version live and loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import atomic_write_bytes, atomic_write_text
from ..schema import Schema
from .backends import VectorBackend, open_backend

CURRENT = "CURRENT"
BUILDING = "building"
MANIFEST = "manifest.json"
FORMAT = 1
_VERSION = re.compile(r"^v(\d{6})$")


class IndexError_(ValueError):
    """The index folder is missing, incomplete, or was built for something else."""


@dataclass
class LoadedIndex:
    root: Path
    version: str
    manifest: dict[str, Any]
    schema: Schema
    vectors: np.ndarray  # (N, B·D) float32, memory-mapped
    items: dict[str, np.ndarray]
    backend: VectorBackend
    id_to_row: dict[str, int] = field(default_factory=dict)

    @property
    def version_dir(self) -> Path:
        return self.root / self.version

    @property
    def model_fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def blocks(self) -> list[str]:
        return list(self.manifest["blocks"])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def block_vectors(self, rows) -> np.ndarray:
        """(len(rows), B, D) unit blocks of the given rows."""
        v = np.asarray(self.vectors[rows], np.float32)
        return v.reshape(len(v), len(self.blocks), self.embed_dim)

    def close(self) -> None:
        self.backend.close()


def versions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)) if root.is_dir() else []


def current_version(root: Path) -> str | None:
    try:
        v = (root / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return v if _VERSION.match(v) and (root / v / MANIFEST).is_file() else None


def load_index(root: str | os.PathLike, backend: str | None = None) -> LoadedIndex:
    root = Path(root)
    if not root.is_dir():
        raise IndexError_(f"{root}: no such index folder (build one with `fsn index`)")
    version = current_version(root)
    if version is None:
        hint = " (a build was interrupted: run `fsn index … --resume`)" if (root / BUILDING).exists() else ""
        raise IndexError_(f"{root}: not a complete index, no live version{hint}")
    vdir = root / version
    manifest = json.loads((vdir / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise IndexError_(f"{vdir}: index format {manifest.get('format')} is not supported (expected {FORMAT})")
    vectors = np.load(vdir / "vectors.npy", mmap_mode="r")
    with np.load(vdir / "items.npz", allow_pickle=False) as z:
        items = {k: z[k] for k in z.files}
    n = int(manifest["count"])
    if vectors.shape[0] != n or any(len(v) != n for v in items.values()):
        raise IndexError_(f"{vdir}: inconsistent index (manifest says {n} items, arrays disagree)")
    name = backend or manifest["backend"]
    be = open_backend(name, vdir, vectors, manifest)
    ids = items["ids"]
    return LoadedIndex(root, version, manifest, Schema.from_dict(manifest["schema"]), vectors, items, be, {str(i): r for r, i in enumerate(ids)})


# -- building ------------------------------------------------------------------------------------
def building_dir(root: Path) -> Path:
    return root / BUILDING


def start_build(root: Path, progress: dict[str, Any], resume: bool) -> tuple[Path, set[int]]:
    """Prepare ``building/``; on resume check it belongs to the same job and return finished parts."""
    root.mkdir(parents=True, exist_ok=True)
    b = building_dir(root)
    if resume and (b / "progress.json").is_file():
        old = json.loads((b / "progress.json").read_text(encoding="utf-8"))
        if old != progress:
            diff = sorted(k for k in set(old) | set(progress) if old.get(k) != progress.get(k))
            raise IndexError_(f"{b}: the interrupted build was a different job (differs in {', '.join(diff)}); run without --resume to start over")
        done = {int(m.group(1)) for p in (b / "parts").glob("part-*.npz") if (m := re.match(r"part-(\d{6})\.npz$", p.name))}
        return b, done
    if resume:
        raise IndexError_(f"{root}: no interrupted build to resume")
    shutil.rmtree(b, ignore_errors=True)
    (b / "parts").mkdir(parents=True)
    atomic_write_text(b / "progress.json", json.dumps(progress, indent=1))
    return b, set()


def save_part(b: Path, part: int, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(b / "parts" / f"part-{part:06d}.npz", buf.getvalue())


def load_parts(b: Path, n_parts: int) -> dict[str, np.ndarray]:
    parts = []
    for p in range(n_parts):
        with np.load(b / "parts" / f"part-{p:06d}.npz", allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def next_version(root: Path) -> str:
    nums = [int(_VERSION.match(v).group(1)) for v in versions(root)]
    for p in root.glob(".v*.tmp"):
        if m := re.match(r"^\.v(\d{6})\.tmp$", p.name):
            nums.append(int(m.group(1)))
    return f"v{max(nums, default=0) + 1:06d}"


def commit_version(root: Path, vectors: np.ndarray, items: dict[str, np.ndarray], manifest: dict[str, Any], files: dict[str, Path], build_backend) -> str:
    """Write a complete version aside, rename it into place, switch CURRENT, clean up."""
    version = next_version(root)
    tmp = root / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors, np.float32))
    np.savez(tmp / "items.npz", **items)
    for name, src in files.items():
        try:
            os.link(src, tmp / name)
        except OSError:
            shutil.copyfile(src, tmp / name)
    manifest = dict(manifest, format=FORMAT, version=version, count=int(vectors.shape[0]))
    manifest.update(build_backend(tmp, version) or {})
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
    os.replace(tmp, root / version)
    atomic_write_text(root / CURRENT, version + "\n")
    for v in versions(root):
        if v != version:
            shutil.rmtree(root / v, ignore_errors=True)
    for p in root.glob(".v*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(building_dir(root), ignore_errors=True)
    return version
