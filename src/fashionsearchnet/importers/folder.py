"""A folder with one subfolder per value of a single attribute (``SRC/<value>/<image>``)."""

from __future__ import annotations

import re
from pathlib import Path

from ..schema import Attribute, Schema
from ._common import Candidate, Collected

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def collect(src: str | Path, attribute: str = "label") -> Collected:
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    values = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(values) < 2:
        raise ValueError(f"{src}: need at least 2 subfolders (one per value of {attribute!r}), found {len(values)}")
    sch = Schema((Attribute(attribute, tuple(values)),), provenance={"importer": "folder", "source": str(src)})
    cands, seen = [], set()
    for v_i, v in enumerate(values):
        for f in sorted((src / v).rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(src).parts):
                continue
            ident = _SAFE.sub("_", f"{v}--{f.relative_to(src / v).with_suffix('').as_posix().replace('/', '--')}")
            base, n = ident, 1
            while ident in seen:  # a.jpg and a.png in one folder
                n += 1
                ident = f"{base}-{n}"
            seen.add(ident)
            cands.append(Candidate(ident, f, (v_i,), title=f.name))
    return Collected(sch, cands, notes=[f"{len(values)} values of {attribute!r} from subfolder names"])
