import json

import pytest

from fashionsearchnet.catalog import CatalogError, Record, read_catalog, safe_relative_path, write_catalog_files
from fashionsearchnet.schema import UNKNOWN, Attribute, Region, Schema, SchemaError


def _schema():
    return Schema(
        (Attribute("color", ("red", "blue")), Attribute("neckline", ("round", "v")), Attribute("sleeve_color", ("red", "blue"), region="sleeve", describes="color")),
        regions=(Region("sleeve", "neckline"),),
        region_aware=("color",),
    )


def _write(tmp_path, rows, header="id,image,split,title,color,neckline,sleeve_color", schema=None):
    (tmp_path / "schema.json").write_text((schema or _schema()).to_json())
    (tmp_path / "catalog.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path


def test_schema_roundtrip_and_lookups():
    s = _schema()
    assert Schema.from_dict(json.loads(s.to_json())) == s
    assert s.attribute_index("neckline") == 1
    assert s.region_label("sleeve", "color") == "sleeve_color"
    assert s.region_pairs() == (("sleeve", "color"),)
    with pytest.raises(SchemaError, match="valid attributes: color, neckline, sleeve_color"):
        s.attribute("colour")
    with pytest.raises(SchemaError, match="valid values: red, blue"):
        s.attribute("color").index("green")
    with pytest.raises(SchemaError, match="valid regions: sleeve"):
        s.region("collar")


@pytest.mark.parametrize(
    "attrs, match",
    [
        ((Attribute("a", ("x",)),), "at least 2 values"),
        ((Attribute("a", ("x", "x")),), "duplicate values"),
        ((Attribute("a", ("x", "y")), Attribute("a", ("x", "y"))), "duplicate attribute"),
        ((Attribute("1a", ("x", "y")),), "must start with a letter"),
        ((Attribute("a", ("x", "y")), Attribute("b", ("x", "z"), region="r", describes="a")), "vocabulary"),
    ],
)
def test_schema_validation(attrs, match):
    with pytest.raises(SchemaError, match=match):
        Schema(attrs, regions=(Region("r", "a"),))


def test_read_valid_catalog(tmp_path):
    _write(tmp_path, ["i1,images/a.jpg,train,A shirt,red,round,blue", "i2,./images/../images/b.jpg,test,,blue,,"])
    cat = read_catalog(tmp_path)
    assert [r.id for r in cat] == ["i1", "i2"]
    assert cat.records[0].labels == (0, 0, 1)
    assert cat.records[1].labels == (1, UNKNOWN, UNKNOWN)
    assert cat.records[1].image == "images/b.jpg"
    assert cat.labels().shape == (2, 3)
    assert [r.id for r in cat.split("test")] == ["i2"]


@pytest.mark.parametrize(
    "row, match",
    [
        ("i1,a.jpg,train,,green,round,red", r"catalog.csv:2: unknown value 'green' for attribute 'color'; valid values: red, blue"),
        ("i1,../a.jpg,train,,red,round,red", "escapes the catalog folder"),
        ("i1,/etc/passwd,train,,red,round,red", "is absolute"),
        ("i1,a.jpg,training,,red,round,red", "split 'training' is not one of train, val, test"),
        ("i1,a.jpg,train,,red,round", "6 fields, header has 7"),
        (",a.jpg,train,,red,round,red", "empty id"),
    ],
)
def test_catalog_validation_errors(tmp_path, row, match):
    _write(tmp_path, [row])
    with pytest.raises(CatalogError, match=match):
        read_catalog(tmp_path)


def test_duplicate_ids_name_both_lines(tmp_path):
    _write(tmp_path, ["i1,a.jpg,train,,red,round,red", "i2,b.jpg,train,,red,round,red", "i1,c.jpg,val,,red,round,red"])
    with pytest.raises(CatalogError, match=r":4: duplicate id 'i1' \(first on line 2\)"):
        read_catalog(tmp_path)


def test_header_and_boxes_errors(tmp_path):
    _write(tmp_path, ["i1,a.jpg,train,,red,round"], header="id,image,split,title,color,neckline")
    with pytest.raises(CatalogError, match="lacks column 'sleeve_color'"):
        read_catalog(tmp_path)
    _write(tmp_path, ['i1,a.jpg,train,,red,round,red,"{""sleeve"": [[1,2,1,5]]}"'], header="id,image,split,title,color,neckline,sleeve_color,boxes")
    with pytest.raises(CatalogError, match="empty or inverted"):
        read_catalog(tmp_path)
    _write(tmp_path, ["i1,a.jpg,train,,red,round,red,oops"], header="id,image,split,title,color,neckline,sleeve_color,boxes")
    with pytest.raises(CatalogError, match="boxes is not valid JSON"):
        read_catalog(tmp_path)
    _write(tmp_path, ["i1,a.jpg,train,,red,round,red,x"], header="id,image,split,title,color,neckline,sleeve_color,extra")
    with pytest.raises(CatalogError, match="unknown columns extra"):
        read_catalog(tmp_path)


def test_missing_files_and_images(tmp_path):
    with pytest.raises(CatalogError, match="no such catalog folder"):
        read_catalog(tmp_path / "nope")
    (tmp_path / "schema.json").write_text(_schema().to_json())
    with pytest.raises(CatalogError, match="missing catalog.csv"):
        read_catalog(tmp_path)
    _write(tmp_path, ["i1,images/a.jpg,train,,red,round,red"])
    with pytest.raises(CatalogError, match="1 image files missing: images/a.jpg"):
        read_catalog(tmp_path, check_images=True)


def test_write_read_roundtrip_with_boxes(tmp_path):
    s = _schema()
    recs = [
        Record("a", "images/a.jpg", "train", (0, 1, UNKNOWN), "t, with comma", {"sleeve": ((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.5, 8.25))}),
        Record("b", "images/b.jpg", "val", (1, UNKNOWN, 0)),
    ]
    write_catalog_files(tmp_path, s, recs)
    cat = read_catalog(tmp_path)
    assert cat.records == recs
    assert cat.records[0].boxes == recs[0].boxes
    assert cat.records[0].title == "t, with comma"


def test_safe_relative_path():
    assert safe_relative_path("a/./b/../c.jpg") == "a/c.jpg"
    assert safe_relative_path("a\\b.jpg") == "a/b.jpg"
    for bad in ("", "..", "a/../../b", "/abs", "C:/x.jpg", "."):
        with pytest.raises(CatalogError):
            safe_relative_path(bad)


def _regional_schema():
    from fashionsearchnet.synthetic import schema

    return schema()  # sleeve_color describes color in the sleeve region; sleeve_length gives its ROI


def test_schema_without_held_out_attributes():
    from fashionsearchnet.schema import catalog_columns

    full = _regional_schema()
    sub = full.without(["sleeve_color", " "])
    assert sub.names == ("category", "color", "pattern", "sleeve_length", "neckline")
    assert sub.regions == full.regions and sub.region_aware == full.region_aware
    assert sub.provenance["held_out"] == ["sleeve_color"]
    assert sub.region_label("sleeve", "color") is None  # a sleeve colour edit now goes through the colour branch
    assert catalog_columns(sub, full) == [0, 1, 2, 3, 5]
    assert catalog_columns(full, full) == list(range(6))
    assert full.without([]) is full and full.without(",".split(",")) is full
    with pytest.raises(SchemaError, match="unknown attribute 'collar'"):
        full.without(["collar"])
    with pytest.raises(SchemaError, match="region 'sleeve' takes its ROI from it"):
        full.without(["sleeve_length"])
    with pytest.raises(SchemaError, match="region 'body' takes its ROI from it"):
        full.without(["color", "sleeve_color"])
    aware = Schema((Attribute("shape", ("a", "b")), Attribute("tint", ("x", "y"))), (Region("top", "shape"),), ("tint",))
    with pytest.raises(SchemaError, match="cannot hold out 'tint': it is region-aware"):
        aware.without(["tint"])
    with pytest.raises(SchemaError, match="every attribute"):
        Schema((Attribute("shape", ("a", "b")), Attribute("tint", ("x", "y")))).without(["shape", "tint"])
    described = Schema((Attribute("shape", ("a", "b")), Attribute("tint", ("x", "y")), Attribute("top_tint", ("x", "y"), region="top", describes="tint")),
                       (Region("top", "shape"),))
    with pytest.raises(SchemaError, match="cannot hold out 'tint' while keeping 'top_tint', which describes it"):
        described.without(["tint"])
    assert described.without(["tint", "top_tint"]).names == ("shape",)


def test_catalog_columns_refuses_another_schema():
    import dataclasses

    from fashionsearchnet.schema import catalog_columns

    full = _regional_schema()
    sub = full.without(["pattern"])
    with pytest.raises(SchemaError, match="'pattern' is not in the catalog"):
        catalog_columns(full, sub)
    other = dataclasses.replace(full.attributes[5], values=("round", "v-neck", "square"))
    with pytest.raises(SchemaError, match="values of 'neckline'"):
        catalog_columns(Schema(full.attributes[:5] + (other,), full.regions, full.region_aware), full)
    swapped = Schema((full.attributes[1], full.attributes[0], *full.attributes[2:]), full.regions, full.region_aware)
    with pytest.raises(SchemaError, match="another order"):
        catalog_columns(swapped, full)
    with pytest.raises(SchemaError, match="regions"):
        catalog_columns(Schema(full.attributes, full.regions[:2], full.region_aware), full)
