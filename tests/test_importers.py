import json

import numpy as np
import pytest
from scipy.io import savemat

from fashionsearchnet.catalog import read_catalog
from fashionsearchnet.cli import main
from fashionsearchnet.importers import cad, fashion_product, get_importer
from fashionsearchnet.importers._common import build_catalog
from fashionsearchnet.schema import UNKNOWN
from conftest import shared, write_jpeg

NAN = float("nan")


# -- Clothing Attribute Dataset ------------------------------------------------------------------
def make_cad(root, present=(1, 2, 3, 4, 5, 6), corrupt=(6,)):
    labels = root / "labels"
    labels.mkdir(parents=True)
    n = cad.NUM_ROWS
    cols = {stem: np.full(n, 1.0) for stem in cad.DIRECT}
    cols["category"][:4] = [7, NAN, 1, 3]
    cols["sleevelength"][:4] = [3, 2, 1, NAN]
    flags = {f"pattern_{f}": np.full(n, 1.0) for f in cad.PATTERN_FLAGS}
    flags.update({c: np.full(n, 1.0) for c in cad.COLOR_FLAGS})
    flags["many_colors"] = np.full(n, 1.0)
    flags["pattern_stripe"][0] = 2  # item 1: stripes
    flags["pattern_solid"][1] = 2  # item 2: two patterns -> unknown
    flags["pattern_floral"][1] = 2
    flags["red"][0] = 2  # item 1: red
    flags["many_colors"][1] = 2  # item 2: multicolor
    flags["blue"][1] = 2
    flags["white"][2] = NAN  # item 3: no colour flag set -> unknown
    for stem, col in {**cols, **flags}.items():
        savemat(labels / f"{stem}_GT.mat", {"GT": col.reshape(-1, 1)})
    for i in present:
        p = write_jpeg(root / "images" / f"{i:06d}.jpg")
        if i in corrupt:
            p.write_bytes(p.read_bytes()[:40])
    return root


def test_cad_fixture(tmp_path):
    src = make_cad(tmp_path / "cad")
    summary = build_catalog(cad.collect(src), tmp_path / "out")
    assert (summary.items, summary.present, len(summary.missing), len(summary.bad)) == (1856, 5, 1850, 1)
    assert summary.bad[0][0] == "000006" and "truncated" in summary.bad[0][1]
    cat = read_catalog(tmp_path / "out", check_images=True)
    by = cat.by_id()
    s = cat.schema
    lab = lambda i, a: by[i].labels[s.attribute_index(a)]  # noqa: E731
    assert s.attribute("category").values[lab("000001", "category")] == "dress"
    assert lab("000002", "category") == UNKNOWN
    assert s.attribute("sleeve_length").values[lab("000003", "sleeve_length")] == "none"
    assert s.attribute("pattern").values[lab("000001", "pattern")] == "stripe"
    assert lab("000002", "pattern") == UNKNOWN
    assert s.attribute("color").values[lab("000001", "color")] == "red"
    assert s.attribute("color").values[lab("000002", "color")] == "multicolor"
    assert lab("000003", "color") == UNKNOWN
    report = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report["images_missing"] == 1850 and report["bad"][0]["id"] == "000006"


def test_cad_bad_label_file(tmp_path):
    src = make_cad(tmp_path / "cad")
    savemat(src / "labels" / "category_GT.mat", {"GT": np.ones((10, 1))})
    with pytest.raises(ValueError, match="category_GT.mat: GT has 10 rows, expected 1856"):
        cad.collect(src)
    (src / "labels" / "collar_GT.mat").unlink()
    savemat(src / "labels" / "category_GT.mat", {"GT": np.full((1856, 1), 9.0)})
    with pytest.raises(ValueError, match="values outside 1..7"):
        cad.collect(src)


# -- Fashion Product Images ------------------------------------------------------------------------
STYLES = """id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName
10001,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt
10002,Women,Apparel,Bottomwear,Shorts,Pink,Summer,2011,Sports,"Nike Women's EM Tempo 3.5"" Pink Short"
10003,Men,Footwear,Shoes,Casual Shoes,Black,Winter,2012,,Puma Men, Black, Casual Shoes
10004,Women,Apparel,Topwear,Tops,Pink,Summer,2012,Casual,Missing image top
10005,Men,Footwear,Shoes,Casual Shoes,Navy Blue,Fall,2011,Casual,Plain name
"""


def test_fashion_product_parsing():
    row = fashion_product.parse_line("3,Men,A,B,C,Black,Fall,2011,Casual,Puma Men, Black, Shoes", 2)
    assert row["productDisplayName"] == "Puma Men, Black, Shoes"
    row = fashion_product.parse_line('4,W,A,B,C,Pink,Fall,2011,Sports,"Tempo 3.5"" Short"', 3)
    assert row["productDisplayName"] == 'Tempo 3.5" Short'
    with pytest.raises(ValueError, match="styles.csv:9: 5 fields"):
        fashion_product.parse_line("1,2,3,4,5", 9)


