import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fashionsearchnet.cli import main
from fashionsearchnet.embed import Prototypes, save_prototypes
from fashionsearchnet.index.backends import FaissBackend, MilvusBackend, NumpyBackend
from fashionsearchnet.index.store import IndexError_, commit_version, load_index
from fashionsearchnet.schema import Attribute, Region, Schema
from fashionsearchnet.search import Edit, Query, SearchError, Searcher, parse_edit

from conftest import TINY_TRAIN as TINY


# -- a hand-made index: every number below can be checked with pen and paper -----------------------
def hand_index(tmp_path):
    schema = Schema(
        (Attribute("color", ("red", "blue")), Attribute("neckline", ("round", "v")), Attribute("sleeve_color", ("red", "blue"), region="sleeve", describes="color")),
        regions=(Region("sleeve", "neckline"),),
        region_aware=("color",),
    )
    e = np.eye(2, dtype=np.float32)
    # blocks: color, neckline, sleeve_color, sleeve:color  (D = 2)
    items = {
        "q": [e[0], e[0], e[0], e[0]],  # red, round, red sleeves
        "a": [e[1], e[0], e[0], e[0]],  # blue, round, red sleeves
        "b": [e[1], e[1], e[0], e[0]],  # blue, v
        "c": [e[0], e[0], e[1], e[1]],  # red, round, blue sleeves
        "d": [e[1], e[0], e[1], e[1]],  # blue body and sleeves
    }
    ids = list(items)
    vectors = np.stack([np.concatenate(v) for v in items.values()])
    n = len(ids)
    arrays = {
        "ids": np.asarray(ids), "images": np.asarray([""] * n), "titles": np.asarray(ids), "splits": np.asarray(["test"] * n),
        "labels": np.zeros((n, 3), np.int16), "pred": np.asarray([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], np.int16),
        "conf": np.ones((n, 3), np.float32), "rois": np.zeros((n, 3, 4), np.float32),
    }
    protos = Prototypes(attr=np.stack([e, e, e]), attr_count=np.ones((3, 2), np.int64), region=e[None], region_count=np.ones((1, 2), np.int64))
    src = tmp_path / "src"
    src.mkdir()
    save_prototypes(src / "prototypes.safetensors", protos, "fp-hand")
    (src / "model.safetensors").write_bytes(b"not used by item queries")
    manifest = {
        "model": {"fingerprint": "fp-hand", "path": "", "backbone": "none"}, "schema": schema.to_dict(), "catalogs": [],
        "embed_dim": 2, "blocks": ["color", "neckline", "sleeve_color", "sleeve:color"], "similarity_weights": [1.0, 2.0, 1.0, 0.0], "backend": "numpy",
    }
    root = tmp_path / "idx"
    commit_version(root, vectors, arrays, manifest, {"prototypes.safetensors": src / "prototypes.safetensors", "model.safetensors": src / "model.safetensors"}, lambda d, v: {})
    return Searcher.open(root)


def test_manipulation_arithmetic_by_hand(tmp_path):
    s = hand_index(tmp_path)
    # plain similarity: score = 1·cos(color) + 2·cos(neckline) + 1·cos(sleeve_color)
    r = s.search(Query(item_id="q", k=4))
    assert [(x.id, x.score) for x in r.results] == [("a", 3.0), ("c", 3.0), ("d", 2.0), ("b", 1.0)]
    # color=blue: the color block becomes the 'blue' prototype, its weight doubles (extra_weight 1)
    r = s.search(Query(item_id="q", edits=[parse_edit("color=blue")], k=4))
    assert [(x.id, x.score) for x in r.results] == [("a", 5.0), ("d", 4.0), ("b", 3.0), ("c", 2.0)]
    assert r.results[0].breakdown == {"color": 2.0, "neckline": 2.0, "sleeve_color": 1.0}
    # sleeve:color=blue resolves to the labelled sleeve_color block alone; body colour stays red
    r = s.search(Query(item_id="q", edits=[parse_edit("sleeve:color=blue")], k=4, extra_weight=0.5))
    assert r.query["changed_blocks"] == ["sleeve_color"]
    # weights: color 1, neckline 2, sleeve_color 1·1.5; the region block sleeve:color stays at 0
    assert [(x.id, x.score) for x in r.results] == [("c", 4.5), ("d", 3.5), ("a", 2.0), ("b", 0.0)]
    # paging and filters
    r2 = s.search(Query(item_id="q", edits=[parse_edit("sleeve:color=blue")], k=2, offset=1, extra_weight=0.5))
    assert [x.id for x in r2.results] == ["d", "a"] and r2.results[0].rank == 2
    r3 = s.search(Query(item_id="q", filters={"color": "blue"}, k=10))
    assert {x.id for x in r3.results} == {"a", "b", "d"} and r3.total == 3
    # the query item itself is excluded unless asked for
    r4 = s.search(Query(item_id="q", k=1, exclude_query=False))
    assert r4.results[0].id == "q" and r4.results[0].score == 4.0


