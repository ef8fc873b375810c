import json
import math

import numpy as np
import pytest

from fashionsearchnet.cli import main
from fashionsearchnet.metrics import (
    attribute_accuracy, exact_match, iou_hits, manipulation_queries, ndcg, pointing_hits, relevance, topk_accuracy,
)


def brute_force_queries(labels, num_values):
    out = set()
    for i, row in enumerate(labels):
        for a in range(labels.shape[1]):
            if row[a] < 0:
                continue
            for v in range(num_values[a]):
                if v == row[a]:
                    continue
                t = list(row)
                t[a] = v
                if any(all(g[j] == t[j] for j in range(len(t))) for g in labels):
                    out.add((i, a, v, tuple(int(x) for x in t)))
    return out


def test_query_generation_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, size=(60, 3))
    labels[:, 2] = rng.integers(0, 2, size=60)
    got = {(q.row, q.attribute, q.value, q.target) for q in manipulation_queries(labels, (3, 3, 2))}
    assert got == brute_force_queries(labels, (3, 3, 2))
    assert got  # the case is not vacuous
    sample = manipulation_queries(labels, (3, 3, 2), max_queries=5, seed=1)
    assert len(sample) == 5 and sample == manipulation_queries(labels, (3, 3, 2), max_queries=5, seed=1)


def test_query_with_no_valid_target_and_unknown_value():
    labels = np.asarray([[0, 0], [1, 1], [0, -1]])
    qs = manipulation_queries(labels, (2, 2))
    # (0,0)->(1,0)? absent. (0,0)->(0,1)? absent. item 2 has an unknown second value: it cannot change it,
    # and (1,-1) is absent. No query anywhere.
    assert qs == []
    labels = np.asarray([[0, -1], [1, -1]])
    qs = manipulation_queries(labels, (2, 2))
    assert {(q.row, q.target) for q in qs} == {(0, (1, -1)), (1, (0, -1))}  # unknowns are part of the target


def test_exact_match_topk_and_ties():
    gallery = np.asarray([[0, 1], [1, 1], [1, -1], [0, 0]])
    ranked = np.asarray([[3, 1, 0], [2, 0, -1], [0, 3, 2]])
    targets = np.asarray([[1, 1], [1, -1], [1, 0]])
    m = exact_match(gallery, ranked, targets)
    assert m.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    acc = topk_accuracy(m, ks=(1, 2, 3))
    assert acc == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}
    # two hits for one query count once
    assert topk_accuracy(np.asarray([[True, True]]), ks=(2,)) == {2: 1.0}
    assert math.isnan(topk_accuracy(np.zeros((0, 3), bool), ks=(1,))[1])


def test_ndcg_by_hand():
    gallery = np.asarray([[0, 0], [0, 1], [1, 1]])
    ranked = np.asarray([[0, 1, 2, -1]])
    rel = relevance(gallery, ranked, np.asarray([[0, 0]]))
    assert rel.tolist() == [[1.0, 0.5, 0.0, 0.0]]
    disc = [1 / math.log2(i + 2) for i in range(4)]
    want = (1 * disc[0] + (2**0.5 - 1) * disc[1]) / sum(disc)
    assert ndcg(rel, k=4) == pytest.approx(want)
    assert ndcg(np.ones((2, 30))) == pytest.approx(1.0)


