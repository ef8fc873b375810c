"""One module per external dataset format; each turns its source into the canonical catalog.

Every importer exposes ``collect(src, **options) -> Collected`` (the schema and one candidate per
labelled item, images not yet checked); ``build_catalog`` then checks every image, copies the good
ones in, assigns splits where the source has none and writes the catalog atomically.
"""

from __future__ import annotations

import importlib

FORMATS = {
    "cad": "Clothing Attribute Dataset (images/NNNNNN.jpg, labels/<attr>_GT.mat)",
    "fashion-product": "Kaggle Fashion Product Images (styles.csv, images/<id>.jpg)",
    "deepfashion": "DeepFashion Category and Attribute Prediction benchmark (Anno/, Eval/, img/)",
    "adde": "ADDE split files for Shopping100k / DeepFashion (attr_num.txt, imgs_*.txt, labels_*.txt)",
    "folder": "one subfolder per value of a single attribute",
}


def get_importer(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return importlib.import_module(f".{fmt.replace('-', '_')}", __name__)