def test_score_is_weighted_sum_of_cosines(tmp_path):
    s = hand_index(tmp_path)
    for edits in ([], ["neckline=v"], ["color=blue", "sleeve:color=red"]):
        r = s.search(Query(item_id="a", edits=[parse_edit(e) for e in edits], k=4))
        for x in r.results:
            assert x.score == pytest.approx(sum(x.breakdown.values()), abs=1e-5)


@pytest.mark.parametrize(
    "edits, match",
    [
        (["colour=red"], "unknown attribute 'colour'; valid attributes: color, neckline, sleeve_color"),
        (["color=green"], "unknown value 'green' for attribute 'color'; valid values: red, blue"),
        (["collar:color=red"], "unknown region 'collar'; valid regions: sleeve"),
        (["sleeve:neckline=v"], "cannot be changed inside a region; region-aware attributes: color"),
        (["color=red", "color=blue"], "contradictory edits: color=red and color=blue"),
        (["sleeve_color=red", "sleeve:color=blue"], "contradictory edits"),
    ],
)
def test_validation_messages(tmp_path, edits, match):
    s = hand_index(tmp_path)
    with pytest.raises(SearchError, match=match):
        s.search(Query(item_id="q", edits=[parse_edit(e) for e in edits]))


def test_other_refusals(tmp_path):
    s = hand_index(tmp_path)
    with pytest.raises(SearchError, match="unknown item id 'zz'"):
        s.search(Query(item_id="zz"))
    with pytest.raises(SearchError, match="exactly one of"):
        s.search(Query())
    with pytest.raises(SearchError, match="k must be between 1 and 1000"):
        s.search(Query(item_id="q", k=0))
    with pytest.raises(SearchError, match="filter neckline=square"):
        s.search(Query(item_id="q", filters={"neckline": "square"}))
    for bad in ("color", "=red", "color=", ":color=red"):
        with pytest.raises(SearchError, match="must look like"):
            parse_edit(bad)
    assert parse_edit(" sleeve : color = red ") == Edit("color", "red", "sleeve")
    # colour and sleeve colour may differ: not a contradiction
    s.search(Query(item_id="q", edits=[parse_edit("color=red"), parse_edit("sleeve:color=blue")]))


# -- backends agree with brute force --------------------------------------------------------------
def _agree(ref, got, k):
    s_ref, i_ref = ref
    s_got, i_got = got
    np.testing.assert_allclose(s_got, s_ref, rtol=1e-4, atol=1e-4)
    for q in range(len(s_ref)):
        # ids may swap only among (near-)tied scores
        for j in range(k):
            if i_ref[q, j] != i_got[q, j]:
                assert abs(s_ref[q, j] - s_got[q, j]) < 1e-4


def _random_index(n=3000, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = rng.normal(size=(20, dim)).astype(np.float32)
    return v, q


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_matches_brute_force(kind):
    v, q = _random_index()
    ref = NumpyBackend(v)
    fb = FaissBackend(FaissBackend.build(v, kind), v, kind, rerank=8, nprobe=64, ef_search=256)
    allowed = np.random.default_rng(1).random(len(v)) < 0.3
    for mask in (None, allowed):
        r, g = ref.search(q, 30, mask), fb.search(q, 30, mask)
        if kind == "flat":
            _agree(r, g, 30)
        else:  # approximate: recall against exact, and exact scores for what it returns
            recall = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(r[1], g[1])])
            assert recall >= 0.9
            np.testing.assert_allclose(g[0], np.take_along_axis(q @ v.T, g[1], 1), rtol=1e-5, atol=1e-5)
        if mask is not None:
            assert mask[g[1][g[1] >= 0]].all()


