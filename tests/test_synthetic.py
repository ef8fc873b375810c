import dataclasses
import filecmp

import numpy as np
import pytest

from fashionsearchnet.catalog import read_catalog
from fashionsearchnet.cli import main
from fashionsearchnet.synthetic import COLORS, PALETTE, SKIN, Spec, make_item, neckline_box, render, sample_spec, schema
from fashionsearchnet.schema import UNKNOWN


def _mask(a, color):
    return (np.abs(a.astype(int) - np.asarray(color)).sum(-1) == 0)


def _inside(mask, boxes, tol=1.0):
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = xx + 0.5, yy + 0.5  # pixel centres
    ok = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        ok |= (cx >= x0 - tol) & (cx <= x1 + tol) & (cy >= y0 - tol) & (cy <= y1 + tol)
    return ok


@pytest.mark.parametrize("category", range(4))
@pytest.mark.parametrize("sleeve_length", [1, 2])
def test_boxes_contain_drawn_parts(category, sleeve_length):
    bg = (128, 128, 128)
    spec = Spec(category=category, color=COLORS.index("blue"), pattern=0, sleeve_length=sleeve_length,
                sleeve_color=COLORS.index("red"), neckline=1, angle=9.0, background=bg, cx=0.5, cy=0.5, scale=0.9)
    img, boxes = render(spec, 128)
    a = np.asarray(img)
    red, blue, skin = _mask(a, PALETTE["red"]), _mask(a, PALETTE["blue"]), _mask(a, SKIN)
    assert len(boxes["sleeve"]) == 2
    # every pixel of a part lies inside its boxes ...
    assert not (red & ~_inside(red, boxes["sleeve"])).any()
    assert not (skin & ~_inside(skin, boxes["neck"])).any()
    assert not (blue & ~_inside(blue, boxes["body"])).any()
    # ... each box is mostly made of its part ...
    for box in boxes["sleeve"]:
        inside = _inside(red, [box], tol=0)
        assert red[inside].mean() > 0.25  # a slanted sleeve fills a good part of its box
    assert skin[_inside(skin, boxes["neck"], tol=0)].mean() > 0.15  # the neck area: where any neckline can lie
    # the neck box does not depend on the neckline, so it cannot give the value away
    for neckline in (0, 2):
        assert render(dataclasses.replace(spec, neckline=neckline), 128)[1]["neck"] == boxes["neck"]
    # ... and outside all boxes there is only background
    outside = ~_inside(red, boxes["sleeve"] + boxes["neck"] + boxes["body"])
    assert _mask(a, bg)[outside].all()


@pytest.mark.parametrize("color", ["blue", "yellow"])  # light and dark ink
def test_round_neck_has_a_collar_band_inside_the_neck_area(color):
    from fashionsearchnet.synthetic import _ink

    bg = (128, 128, 128)
    spec = Spec(category=0, color=COLORS.index(color), pattern=0, sleeve_length=0, sleeve_color=0, neckline=0,
                angle=-7.0, background=bg, cx=0.5, cy=0.5, scale=0.9)
    band = []
    for neckline in range(3):
        img, boxes = render(dataclasses.replace(spec, neckline=neckline), 128)
        a = np.asarray(img)
        ink = _mask(a, _ink(PALETTE[color]))
        band.append(int(ink.sum()))
        assert not (ink & ~_inside(ink, boxes["neck"])).any()  # the band lies in the neck area
        if neckline == 0:
            assert _mask(a, SKIN).sum() > 20  # the opening is still drawn inside the band
    assert band[0] > 40 and band[1] == band[2] == 0  # only the round neck has one


