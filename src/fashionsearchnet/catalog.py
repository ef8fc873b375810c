"""The catalog: one record type, one reader, one writer. No torch.

A catalog is a folder::

    catalog.csv   id,image,split,title,<attribute 1>,...,<attribute A>,boxes
    schema.json   attributes with ordered vocabularies, regions, provenance
    images/...    image files; paths in catalog.csv are relative to the folder

- ``split`` is one of train, val, test.
- an attribute cell holds a value name from the schema, or is empty for unknown.
- ``title`` is optional free text; ``boxes`` is optional JSON mapping a region name to a list of
  ``[x0, y0, x1, y1]`` pixel boxes in the image's own coordinates (a region of several parts, like
  two sleeves, has one box per part).

Anything else is an error that names the line and the problem: unknown values, duplicate ids,
paths that escape the folder, bad splits, malformed boxes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

from .schema import UNKNOWN, Schema, SchemaError

SPLITS = ("train", "val", "test")
FIXED_COLUMNS = ("id", "image", "split", "title")
CATALOG_FILE = "catalog.csv"
SCHEMA_FILE = "schema.json"

Box = tuple[float, float, float, float]


class CatalogError(ValueError):
    """The catalog is malformed; the message names the file, line and problem."""


@dataclass(frozen=True)
class Record:
    """One catalog item. ``labels[a]`` is a value index of attribute a, or UNKNOWN (-1)."""

    id: str
    image: str
    split: str
    labels: tuple[int, ...]
    title: str = ""
    boxes: dict[str, tuple[Box, ...]] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Catalog:
    root: Path
    schema: Schema
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def image_path(self, record: Record) -> Path:
        return self.root / record.image

    def split(self, name: str | None) -> list[Record]:
        if name is None or name == "all":
            return list(self.records)
        if name not in SPLITS:
            raise CatalogError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}, all")
        return [r for r in self.records if r.split == name]

    def labels(self, records: Sequence[Record] | None = None):
        """Labels as an int64 array (N, A), UNKNOWN where not labelled."""
        import numpy as np

        recs = self.records if records is None else records
        if not recs:
            return np.zeros((0, len(self.schema.attributes)), dtype=np.int64)
        return np.asarray([r.labels for r in recs], dtype=np.int64)

    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}

    def value_counts(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for a_i, attr in enumerate(self.schema.attributes):
            c: Counter = Counter()
            for r in self.records:
                v = r.labels[a_i]
                c[attr.values[v] if v != UNKNOWN else ""] += 1
            out[attr.name] = c
        return out


# -- reading ------------------------------------------------------------------------------------
def safe_relative_path(path: str) -> str:
    """Return ``path`` normalised to POSIX form, refusing absolute paths and ones escaping the root."""
    if not path:
        raise CatalogError("empty image path")
    p = path.replace("\\", "/")
    pure = PurePosixPath(p)
    if pure.is_absolute() or (len(p) > 1 and p[1] == ":"):
        raise CatalogError(f"image path {path!r} is absolute; it must be relative to the catalog folder")
    parts: list[str] = []
    for part in pure.parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise CatalogError(f"image path {path!r} escapes the catalog folder")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise CatalogError(f"image path {path!r} names the catalog folder itself")
    return "/".join(parts)


def _parse_boxes(text: str) -> dict[str, tuple[Box, ...]]:
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CatalogError(f"boxes is not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CatalogError("boxes must be a JSON object mapping region names to lists of [x0, y0, x1, y1]")
    out: dict[str, tuple[Box, ...]] = {}
    for region, boxes in data.items():
        if not isinstance(boxes, list):
            raise CatalogError(f"boxes of region {region!r} must be a list of [x0, y0, x1, y1]")
        parsed = []
        for b in boxes:
            if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
                raise CatalogError(f"box {b!r} of region {region!r} is not [x0, y0, x1, y1]")
            x0, y0, x1, y1 = (float(v) for v in b)
            if not (x1 > x0 and y1 > y0):
                raise CatalogError(f"box {b!r} of region {region!r} is empty or inverted (need x1 > x0, y1 > y0)")
            parsed.append((x0, y0, x1, y1))
        out[str(region)] = tuple(parsed)
    return out


def read_catalog(root: str | os.PathLike, check_images: bool = False) -> Catalog:
    """Read and validate a catalog folder. With ``check_images`` every image file must exist."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"{root}: no such catalog folder")
    schema_path, csv_path = root / SCHEMA_FILE, root / CATALOG_FILE
    if not csv_path.is_file():
        raise CatalogError(f"{root}: missing {CATALOG_FILE}")
    try:
        schema = Schema.load(schema_path)
    except SchemaError as e:
        raise CatalogError(str(e)) from None
    records = list(_read_rows(csv_path, schema))
    if check_images:
        missing = [r.image for r in records if not (root / r.image).is_file()]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise CatalogError(f"{csv_path}: {len(missing)} image files missing: {', '.join(missing[:5])}{more}")
    return Catalog(root, schema, records)


