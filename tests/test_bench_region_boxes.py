"""bench/region_boxes.py: its per-value ROI hits add up to `fsn evaluate`'s localization table, and
bad input stops it with a message."""
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import REPO
from fashionsearchnet.catalog import read_catalog
from fashionsearchnet.synthetic import neckline_box


def _bench():
    spec = importlib.util.spec_from_file_location("region_boxes", REPO / "bench" / "region_boxes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hits_by_value_add_up_to_the_evaluation(trained, synth_small):
    from fashionsearchnet.evaluate import embed_split, localization_table

    rb = _bench()
    cat = read_catalog(synth_small)
    recs = cat.split("val")
    size = json.loads((synth_small / "synth.json").read_text())["size"]
    specs = rb.redraw_specs(recs, 3)  # synth_small's seed
    assert [s.labels() for s in specs] == [r.labels for r in recs]  # the redrawn items are the catalog's
    drawn = [neckline_box(s, size) for s in specs]
    rois, schema = rb.model_rois(trained, cat, recs, size)
    rows = rb.roi_hits_by_value(rois, recs, schema, cat.schema, drawn)
    table = localization_table(schema, embed_split(trained, cat, recs, torch.device("cpu"), 100), cat, recs)
    for name, t in table.items():
        mine = [r for r in rows if r[0] == name]
        assert sum(r[2] for r in mine) == t["items"]
        assert sum(r[3] for r in mine) == round(t["iou50"] * t["items"])
        assert all((r[6] is None) == (name != "neckline") for r in mine)
    neck = [r for r in rows if r[0] == "neckline"]  # the drawn-box hits, against a loop over the items
    col = cat.schema.attribute_index("neckline")
    for _, value, n, _, _, _, drawn_hits in neck:
        v = schema.attributes[schema.attribute_index("neckline")].values.index(value)
        idx = [i for i, r in enumerate(recs) if r.labels[col] == v]
        assert drawn_hits == sum(rb._iou(rois[i, schema.attribute_index("neckline")], drawn[i]) >= 0.5 for i in idx)
    assert np.isfinite([r[4] for r in rows]).all()


def test_main_prints_the_bound_and_refuses_bad_input(trained, synth_small, tmp_path, capsys):
    rb = _bench()
    assert rb.main(["--data", str(synth_small)]) == 0
    out = capsys.readouterr().out
    assert "round" in out and "boat" in out and out.count("\n") >= 6
    with pytest.raises(SystemExit) as e:  # not a catalog fsn synth wrote
        rb.main(["--data", str(tmp_path)])
    assert e.value.code == 2 and "synth.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rb.main(["--data", str(synth_small), "--model", str(tmp_path / "nope")])
    assert e.value.code == 2 and "no model file" in capsys.readouterr().err
    renamed = tmp_path / "renamed"
    shutil.copytree(synth_small, renamed)
    text = (renamed / "catalog.csv").read_text().replace("syn000001,", "item1,")
    (renamed / "catalog.csv").write_text(text)
    with pytest.raises(SystemExit) as e:
        rb.main(["--data", str(renamed), "--split", "train"])
    assert e.value.code == 2 and "item1" in capsys.readouterr().err