def test_faiss_flat_blas_path_and_faiss_scan_agree_across_query_chunks():
    v, _ = _random_index(n=2000)
    q = np.random.default_rng(3).normal(size=(150, v.shape[1])).astype(np.float32)  # > 2 chunks of 64
    index = FaissBackend.build(v, "flat")
    ref = NumpyBackend(v).search(q, 30)
    _agree(ref, FaissBackend(index, v, "flat").search(q, 30), 30)  # BLAS products, chunked
    _agree(ref, FaissBackend(index, None, "flat").search(q, 30), 30)  # FAISS's own scan
    empty = FaissBackend(index, v, "flat").search(q[:0], 30)
    assert empty[0].shape == (0, 30) and empty[1].shape == (0, 30)


def test_milvus_lite_matches_brute_force(tmp_path):
    v, q = _random_index(n=1500)
    MilvusBackend.build(str(tmp_path / "m.db"), "t", v)
    mb = MilvusBackend(str(tmp_path / "m.db"), "t", v)
    try:
        ref = NumpyBackend(v)
        _agree(ref.search(q, 30), mb.search(q, 30), 30)
        allowed = np.zeros(len(v), bool)
        allowed[::7] = True
        _agree(ref.search(q, 10, allowed), mb.search(q, 10, allowed), 10)
    finally:
        mb.close()


def test_topk_ties_and_padding():
    v = np.asarray([[1.0, 0], [1.0, 0], [0, 1.0]], np.float32)
    s, i = NumpyBackend(v).search(np.asarray([[1.0, 0]], np.float32), 5)
    assert i[0].tolist() == [0, 1, 2, -1, -1]
    s, i = NumpyBackend(v).search(np.asarray([[1.0, 0]], np.float32), 2, np.asarray([False, True, False]))
    assert i[0].tolist() == [1, -1]


# -- a real model, a real index -------------------------------------------------------------------
@pytest.fixture
def built(index_dir):
    return index_dir


def test_index_and_search_cli(built, trained, synth_small, capsys):
    loaded = load_index(built)
    assert len(loaded) == 120 and loaded.manifest["blocks"][-3:] == ["sleeve:color", "neck:color", "body:color"]
    vec = np.asarray(loaded.vectors).reshape(120, 9, 8)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=2), 1.0, rtol=1e-4)
    loaded.close()
    capsys.readouterr()
    assert main(["search", "--index", str(built), "--item", "syn000003", "--set", "neckline=v-neck", "--set", "sleeve:color=red", "--k", "5", "--json"]) == 0
    resp = json.loads(capsys.readouterr().out)
    assert len(resp["results"]) == 5 and resp["query"]["changed_blocks"] == ["sleeve_color", "neckline"]
    assert all(r["id"] != "syn000003" for r in resp["results"])
    assert main(["search", "--index", str(built), "--item", "syn000003", "--set", "neckline=oval"]) == 2
    assert "valid values: round, v-neck, boat" in capsys.readouterr().err
    # query by image: the same pixels as a catalog item find that item first
    img = synth_small / "images" / "000007.jpg"
    assert main(["search", "--index", str(built), "--image", str(img), "--k", "3", "--json", "--model", str(trained)]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == "syn000007"


def test_region_edit_without_a_labelled_attribute_uses_the_region_block(built):
    s = Searcher.open(built)
    r = s.search(Query(item_id="syn000003", edits=[parse_edit("neck:color=red")], k=5))
    assert r.query["changed_blocks"] == ["neck:color"]  # no neck colour label: the colour branch pooled in the neck ROI
    r = s.search(Query(item_id="syn000003", edits=[parse_edit("sleeve:color=red")], k=5))
    assert r.query["changed_blocks"] == ["sleeve_color"]  # labelled: its own branch


def test_backends_give_the_same_ranking_on_a_real_index(built):
    s_faiss = Searcher.open(built)
    s_numpy = Searcher.open(built, backend="numpy")
    for item in ("syn000001", "syn000010"):
        for edits in ([], [parse_edit("color=red")], [parse_edit("sleeve:color=blue")]):
            a = s_faiss.search(Query(item_id=item, edits=edits, k=20))
            b = s_numpy.search(Query(item_id=item, edits=edits, k=20))
            np.testing.assert_allclose([r.score for r in a.results], [r.score for r in b.results], atol=1e-4)


def test_model_mismatch_refused(built, trained, synth_small, tmp_path):
    other = tmp_path / "other"
    assert main(["train", "--data", str(synth_small), "--out", str(other), *TINY, "seed=1"]) == 0
    with pytest.raises(IndexError_, match="was built with model .* but .* is model"):
        Searcher.open(built, model=other)
    idx = tmp_path / "idx"
    shutil.copytree(built, idx)
    assert main(["index", "--model", str(other), "--data", str(synth_small), "--out", str(idx), "--add"]) == 2


def test_add_items(built, trained, synth_small, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built, idx)
    assert main(["index", "--model", str(trained), "--data", str(synth_small), "--out", str(idx), "--add"]) == 2  # ids clash
    extra = tmp_path / "extra"
    shutil.copytree(synth_small, extra)
    lines = (extra / "catalog.csv").read_text().splitlines(keepends=True)
    (extra / "catalog.csv").write_text(lines[0] + "".join("new" + ln[3:] for ln in lines[1:]))
    before = load_index(idx)
    v_before = before.version
    before.close()
    assert main(["index", "--model", str(trained), "--data", str(extra), "--out", str(idx), "--add", "--split", "test"]) == 0
    after = load_index(idx)
    new_test = [ln.split(",")[0] for ln in (extra / "catalog.csv").read_text().splitlines()[1:] if ",test," in ln]
    assert len(after) == 120 + len(new_test) > 120 and after.version != v_before
    assert all(i in after.id_to_row for i in new_test) and "syn000000" in after.id_to_row
    after.close()


@pytest.mark.slow
def test_killed_indexing_leaves_a_loadable_index_and_resumes(built, trained, synth_small, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built, idx)
    first = load_index(idx, backend="numpy")
    v1, vec1 = first.version, np.asarray(first.vectors).copy()
    first.close()
    rng = random.Random(0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fashionsearchnet.cli", "index", "--model", str(trained), "--data", str(synth_small), "--out", str(idx), "--chunk", "8", "--batch-size", "8"]
    for attempt in range(3):
        stop_at = rng.randint(1, 10)
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        parts = idx / "building" / "parts"
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("part-*.npz"))) >= stop_at:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever the moment of the kill, the live index is the complete previous version
        live = load_index(idx, backend="numpy")
        assert live.version == v1 and len(live) == 120
        np.testing.assert_array_equal(np.asarray(live.vectors), vec1)
        live.close()
    assert main(cmd[3:] + ["--resume"]) == 0
    final = load_index(idx)
    assert final.version != v1 and len(final) == 120
    np.testing.assert_allclose(np.asarray(final.vectors), vec1, atol=1e-5)  # same model, same items, same vectors
    assert not (idx / "building").exists()
    final.close()
    assert main(cmd[3:] + ["--resume"]) == 2  # nothing left to resume