@pytest.mark.parametrize("neckline", range(3))
@pytest.mark.parametrize("angle", [-11.0, 0.0, 8.0])
def test_neckline_box_fits_the_drawn_neckline_inside_the_neck_area(neckline, angle):
    from fashionsearchnet.synthetic import _ink

    bg = (128, 128, 128)
    spec = Spec(category=neckline, color=COLORS.index("blue"), pattern=0, sleeve_length=0, sleeve_color=0, neckline=neckline,
                angle=angle, background=bg, cx=0.5, cy=0.5, scale=0.95)
    img, boxes = render(spec, 128)
    a = np.asarray(img)
    drawn = _mask(a, SKIN) | _mask(a, _ink(PALETTE["blue"]))  # the opening and the round neck's band
    box = neckline_box(spec, 128)
    assert not (drawn & ~_inside(drawn, [box], tol=1.5)).any()  # every drawn pixel lies in the box (wide-line rasterizing: 1.5 px) ...
    yy, xx = np.nonzero(drawn)
    x0, y0, x1, y1 = box  # ... and the box is tight: drawn pixels reach each of its edges
    assert xx.min() + 0.5 - x0 < 2 and x1 - (xx.max() + 0.5) < 2 and yy.min() + 0.5 - y0 < 2 and y1 - (yy.max() + 0.5) < 2
    n0, n1 = boxes["neck"][0][:2], boxes["neck"][0][2:]
    assert n0[0] - 1 <= x0 and n0[1] - 1 <= y0 and x1 <= n1[0] + 1 and y1 <= n1[1] + 1  # inside the neck area


def test_no_sleeves_no_sleeve_box_and_unknown_colour():
    spec = Spec(category=0, color=0, pattern=1, sleeve_length=0, sleeve_color=3, neckline=0)
    _, boxes = render(spec, 64)
    assert "sleeve" not in boxes
    assert spec.labels()[schema().attribute_index("sleeve_color")] == UNKNOWN


def test_sampled_sleeves_are_drawn_in_their_boxes():
    for i in range(30):
        spec = dataclasses.replace(sample_spec(np.random.default_rng([7, i])), brightness=1.0, gradient=(0.0, 0.0), noise=0.0)
        img, boxes = render(spec, 96)
        a = np.asarray(img)
        if spec.sleeve_length:
            m = _mask(a, PALETTE[COLORS[spec.sleeve_color]])
            for box in boxes["sleeve"]:
                assert m[_inside(m, [box], tol=0)].mean() > 0.15


def test_same_seed_identical_other_seed_differs(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert main(["synth", str(tmp_path / name), "--n", "40", "--size", "48", "--seed", str(seed), "--workers", "1"]) == 0
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert not filecmp.dircmp(tmp_path / "a" / "images", tmp_path / "b" / "images").diff_files
    for f in (tmp_path / "a" / "images").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / "images" / f.name).read_bytes()
    assert (tmp_path / "a/catalog.csv").read_text() != (tmp_path / "c/catalog.csv").read_text()
    assert (tmp_path / "a/images/000000.jpg").read_bytes() != (tmp_path / "c/images/000000.jpg").read_bytes()


def test_worker_count_does_not_change_output(tmp_path):
    from fashionsearchnet.synthetic import generate

    generate(tmp_path / "one", 300, 32, seed=1, workers=1)
    generate(tmp_path / "two", 300, 32, seed=1, workers=2)
    assert (tmp_path / "one/catalog.csv").read_bytes() == (tmp_path / "two/catalog.csv").read_bytes()
    assert (tmp_path / "one/images/000299.jpg").read_bytes() == (tmp_path / "two/images/000299.jpg").read_bytes()


def test_catalog_loads_with_boxes_and_all_values(synth_small):
    cat = read_catalog(synth_small, check_images=True)
    assert len(cat) == 120
    assert set(r.split for r in cat) == {"train", "val", "test"}
    assert all("body" in r.boxes and "neck" in r.boxes for r in cat)
    labels = cat.labels()
    for a, attr in enumerate(cat.schema.attributes):
        assert set(labels[:, a][labels[:, a] >= 0]) == set(range(attr.num_values))


def test_items_depend_on_seed_and_index_only():
    a, _, _ = make_item(2, 17, 48)
    b, _, _ = make_item(2, 17, 48)
    c, _, _ = make_item(2, 18, 48)
    assert a.tobytes() == b.tobytes() != c.tobytes()


def test_bad_arguments(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--size", "8"]) == 2
    assert not (tmp_path / "x").exists()
