"""Shared machinery of the importers: image checks, copying, splits, the summary, atomic output."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..catalog import Box, Record, StagingDir, write_catalog_files
from ..images import ImageDecodeError, load_image, sniff_format
from ..schema import UNKNOWN, Schema
from ..splits import stratified_splits

REPORT_FILE = "import_report.json"
_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


@dataclass
class Candidate:
    """A labelled item found in the source; its image is checked before it becomes a Record."""

    id: str
    source: Path
    labels: tuple[int, ...]
    split: str | None = None
    title: str = ""
    boxes: dict[str, tuple[Box, ...]] = field(default_factory=dict)
    dest: str | None = None  # path inside the catalog, without extension; default images/<id>


@dataclass
class Collected:
    schema: Schema
    candidates: list[Candidate]
    extra_files: dict[str, Path | bytes] = field(default_factory=dict)  # catalog-relative name -> file or content
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportSummary:
    items: int
    present: int
    missing: list[str]
    bad: list[tuple[str, str]]
    splits: dict[str, int]
    value_counts: dict[str, dict[str, int]]
    unknown: dict[str, int]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "images_present": self.present,
            "images_missing": len(self.missing),
            "images_bad": len(self.bad),
            "missing": self.missing,
            "bad": [{"id": i, "error": e} for i, e in self.bad],
            "splits": self.splits,
            "value_counts": self.value_counts,
            "unknown": self.unknown,
            "notes": self.notes,
        }

    def format(self, max_values: int = 12) -> str:
        lines = [
            f"items labelled in source : {self.items}",
            f"images present (kept)     : {self.present}",
            f"images missing (skipped)  : {len(self.missing)}",
            f"images bad (skipped)      : {len(self.bad)}",
            "splits                    : " + ", ".join(f"{k} {v}" for k, v in self.splits.items()),
            "",
            f"{'attribute':<18} {'unknown':>8}  values (count)",
        ]
        for name, counts in self.value_counts.items():
            items = sorted(counts.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{v} {c}" for v, c in items[:max_values])
            if len(items) > max_values:
                shown += f", … {len(items) - max_values} more"
            lines.append(f"{name:<18} {self.unknown[name]:>8}  {shown}")
        for i, err in self.bad[:10]:
            lines.append(f"bad image {i}: {err}")
        if len(self.bad) > 10:
            lines.append(f"… {len(self.bad) - 10} more bad images, listed in {REPORT_FILE}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _check(c: Candidate) -> tuple[str, str | None]:
    """'ok' + format, 'missing', or 'bad' + error, for one candidate's image."""
    if not c.source.is_file():
        return "missing", None
    try:
        with open(c.source, "rb") as f:
            head = f.read(16)
        load_image(c.source)
    except ImageDecodeError as e:
        return "bad", str(e)
    return "ok", sniff_format(head)


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same file system: no copy, no extra space
    except OSError:
        shutil.copyfile(src, dst)


def build_catalog(
    collected: Collected,
    out: str | os.PathLike,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[Sequence[Any]], Any] | None = None,
    workers: int | None = None,
) -> ImportSummary:
    """Check images, copy the good ones, split, and write the catalog to ``out`` atomically."""
    cands = collected.candidates
    ids = [c.id for c in cands]
    if len(set(ids)) != len(ids):
        raise ValueError("importer produced duplicate ids")
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with StagingDir(out, overwrite) as tmp:
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(_check, cands)
            if progress is not None:
                results = progress(results, total=len(cands), desc="checking images", unit="img")
            results = list(results)
        kept: list[Candidate] = []
        fmts: list[str] = []
        missing, bad = [], []
        for c, (status, info) in zip(cands, results):
            if status == "ok":
                kept.append(c)
                fmts.append(info or "JPEG")
            elif status == "missing":
                missing.append(c.id)
            else:
                bad.append((c.id, info or ""))
        splits = [c.split for c in kept]
        if any(s is None for s in splits):
            labels = np.asarray([c.labels for c in kept], dtype=np.int64).reshape(len(kept), -1)
            auto = stratified_splits(labels, seed=seed)
            splits = [s if s is not None else a for s, a in zip(splits, auto)]
        records = []
        for c, fmt, split in zip(kept, fmts, splits):
            rel = f"{c.dest or 'images/' + c.id}{_EXT[fmt]}"
            _place(c.source, tmp / rel)
            records.append(Record(c.id, rel, split, c.labels, c.title, c.boxes))
        for name, src in collected.extra_files.items():
            if isinstance(src, bytes):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(src)
            else:
                _place(src, tmp / name)
        write_catalog_files(tmp, collected.schema, records)
        summary = _summarise(collected, records, len(cands), missing, bad)
        (tmp / REPORT_FILE).write_text(json.dumps(summary.to_dict(), indent=1) + "\n", encoding="utf-8")
    return summary


def _summarise(collected: Collected, records: list[Record], n: int, missing, bad) -> ImportSummary:
    schema = collected.schema
    value_counts: dict[str, dict[str, int]] = {}
    unknown: dict[str, int] = {}
    labels = np.asarray([r.labels for r in records], dtype=np.int64).reshape(len(records), len(schema.attributes))
    for a, attr in enumerate(schema.attributes):
        col = labels[:, a]
        unknown[attr.name] = int((col == UNKNOWN).sum())
        value_counts[attr.name] = {v: int((col == i).sum()) for i, v in enumerate(attr.values)}
    splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    return ImportSummary(n, len(records), missing, bad, splits, value_counts, unknown, list(collected.notes))


def vocabulary(values: Sequence[str]) -> tuple[str, ...]:
    """Sorted distinct non-empty values (a stable vocabulary for a label column)."""
    return tuple(sorted({v for v in values if v}))


def index_labels(columns: dict[str, Sequence[str]], schema: Schema) -> list[tuple[int, ...]]:
    """Turn per-attribute columns of value names ('' = unknown) into label tuples."""
    lookups = [{v: i for i, v in enumerate(a.values)} for a in schema.attributes]
    cols = [columns[a.name] for a in schema.attributes]
    n = len(cols[0]) if cols else 0
    return [tuple(lk[col[i]] if col[i] else UNKNOWN for lk, col in zip(lookups, cols)) for i in range(n)]