def test_fashion_product_fixture(tmp_path):
    src = tmp_path / "fp"
    src.mkdir()
    (src / "styles.csv").write_text(STYLES)
    for i in (10001, 10002, 10003, 10005):
        write_jpeg(src / "images" / f"{i}.jpg")
    summary = build_catalog(fashion_product.collect(src), tmp_path / "out")
    assert (summary.items, summary.present, summary.missing) == (5, 4, ["10004"])
    cat = read_catalog(tmp_path / "out", check_images=True)
    by = cat.by_id()
    assert by["10003"].title == "Puma Men, Black, Casual Shoes"
    assert by["10002"].title == 'Nike Women\'s EM Tempo 3.5" Pink Short'
    usage = cat.schema.attribute_index("usage")
    assert by["10003"].labels[usage] == UNKNOWN
    assert cat.schema.attribute("baseColour").values == ("Black", "Navy Blue", "Pink")


def test_fashion_product_duplicate_id(tmp_path):
    (tmp_path / "styles.csv").write_text(STYLES + "10001,Men,A,B,C,Black,Fall,2011,Casual,dup\n")
    with pytest.raises(ValueError, match="duplicate id 10001"):
        fashion_product.collect(tmp_path)


# -- DeepFashion -----------------------------------------------------------------------------------
def make_deepfashion(root):
    (root / "Anno").mkdir(parents=True)
    (root / "Eval").mkdir()
    attrs = [("floral", 1), ("striped", 1), ("denim", 2), ("cotton", 2), ("a-line", 3), ("fit", 3), ("v neck", 4), ("pocket", 4), ("boho", 5), ("party", 5)]
    (root / "Anno/list_attr_cloth.txt").write_text(
        f"{len(attrs)}\nattribute_name  attribute_type\n" + "".join(f"{n:<30}{t}\n" for n, t in attrs)
    )
    cats = [("Blouse", 1), ("Jeans", 2), ("Dress", 3)]
    (root / "Anno/list_category_cloth.txt").write_text("3\ncategory_name  category_type\n" + "".join(f"{n:<20}{t}\n" for n, t in cats))
    imgs = ["img/Floral_Blouse/img_00000001.jpg", "img/Floral_Blouse/img_00000002.jpg", "img/Slim_Jeans/img_00000001.jpg"]
    flags = [[1, -1, -1, 1, -1, -1, 1, -1, 1, -1], [1, 1, -1, -1, -1, -1, -1, -1, -1, -1], [-1, -1, 1, -1, -1, 1, -1, 1, -1, 1]]
    (root / "Anno/list_attr_img.txt").write_text(
        "3\nimage_name  attribute_labels\n" + "".join(f"{i:<50}" + " ".join(f"{v:2d}" for v in f) + "\n" for i, f in zip(imgs, flags))
    )
    (root / "Anno/list_category_img.txt").write_text("3\nimage_name  category_label\n" + "".join(f"{i:<50}{c}\n" for i, c in zip(imgs, (1, 1, 2))))
    (root / "Anno/list_bbox.txt").write_text("3\nimage_name  x_1  y_1  x_2  y_2\n" + "".join(f"{i:<50}002 003 020 022\n" for i in imgs))
    (root / "Eval/list_eval_partition.txt").write_text("3\nimage_name  evaluation_status\n" + "".join(f"{i:<50}{s}\n" for i, s in zip(imgs, ("train", "val", "test"))))
    for i in imgs:
        write_jpeg(root / i, size=(24, 24))
    return root


def test_deepfashion_fixture(tmp_path):
    src = make_deepfashion(tmp_path / "df")
    mod = get_importer("deepfashion")
    summary = build_catalog(mod.collect(src), tmp_path / "out")
    assert summary.present == 3
    cat = read_catalog(tmp_path / "out", check_images=True)
    s = cat.schema
    assert s.names == ("category", "texture", "fabric", "shape", "part", "style")
    assert s.attribute("part").values == ("v neck", "pocket")
    r1, r2, r3 = cat.records
    assert r1.id == "Floral_Blouse--img_00000001" and r1.split == "train" and r3.split == "test"
    assert r1.labels == (0, 0, 1, UNKNOWN, 0, 0)  # floral, cotton, no shape, v neck, boho
    assert r2.labels[1] == UNKNOWN  # floral and striped: two textures -> unknown
    assert r3.labels[0] == 1 and r3.labels[2] == 0
    assert r1.boxes == {"garment": ((2.0, 3.0, 20.0, 22.0),)}
    assert cat.image_path(r1).is_file() and r1.image.startswith("img/Floral_Blouse/")


def test_deepfashion_count_mismatch(tmp_path):
    src = make_deepfashion(tmp_path / "df")
    p = src / "Anno/list_bbox.txt"
    p.write_text(p.read_text().replace("3\n", "4\n", 1))
    with pytest.raises(ValueError, match="header says 4 entries, found 3"):
        get_importer("deepfashion").collect(src)