def _read_rows(csv_path: Path, schema: Schema) -> Iterator[Record]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CatalogError(f"{csv_path}: empty file, expected a header row") from None
        cols = {name: i for i, name in enumerate(header)}
        if len(cols) != len(header):
            raise CatalogError(f"{csv_path}: duplicate column names in header")
        for required in ("id", "image", "split", *schema.names):
            if required not in cols:
                raise CatalogError(f"{csv_path}: header lacks column {required!r} (header: {','.join(header)})")
        known = set(FIXED_COLUMNS) | set(schema.names) | {"boxes"}
        if extra := [c for c in header if c not in known]:
            raise CatalogError(f"{csv_path}: unknown columns {', '.join(extra)}; attributes must be in schema.json")
        seen: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise CatalogError(f"{csv_path}:{line}: {len(row)} fields, header has {len(header)}")
            try:
                rec = _record(row, cols, schema)
            except (CatalogError, SchemaError) as e:
                raise CatalogError(f"{csv_path}:{line}: {e}") from None
            if rec.id in seen:
                raise CatalogError(f"{csv_path}:{line}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
            seen[rec.id] = line
            yield rec


def _record(row: list[str], cols: dict[str, int], schema: Schema) -> Record:
    item_id = row[cols["id"]].strip()
    if not item_id:
        raise CatalogError("empty id")
    split = row[cols["split"]].strip()
    if split not in SPLITS:
        raise CatalogError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    labels = []
    for attr in schema.attributes:
        cell = row[cols[attr.name]].strip()
        labels.append(attr.index(cell) if cell else UNKNOWN)
    boxes = _parse_boxes(row[cols["boxes"]]) if "boxes" in cols else {}
    title = row[cols["title"]] if "title" in cols else ""
    return Record(item_id, safe_relative_path(row[cols["image"]]), split, tuple(labels), title, boxes)


# -- writing ------------------------------------------------------------------------------------
def _box_json(boxes: dict[str, tuple[Box, ...]]) -> str:
    if not boxes:
        return ""
    return json.dumps({k: [[round(v, 2) for v in b] for b in bs] for k, bs in boxes.items()}, separators=(",", ":"))


def write_catalog_files(folder: Path, schema: Schema, records: Iterable[Record]) -> None:
    """Write catalog.csv and schema.json into ``folder`` (which already holds the images)."""
    records = list(records)
    ids = Counter(r.id for r in records)
    if dup := [i for i, n in ids.items() if n > 1]:
        raise CatalogError(f"duplicate ids: {', '.join(sorted(dup)[:5])}")
    has_boxes = any(r.boxes for r in records)
    header = [*FIXED_COLUMNS, *schema.names] + (["boxes"] if has_boxes else [])
    with open(folder / CATALOG_FILE, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in records:
            if r.split not in SPLITS:
                raise CatalogError(f"record {r.id!r}: split {r.split!r} is not one of {', '.join(SPLITS)}")
            cells = [schema.attributes[i].values[v] if v != UNKNOWN else "" for i, v in enumerate(r.labels)]
            row = [r.id, safe_relative_path(r.image), r.split, r.title, *cells]
            if has_boxes:
                row.append(_box_json(r.boxes))
            w.writerow(row)
    (folder / SCHEMA_FILE).write_text(schema.to_json() + "\n", encoding="utf-8")


class StagingDir:
    """Build a folder aside and move it into place only when complete.

    ``with StagingDir(out, overwrite) as tmp: ...write into tmp...`` leaves ``out`` untouched if
    anything fails; on success ``out`` is replaced (the old copy is removed after the switch).
    """

    def __init__(self, target: str | os.PathLike, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        if self.target.exists() and not self.overwrite:
            if not self.target.is_dir() or any(self.target.iterdir()):
                raise FileExistsError(f"{self.target} already exists and is not empty; pass --force to replace it")

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a torn one."""
    atomic_write_bytes(path, text.encode("utf-8"))


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