def test_attribute_accuracy_and_localization_hits():
    labels = np.asarray([0, 1, 2, -1])
    assert attribute_accuracy(np.asarray([0, 1, 0, 2]), labels) == pytest.approx(2 / 3)
    scores = np.asarray([[0.9, 0.1, 0.0], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [1, 0, 0]])
    assert attribute_accuracy(scores, labels, top=1) == pytest.approx(2 / 3)
    assert attribute_accuracy(scores, labels, top=2) == pytest.approx(1.0)
    boxes = np.asarray([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    gts = [[(0.6, 0.6, 1.0, 1.0), (0.0, 0.0, 0.5, 0.6)], [(0.0, 0.0, 0.2, 0.2)]]
    assert iou_hits(boxes, gts).tolist() == [True, False]  # best-matching part counts
    assert pointing_hits(np.asarray([[0.7, 0.7], [0.5, 0.5]]), gts).tolist() == [True, False]


def dense_copy(synth_small, tmp_path):
    """The small catalog with only sleeve_color and neckline known: a 24-item test split then holds
    items one edit apart, so both protocols have queries."""
    import csv
    import shutil

    cat = tmp_path / "dense"
    shutil.copytree(synth_small, cat)
    rows = list(csv.DictReader(open(cat / "catalog.csv")))
    for r in rows:
        for a in ("category", "color", "pattern", "sleeve_length"):
            r[a] = ""
    with open(cat / "catalog.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return cat


def test_evaluate_cli_report_schema(trained, synth_small, tmp_path, capsys):
    synth_small = dense_copy(synth_small, tmp_path)
    out = tmp_path / "rep"
    assert main(["evaluate", "--model", str(trained), "--data", str(synth_small), "--out", str(out), "--max-queries", "40", "--noloc-model", str(trained)]) == 2
    assert "trained with localization" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(trained), "--data", str(synth_small), "--out", str(out), "--max-queries", "40"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert set(r) == {"schema_version", "model", "noloc_model", "data", "split", "gallery", "settings", "protocols", "attributes", "localization", "seconds"}
    assert r["schema_version"] == 1 and r["split"] == "test"
    assert set(r["protocols"]) == {"global", "region"}
    for p in r["protocols"].values():
        assert 0 < p["queries"] <= 40
        assert set(p["methods"]) == {"fsn", "fsn_noloc", "attribute_only", "global_feature"}
        for m in ("fsn", "attribute_only", "global_feature"):
            v = p["methods"][m]
            assert set(v) == {"queries", "topk", "ndcg30"} and list(v["topk"]) == ["1", "5", "10", "20", "30", "50"]
            assert all(0 <= x <= 1 for x in v["topk"].values()) and v["queries"] <= 40
            assert list(v["topk"].values()) == sorted(v["topk"].values())
        assert "note" in p["methods"]["fsn_noloc"]
    assert set(r["attributes"]["fsn"]["per_attribute"]) == {"category", "color", "pattern", "sleeve_length", "sleeve_color", "neckline"}
    assert set(r["localization"]["sleeve_length"]) == {"region", "items", "iou50", "pointing"}
    for f in ("report.md", "topk_global.png", "topk_region.png", "attributes.png", "gallery.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 100
    assert "| FashionSearchNet |" in (out / "report.md").read_text()


def test_adde_catalog_uses_the_fixed_published_queries(tmp_path, capsys):
    from fashionsearchnet.importers import get_importer
    from fashionsearchnet.importers._common import build_catalog
    from test_importers import make_adde
    from conftest import TINY_TRAIN

    src = make_adde(tmp_path / "adde", n_train=40, n_test=12)
    build_catalog(get_importer("adde").collect(src, images=src / "imgs"), tmp_path / "cat")
    assert main(["train", "--data", str(tmp_path / "cat"), "--out", str(tmp_path / "run"), *TINY_TRAIN, "p=2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(tmp_path / "cat"), "--json", "--no-figures"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["settings"]["fixed_queries"] == {"used": 2, "dropped_missing_images": 0}
    assert r["protocols"]["global"]["queries"] == 2 and "region" not in r["protocols"]


def test_queries_towards_a_value_without_prototype_are_dropped_for_every_method(trained, synth_small):
    """A value no training item has has no prototype: its queries are dropped, not a crash."""
    import dataclasses

    from fashionsearchnet.catalog import read_catalog
    from fashionsearchnet.evaluate import _searcher, embed_split, resolvable
    from fashionsearchnet.search import Edit

    cat = read_catalog(synth_small)
    import torch

    e = embed_split(trained, cat, cat.split("test")[:8], torch.device("cpu"), 8)
    schema = cat.schema
    color = schema.attribute("color")
    gone = color.values[1]
    count = e.protos.attr_count.copy()
    count[schema.attribute_index("color"), 1] = 0
    e_missing = dataclasses.replace(e, protos=dataclasses.replace(e.protos, attr_count=count))
    edits = [[Edit("color", gone)], [Edit("color", color.values[0])], [Edit("color", gone), Edit("pattern", schema.attribute("pattern").values[0])]]
    assert resolvable([_searcher(schema, e)], edits).tolist() == [True, True, True]
    # one model lacking the prototype drops the query for all
    assert resolvable([_searcher(schema, e), _searcher(schema, e_missing)], edits).tolist() == [False, True, False]


def test_held_out_attribute_trains_without_it_and_is_still_evaluated(synth_small, tmp_path, capsys):
    """hold_out=sleeve_color: the model never sees sleeve colour; evaluation still matches targets on
    it, edits it only inside the sleeve region (through the colour branch), never globally."""
    from conftest import TINY_TRAIN
    from fashionsearchnet.catalog import read_catalog
    from fashionsearchnet.checkpoint import read_meta
    from fashionsearchnet.index.store import load_index

    run = tmp_path / "run"
    for bad, why in (("color", "region 'body' takes its ROI"), ("sleeve_length", "region 'sleeve' takes its ROI"), ("collar", "unknown attribute 'collar'")):
        assert main(["train", "--data", str(synth_small), "--out", str(tmp_path / bad), *TINY_TRAIN, f"hold_out={bad}"]) == 2
        assert why in capsys.readouterr().err
        assert not (tmp_path / bad / "model.json").exists()
    assert main(["train", "--data", str(synth_small), "--out", str(run), *TINY_TRAIN, "hold_out=sleeve_color"]) == 0
    assert "sleeve_color" not in [a["name"] for a in read_meta(run)["schema"]["attributes"]]
    capsys.readouterr()
    dense = dense_copy(synth_small, tmp_path)  # four attributes blanked: test items share label vectors
    assert main(["evaluate", "--model", str(run), "--data", str(dense), "--json", "--no-figures"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["settings"]["held_out"] == ["sleeve_color"]
    assert "sleeve_color" not in r["attributes"]["fsn"]["per_attribute"]
    cat = read_catalog(dense)
    labels = cat.labels(cat.split("test"))
    every = manipulation_queries(labels, cat.schema.num_values)
    no_sleeve_color = [q for q in every if q.attribute != 4]
    assert len(no_sleeve_color) < len(every)  # the catalog has sleeve-colour queries to leave out
    assert r["protocols"]["global"]["queries"] == len(no_sleeve_color)
    assert r["protocols"]["region"]["queries"] == len(manipulation_queries(labels, cat.schema.num_values, [4])) > 0
    assert set(r["protocols"]["region"]["methods"]) >= {"fsn", "attribute_only", "global_feature"}
    # an index of the catalog with that model stores the labels of the model's attributes only
    idx = tmp_path / "idx"
    assert main(["index", "--model", str(run), "--data", str(synth_small), "--out", str(idx)]) == 0
    loaded = load_index(idx)
    assert loaded.items["labels"].shape[1] == 5
    np.testing.assert_array_equal(loaded.items["labels"][:, 4], cat.labels(cat.records)[:, 5])


def test_report_percentages_round_the_exact_fraction_once():
    """493 of 567 queries is 86.949 %: the report must say 86.9 (rounded to 4 decimals first, 0.8695,
    it said 87.0)."""
    from fashionsearchnet.evaluate import score_ranking
    from fashionsearchnet.report import _fmt

    gallery = np.asarray([[0], [1]])
    ranked = np.zeros((567, 1), dtype=np.int64)  # every query ranks item 0 first
    targets = np.asarray([[0]] * 493 + [[1]] * 74)
    got = score_ranking(ranked, gallery, targets)["topk"]["1"]
    assert _fmt(got) == "86.9" and got == pytest.approx(493 / 567)