# -- ADDE split files ------------------------------------------------------------------------------
def make_adde(root, n_train=20, n_test=6):
    root.mkdir(parents=True)
    (root / "attr_num.txt").write_text("3\n2\n")
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        rows, names = [], []
        for i in range(n):
            a, b = rng.integers(3), rng.integers(2)
            row = [0] * 5
            row[a] = 1
            if i % 5:  # every fifth item has attribute 2 unknown
                row[3 + b] = 1
            rows.append(" ".join(map(str, row)))
            names.append(f"{split}/im{i}.jpg")
            write_jpeg(root / "imgs" / f"{split}/im{i}.jpg")
        (root / f"imgs_{split}.txt").write_text("\n".join(names) + "\n")
        (root / f"labels_{split}.txt").write_text("\n".join(rows) + "\n")
    (root / "ref_test.txt").write_text("0\n1\n")
    (root / "indfull_test.txt").write_text("1 -1 0 0 0\n0 0 0 1 -1\n")
    (root / "gt_test.txt").write_text("1 0 0 0 1\n0 1 0 1 0\n")
    return root


def test_adde_fixture(tmp_path):
    src = make_adde(tmp_path / "adde")
    mod = get_importer("adde")
    summary = build_catalog(mod.collect(src, images=src / "imgs", attribute_names="category,gender"), tmp_path / "out")
    assert summary.present == 26
    cat = read_catalog(tmp_path / "out", check_images=True)
    assert cat.schema.names == ("category", "gender")
    assert len(cat.split("test")) == 6 and len(cat.split("val")) >= 1
    assert (tmp_path / "out/adde/ref_test.txt").read_text() == "0\n1\n"
    assert (tmp_path / "out/adde/test_ids.txt").read_text().split() == [f"test{i:06d}" for i in range(6)]
    assert cat.by_id()["train000000"].labels[1] == UNKNOWN


def test_adde_errors(tmp_path):
    src = make_adde(tmp_path / "adde")
    mod = get_importer("adde")
    with pytest.raises(ValueError, match="gives 1 names"):
        mod.collect(src, attribute_names="one")
    (src / "labels_test.txt").write_text("1 1 0 0 1\n")
    with pytest.raises(ValueError, match="several values for attribute 1"):
        mod.collect(src)
    (src / "labels_test.txt").write_text("1 0 0\n")
    with pytest.raises(ValueError, match="3 columns, attr_num.txt sums to 5"):
        mod.collect(src)


# -- folder --------------------------------------------------------------------------------------
def test_folder_fixture(tmp_path):
    for v in ("boots", "sneakers"):
        for i in range(3):
            write_jpeg(tmp_path / "src" / v / f"{i}.jpg")
    (tmp_path / "src" / "boots" / "readme.txt").write_text("not an image")
    mod = get_importer("folder")
    summary = build_catalog(mod.collect(tmp_path / "src", attribute="type"), tmp_path / "out")
    assert summary.present == 6 and len(summary.bad) == 1 and "not a JPEG" in summary.bad[0][1]
    cat = read_catalog(tmp_path / "out")
    assert cat.schema.attribute("type").values == ("boots", "sneakers")


# -- CLI and atomic output -------------------------------------------------------------------------
def test_cli_import_refuses_to_overwrite_and_keeps_old(tmp_path, capsys):
    src = make_cad(tmp_path / "cad")
    assert main(["import", "cad", str(src), str(tmp_path / "out")]) == 0
    assert "images present (kept)     : 5" in capsys.readouterr().out
    before = (tmp_path / "out/catalog.csv").read_text()
    assert main(["import", "cad", str(src), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    (src / "labels/collar_GT.mat").unlink()  # the next import fails half-way...
    assert main(["import", "cad", str(src), str(tmp_path / "out"), "--force"]) == 2
    assert (tmp_path / "out/catalog.csv").read_text() == before  # ...and the old catalog is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_unknown_format(capsys):
    with pytest.raises(SystemExit):
        main(["import", "nope", "a", "b"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# -- the shared real datasets (development machines only) ----------------------------------------
@pytest.mark.shared_data
def test_shared_cad(tmp_path):
    src = shared("clothing-attribute-dataset")
    summary = build_catalog(cad.collect(src), tmp_path / "cad")
    n_images = len(list((src / "images").glob("*.jpg")))
    assert summary.present + len(summary.bad) == n_images and summary.items == 1856
    assert summary.present == 1484
    cat = read_catalog(tmp_path / "cad", check_images=True)
    assert len(cat) == 1484 and len(cat.split("test")) > 200


@pytest.mark.shared_data
def test_shared_fashion_product(tmp_path):
    src = shared("fashion-product-images")
    summary = build_catalog(fashion_product.collect(src), tmp_path / "fp")
    assert summary.present == len(list((src / "images").glob("*.jpg"))) == 7666
    assert summary.items == 44446 and len(summary.missing) == 44446 - 7666
    cat = read_catalog(tmp_path / "fp", check_images=True)
    assert len(cat) == 7666
