"""Attribute schema: attribute names, ordered value vocabularies and regions. No torch.

A schema is stored as ``schema.json`` beside ``catalog.csv`` and inside every model checkpoint, so a
model always knows which value index means what.

Terms
- attribute: a single-valued property of an item (``neckline``) with an ordered vocabulary
  (``round``, ``v-shape``, ...). Labels are value indices; ``UNKNOWN`` (-1) means not labelled.
- region: a named part of a garment (``sleeve``, ``neck``, ``body``). At search time its extent is the
  region of interest (ROI) of one attribute, ``roi_attribute`` (the sleeve region is where the model
  looks for sleeve length). Ground-truth boxes in a catalog are keyed by region name.
- ``Attribute.region``: the region an attribute describes, used to score localization against
  ground-truth boxes (``sleeve_length`` lives in ``sleeve``).
- ``Attribute.describes``: marks a region-specific attribute as the same property as another one,
  restricted to its region (``sleeve_color`` describes ``color`` in region ``sleeve``). It must share
  that attribute's vocabulary. A region edit ``sleeve:color=red`` resolves to it when present.
- ``Schema.region_aware``: attributes whose branch is also applied inside every region, giving
  region-aware representations (the colour of the sleeves even when no label says so).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

UNKNOWN = -1
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


class SchemaError(ValueError):
    """The schema is malformed, or a name/value does not exist in it."""


@dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]
    region: str | None = None
    describes: str | None = None

    def index(self, value: str) -> int:
        try:
            return self.values.index(value)
        except ValueError:
            raise SchemaError(
                f"unknown value {value!r} for attribute {self.name!r}; valid values: {', '.join(self.values)}"
            ) from None

    @property
    def num_values(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Region:
    name: str
    roi_attribute: str


@dataclass(frozen=True)
class Schema:
    attributes: tuple[Attribute, ...]
    regions: tuple[Region, ...] = ()
    region_aware: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _validate(self)

    # -- lookups -------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def num_values(self) -> tuple[int, ...]:
        return tuple(a.num_values for a in self.attributes)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def attribute(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise SchemaError(f"unknown attribute {name!r}; valid attributes: {', '.join(self.names)}")

    def attribute_index(self, name: str) -> int:
        return self.names.index(self.attribute(name).name)

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        valid = ", ".join(self.region_names) or "(this schema has no regions)"
        raise SchemaError(f"unknown region {name!r}; valid regions: {valid}")

    def region_pairs(self) -> tuple[tuple[str, str], ...]:
        """(region, attribute) pairs that get a region-aware representation, in storage order."""
        return tuple((r.name, a) for r in self.regions for a in self.region_aware)

    def region_label(self, region: str, attribute: str) -> str | None:
        """The labelled attribute that is ``attribute`` restricted to ``region``, if the schema has one."""
        for a in self.attributes:
            if a.region == region and a.describes == attribute:
                return a.name
        return None

    def without(self, names: Iterable[str]) -> "Schema":
        """This schema less the attributes ``names`` (held out: a model trained on it never sees their
        labels, while a catalog keeps them for evaluation). Refuses to drop what the rest depends on."""
        drop = list(dict.fromkeys(n.strip() for n in names if n.strip()))
        for n in drop:
            self.attribute(n)  # unknown names fail here, listing the valid ones
        gone = set(drop)
        for r in self.regions:
            if r.roi_attribute in gone:
                raise SchemaError(f"cannot hold out {r.roi_attribute!r}: region {r.name!r} takes its ROI from it")
        for n in self.region_aware:
            if n in gone:
                raise SchemaError(f"cannot hold out {n!r}: it is region-aware (its branch is applied inside every region)")
        for a in self.attributes:
            if a.describes in gone and a.name not in gone:
                raise SchemaError(f"cannot hold out {a.describes!r} while keeping {a.name!r}, which describes it")
        if len(gone) == len(self.attributes):
            raise SchemaError("cannot hold out every attribute")
        if not gone:
            return self
        prov = dict(self.provenance) | {"held_out": [*self.provenance.get("held_out", []), *drop]}
        return Schema(tuple(a for a in self.attributes if a.name not in gone), self.regions, self.region_aware, prov)

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        attrs = []
        for a in self.attributes:
            d: dict[str, Any] = {"name": a.name, "values": list(a.values)}
            if a.region:
                d["region"] = a.region
            if a.describes:
                d["describes"] = a.describes
            attrs.append(d)
        return {
            "attributes": attrs,
            "regions": [{"name": r.name, "roi_attribute": r.roi_attribute} for r in self.regions],
            "region_aware": list(self.region_aware),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        if not isinstance(d, dict) or "attributes" not in d:
            raise SchemaError("schema must be a JSON object with an 'attributes' list")
        try:
            attrs = tuple(
                Attribute(
                    name=str(a["name"]),
                    values=tuple(str(v) for v in a["values"]),
                    region=a.get("region"),
                    describes=a.get("describes"),
                )
                for a in d["attributes"]
            )
            regions = tuple(Region(str(r["name"]), str(r["roi_attribute"])) for r in d.get("regions", []))
        except (KeyError, TypeError) as e:
            raise SchemaError(f"malformed schema entry: {e!r}") from None
        return cls(attrs, regions, tuple(d.get("region_aware", [])), dict(d.get("provenance", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | Path) -> "Schema":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SchemaError(f"{path}: no such schema file") from None
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except SchemaError as e:
            raise SchemaError(f"{path}: {e}") from None


def _duplicates(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({x for x in items if x in seen or seen.add(x)})


def _validate(s: Schema) -> None:
    if not s.attributes:
        raise SchemaError("schema has no attributes")
    if dup := _duplicates(s.names):
        raise SchemaError(f"duplicate attribute names: {', '.join(dup)}")
    for a in s.attributes:
        if not _NAME.match(a.name):
            raise SchemaError(f"attribute name {a.name!r} must start with a letter and use letters, digits, '_' or '-'")
        if len(a.values) < 2:
            raise SchemaError(f"attribute {a.name!r} needs at least 2 values, has {len(a.values)}")
        if dup := _duplicates(a.values):
            raise SchemaError(f"attribute {a.name!r} has duplicate values: {', '.join(dup)}")
        if any(not v or v != v.strip() for v in a.values):
            raise SchemaError(f"attribute {a.name!r} has an empty or space-padded value name")
    names = set(s.names)
    if dup := _duplicates(s.region_names):
        raise SchemaError(f"duplicate region names: {', '.join(dup)}")
    for r in s.regions:
        if r.roi_attribute not in names:
            raise SchemaError(f"region {r.name!r} takes its ROI from unknown attribute {r.roi_attribute!r}")
    for name in s.region_aware:
        if name not in names:
            raise SchemaError(f"region_aware names unknown attribute {name!r}")
    region_names = set(s.region_names)
    for a in s.attributes:
        if a.describes is not None:
            if a.describes not in names:
                raise SchemaError(f"attribute {a.name!r} describes unknown attribute {a.describes!r}")
            if a.region is None or a.region not in region_names:
                raise SchemaError(f"attribute {a.name!r} describes {a.describes!r} but names no known region")
            if s.attribute(a.describes).values != a.values:
                raise SchemaError(f"attribute {a.name!r} must share the vocabulary of {a.describes!r}")


def catalog_columns(model: Schema, catalog: Schema) -> list[int]:
    """The catalog's label column of each model attribute, in the model's order.

    A model's schema is its catalog's, possibly with attributes held out (``Schema.without``): the
    same names in the same order, each with the same values. Anything else raises ``SchemaError``."""
    cols: list[int] = []
    for a in model.attributes:
        if a.name not in catalog.names:
            raise SchemaError(f"the model's attribute {a.name!r} is not in the catalog (attributes {', '.join(catalog.names)})")
        c = catalog.attribute_index(a.name)
        if catalog.attributes[c].values != a.values:
            raise SchemaError(f"values of {a.name!r}: {list(catalog.attributes[c].values)} vs the model's {list(a.values)}")
        if cols and c < cols[-1]:
            raise SchemaError(f"attribute {a.name!r} comes in another order in the catalog ({', '.join(catalog.names)})")
        cols.append(c)
    if model.region_names != catalog.region_names:
        raise SchemaError(f"regions {list(catalog.region_names)} vs the model's {list(model.region_names)}")
    return cols
