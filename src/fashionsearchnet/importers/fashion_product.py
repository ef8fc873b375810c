"""Kaggle "Fashion Product Images" (Myntra): ``styles.csv`` plus ``images/<id>.jpg``.

Columns ``id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName``.
In the original file some product names hold unquoted commas, so the name takes the rest of the
line after the ninth comma; CSV-quoted names (doubled quotes inside) are unquoted. Rows whose image
is absent are counted and skipped by the shared builder.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..schema import Attribute, Schema
from ._common import Candidate, Collected, index_labels, vocabulary

HEADER = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage", "productDisplayName")
ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
UNKNOWN_TOKENS = {"", "NA", "nan", "None"}


def parse_line(line: str, lineno: int) -> dict[str, str]:
    """Split one data line of styles.csv, letting the last column take the rest of the line."""
    if line.startswith('"'):  # a fully quoted row: plain CSV
        fields = next(csv.reader([line]))
        if len(fields) > len(HEADER):
            fields = fields[: len(HEADER) - 1] + [",".join(fields[len(HEADER) - 1 :])]
    else:
        fields = line.split(",", len(HEADER) - 1)
        if len(fields) == len(HEADER):
            name = fields[-1]
            if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
                name = next(csv.reader([name]))[0]
            fields[-1] = name
    if len(fields) != len(HEADER):
        raise ValueError(f"styles.csv:{lineno}: {len(fields)} fields, expected {len(HEADER)}")
    return dict(zip(HEADER, (f.strip() for f in fields)))


def read_styles(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected styles.csv beside images/)")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if not lines or tuple(h.strip() for h in lines[0].split(",")) != HEADER:
        raise ValueError(f"{path}: header must be {','.join(HEADER)}")
    rows = []
    seen: set[str] = set()
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        row = parse_line(line, n)
        if not row["id"].isdigit():
            raise ValueError(f"{path}:{n}: id {row['id']!r} is not a number")
        if row["id"] in seen:
            raise ValueError(f"{path}:{n}: duplicate id {row['id']}")
        seen.add(row["id"])
        rows.append(row)
    return rows


def collect(src: str | Path) -> Collected:
    src = Path(src)
    rows = read_styles(src / "styles.csv")
    images = src / "images"
    present = [r for r in rows if (images / f"{r['id']}.jpg").is_file()]

    def clean(v: str) -> str:
        return "" if v in UNKNOWN_TOKENS else v

    # vocabularies from the items we can use, so every value has images behind it
    columns = {a: [clean(r[a]) for r in rows] for a in ATTRIBUTES}
    vocab = {a: vocabulary([clean(r[a]) for r in present]) for a in ATTRIBUTES}
    sch = Schema(
        tuple(Attribute(a, vocab[a]) for a in ATTRIBUTES if len(vocab[a]) >= 2),
        provenance={"dataset": "Fashion Product Images (Kaggle, Myntra)", "importer": "fashion-product"},
    )
    for a in sch.names:  # a value never seen with an image is unknown for the items lacking one anyway
        allowed = set(vocab[a])
        columns[a] = [v if v in allowed else "" for v in columns[a]]
    labels = index_labels(columns, sch)
    cands = [
        Candidate(id=r["id"], source=images / f"{r['id']}.jpg", labels=lab, title=r["productDisplayName"])
        for r, lab in zip(rows, labels)
    ]
    notes = [f"{len(rows)} rows in styles.csv; items without an image file are counted as missing"]
    return Collected(sch, cands, notes=notes)