def test_milvus_index_end_to_end(trained, synth_small, tmp_path):
    idx = tmp_path / "midx"
    assert main(["index", "--model", str(trained), "--data", str(synth_small), "--out", str(idx), "--backend", "milvus"]) == 0
    sm, sn = Searcher.open(idx), Searcher.open(idx, backend="numpy")
    try:
        for edits in ([], [parse_edit("pattern=dots")]):
            a = sm.search(Query(item_id="syn000002", edits=edits, k=15))
            b = sn.search(Query(item_id="syn000002", edits=edits, k=15))
            np.testing.assert_allclose([r.score for r in a.results], [r.score for r in b.results], atol=1e-4)
    finally:
        sm.close()
        sn.close()


def test_not_an_index(tmp_path):
    with pytest.raises(IndexError_, match="no such index folder"):
        load_index(tmp_path / "none")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "building").mkdir()
    with pytest.raises(IndexError_, match="interrupted"):
        load_index(tmp_path / "x")


def test_hnsw_index_keeps_its_search_depth(trained, synth_small, tmp_path, capsys):
    from fashionsearchnet.index.store import load_index

    idx = tmp_path / "h"
    assert main(["index", "--model", str(trained), "--data", str(synth_small), "--out", str(idx), "--kind", "hnsw", "--ef-search", "0"]) == 2
    assert "--ef-search must be positive" in capsys.readouterr().err
    assert not (idx / "CURRENT").exists()
    assert main(["index", "--model", str(trained), "--data", str(synth_small), "--out", str(idx), "--kind", "hnsw", "--ef-search", "300"]) == 0
    li = load_index(idx)
    try:
        assert li.manifest["faiss"] == {"kind": "hnsw", "rerank": 4, "nprobe": 16, "ef_search": 300}
        assert li.backend.kind == "hnsw" and li.backend.ef_search == 300
        exact = NumpyBackend(li.vectors).search(li.vectors[:5], 10)
        _agree(exact, li.backend.search(li.vectors[:5], 10), 10)  # tiny index: HNSW is exact here
    finally:
        li.backend.close()
