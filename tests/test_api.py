import io
import json
import shutil
import statistics
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from fashionsearchnet.api import SearcherProvider, create_app  # noqa: E402
from fashionsearchnet.cli import main  # noqa: E402
from conftest import jpeg_bytes  # noqa: E402
from test_images import bomb_png, exif_rotated_jpeg  # noqa: E402

MAX_BODY = 2 * 2**20


@pytest.fixture(scope="module")
def provider(index_dir):
    p = SearcherProvider(index_dir, watch_seconds=0)
    yield p
    p.close()


@pytest.fixture(scope="module")
def client(provider):
    return TestClient(create_app(provider, max_body=MAX_BODY, timeout=60))


def test_health_schema_items(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["items"] == 120
    s = client.get("/api/schema").json()
    assert [a["name"] for a in s["attributes"]][:2] == ["category", "color"]
    assert {"region": "sleeve", "attribute": "color"} in s["region_edits"]
    page = client.get("/api/items?offset=10&limit=5").json()
    assert page["total"] == 120 and [i["id"] for i in page["items"]] == [f"syn{i:06d}" for i in range(10, 15)]
    assert client.get("/api/items?split=test").json()["total"] < 120
    assert client.get("/api/items?q=syn00011").json()["total"] == 10
    it = client.get("/api/items/syn000003").json()
    assert set(it) >= {"id", "predicted", "labels", "rois"} and set(it["rois"]) == {"category", "color", "pattern", "sleeve_length", "sleeve_color", "neckline"}
    r = client.get("/api/items/nope")
    assert r.status_code == 404 and r.json() == {"error": "unknown item id 'nope'"}
    r = client.get("/api/items?limit=0")
    assert r.status_code == 422 and "limit" in r.json()["error"]


def test_thumbnail_and_explain(client):
    r = client.get("/api/items/syn000003/image?size=48")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 48
    r = client.get("/api/items/syn000003/explain?attribute=neckline")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "PNG"
    r = client.get("/api/items/syn000003/explain?attribute=collar")
    assert r.status_code == 400 and "valid attributes" in r.json()["error"]
    r = client.post("/api/explain", files={"file": ("x.jpg", jpeg_bytes((40, 40)), "image/jpeg")}, data={"attribute": "color"})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_search_by_id(client):
    body = {"item_id": "syn000003", "edits": ["neckline=v-neck", "sleeve:color=red"], "k": 7, "filters": {}}
    r = client.post("/api/search", json=body)
    assert r.status_code == 200
    d = r.json()
    assert len(d["results"]) == 7 and d["query"]["changed_blocks"] == ["sleeve_color", "neckline"]
    res = d["results"][0]
    assert set(res) == {"id", "rank", "score", "breakdown", "predicted", "title", "labels"}
    assert res["score"] == pytest.approx(sum(res["breakdown"].values()), abs=1e-4)
    page2 = client.post("/api/search", json=dict(body, offset=3, k=2)).json()
    assert [x["id"] for x in page2["results"]] == [x["id"] for x in d["results"][3:5]]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"item_id": "syn000003", "edits": ["neckline=oval"]}, 400, "valid values: round, v-neck, boat"),
        ({"item_id": "syn000003", "edits": ["collar=yes"]}, 400, "unknown attribute 'collar'"),
        ({"item_id": "syn000003", "edits": ["hem:color=red"]}, 400, "unknown region 'hem'"),
        ({"item_id": "syn000003", "edits": ["color=red", "color=blue"]}, 400, "contradictory edits"),
        ({"item_id": "nope"}, 400, "unknown item id"),
        ({"item_id": "syn000003", "k": 0}, 422, "k:"),
        ({"item_id": "syn000003", "edits": "color=red"}, 422, "edits:"),
        ({"edits": []}, 422, "item_id:"),
        ({"item_id": "syn000003", "filters": {"color": "teal"}}, 400, "filter color=teal"),
    ],
)
def test_search_errors_are_json_4xx(client, body, status, message):
    r = client.post("/api/search", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_malformed_json_body(client):
    r = client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()


def _cmyk():
    buf = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(buf, "JPEG")
    return buf.getvalue()


UPLOADS = {
    "zero bytes": (b"", "x.jpg", 400, "empty file (0 bytes)"),
    "truncated JPEG": (jpeg_bytes((300, 300), (9, 200, 30), quality=95)[:700], "t.jpg", 400, "truncated"),
    "wrong type (text)": (b"just some text, not an image", "notes.jpg", 400, "not a JPEG, PNG or WebP"),
    "decompression bomb": (bomb_png(), "bomb.png", 400, "decompression-bomb"),
    "oversized body": (b"\xff\xd8\xff" + b"0" * (MAX_BODY + 10), "big.jpg", 413, "exceeds the limit"),
    "CMYK JPEG": (_cmyk(), "cmyk.jpg", 200, None),
    "EXIF-rotated": (exif_rotated_jpeg(), "rot.jpg", 200, None),
    "long filename (2,000 chars)": (jpeg_bytes((64, 64)), "a" * 2_000 + ".jpg", 200, None),
    "huge filename (10,000 chars)": (jpeg_bytes((64, 64)), "a" * 10_000 + ".jpg", 400, "part header over 4 KB"),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_bad_upload_matrix(client, case):
    data, name, status, message = UPLOADS[case]
    r = client.post("/api/search/image", files={"file": (name, data, "application/octet-stream")}, data={"query": json.dumps({"k": 3, "edits": ["color=red"]})})
    assert r.status_code == status, (case, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    if message:
        assert message in r.json()["error"]
    else:
        assert len(r.json()["results"]) == 3


def test_upload_query_field_errors(client):
    img = jpeg_bytes((32, 32))
    r = client.post("/api/search/image", files={"file": ("a.jpg", img, "image/jpeg")}, data={"query": "[1, 2"})
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]
    r = client.post("/api/search/image", files={"file": ("a.jpg", img, "image/jpeg")}, data={"query": json.dumps({"kk": 3})})
    assert r.status_code == 400 and "unknown query fields: kk" in r.json()["error"]
    r = client.post("/api/search/image", data={"query": "{}"})
    assert r.status_code == 422 and "file" in r.json()["error"]


def test_page_and_docs(client):
    r = client.get("/")
    assert r.status_code == 200 and "FashionSearchNet" in r.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "FashionSearchNet"


def test_index_swap_while_serving_is_atomic(index_dir, trained, synth_small, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(index_dir, idx)
    provider = SearcherProvider(idx, watch_seconds=0)
    client = TestClient(create_app(provider, timeout=60))
    before = provider.get().index.version
    body = {"item_id": "syn000005", "edits": ["color=blue"], "k": 5}
    solo = client.post("/api/search", json=body).json()["results"]
    errors, answers, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            r = client.post("/api/search", json=body)
            (answers if r.status_code == 200 else errors).append(r.json())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    extra = tmp_path / "extra"
    shutil.copytree(synth_small, extra)
    lines = (extra / "catalog.csv").read_text().splitlines(keepends=True)
    (extra / "catalog.csv").write_text(lines[0] + "".join("new" + ln[3:] for ln in lines[1:]))
    assert main(["index", "--model", str(trained), "--data", str(extra), "--out", str(idx), "--add", "--split", "val"]) == 0
    assert provider.reload_if_changed()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    provider.close()
    assert not errors and answers
    assert provider.get().index.version != before and len(provider.get().index) > 120
    # every answer is a whole answer of one version: the old one, or the new one with the added items
    new_ids = {r["id"] for a in answers for r in a["results"]} - {r["id"] for r in solo}
    assert all(i.startswith("new") for i in new_ids)
    for a in answers:
        assert len(a["results"]) == 5 and [r["rank"] for r in a["results"]] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_load_200_concurrent_requests_on_loopback(provider):
    import asyncio
    import socket

    import httpx
    import uvicorn

    app = create_app(provider, timeout=120)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    items = [f"syn{i:06d}" for i in range(0, 120, 3)]
    bodies = [{"item_id": items[j % len(items)], "edits": [["color=red"], ["sleeve:color=blue"], ["neckline=v-neck", "pattern=dots"], []][j % 4], "k": 10} for j in range(200)]
    url = f"http://127.0.0.1:{port}/api/search"
    with httpx.Client() as c:
        solo = {json.dumps(b, sort_keys=True): c.post(url, json=b).json() for b in bodies}

    async def fire():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200), timeout=120) as ac:
            async def one(b):
                t = time.perf_counter()
                r = await ac.post(url, json=b)
                return b, r, time.perf_counter() - t

            return await asyncio.gather(*(one(b) for b in bodies))

    t0 = time.perf_counter()
    out = asyncio.run(fire())
    wall = time.perf_counter() - t0
    server.should_exit = True
    th.join(timeout=10)
    assert all(r.status_code == 200 for _, r, _ in out)
    for b, r, _ in out:
        assert r.json() == solo[json.dumps(b, sort_keys=True)]  # identical to the same request made alone
    lat = sorted(1000 * dt for _, _, dt in out)
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"\n200 concurrent searches: p50 {p50:.0f} ms, p95 {p95:.0f} ms, {len(out) / wall:.0f} requests/s")
