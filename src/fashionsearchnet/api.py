"""HTTP API and web page: ``create_app(provider)``. The page only talks to this API.

Hardening: a request-body limit (413), images accepted by content only with the decompression-bomb
guard, a time limit per request (504), JSON errors for every 4xx (never a 500 for bad input),
thread-safe searching, and atomic switching to a newly built index version while serving.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, File, Form, HTTPException, Query as Q, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .images import ImageDecodeError, decode_image
from .index.store import current_version
from .search import Query, SearchError, Searcher, parse_edit

WEB = Path(__file__).parent / "web"
MAX_IMAGE_PIXELS = 40_000_000


class SearcherProvider:
    """The live Searcher; swaps to a new index version atomically when ``INDEX/CURRENT`` changes.

    Readers take ``provider.get()`` once per request and keep that object for the whole request,
    so a swap never mixes two versions inside one answer (no torn reads). The old Searcher is
    closed only after a grace period.
    """

    def __init__(self, index_dir: str | Path, model: str | Path | None = None, watch_seconds: float = 2.0):
        self.index_dir = Path(index_dir)
        self.model_check = model
        self._searcher = Searcher.open(self.index_dir, model=model)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if watch_seconds > 0:
            self._thread = threading.Thread(target=self._watch, args=(watch_seconds,), daemon=True, name="fsn-index-watch")
            self._thread.start()

    def get(self) -> Searcher:
        return self._searcher

    def reload_if_changed(self) -> bool:
        with self._lock:
            v = current_version(self.index_dir)
            if v is None or v == self._searcher.index.version:
                return False
            new = Searcher.open(self.index_dir, model=self.model_check)  # fully loaded before it is visible
            old, self._searcher = self._searcher, new
        threading.Timer(30.0, old.close).start()
        return True

    def _watch(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.reload_if_changed()
            except Exception:  # a half-written or refused version: keep serving the current one
                pass

    def close(self) -> None:
        self._stop.set()
        self._searcher.close()


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_json(send, 413, {"error": f"request body of {int(declared):,} bytes exceeds the limit of {self.limit:,} bytes"})
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return msg

        started = False

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"error": f"request body exceeds the limit of {self.limit:,} bytes"})


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class SearchBody(BaseModel):
    item_id: str = Field(..., max_length=512)
    edits: list[str] = Field(default_factory=list, max_length=32)
    filters: dict[str, str] = Field(default_factory=dict)
    k: int = Field(12, ge=1, le=200)
    offset: int = Field(0, ge=0, le=100_000)
    extra_weight: float = Field(1.0, ge=0.0, le=100.0)


def create_app(provider: SearcherProvider, max_body: int = 8 * 2**20, timeout: float = 20.0, title: str = "FashionSearchNet") -> FastAPI:
    app = FastAPI(title=title, version="0.1.0", description="Fashion search with attribute and region manipulation.")
    thumbs: OrderedDict[tuple, bytes] = OrderedDict()
    thumbs_lock = threading.Lock()

    async def run(fn, *args):
        """Run blocking work in a worker thread under the per-request time limit."""
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(fn, *args)
        except TimeoutError:
            raise HTTPException(504, f"the request took longer than {timeout:g} s") from None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if detail == "Invalid multipart data.":  # python-multipart refuses part headers over 4 KB
            detail = "malformed multipart body, or a part header over 4 KB (such as a very long file name)"
        return JSONResponse({"error": detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        msgs = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", []) if x != "body")
            msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return JSONResponse({"error": "; ".join(msgs) or "invalid request"}, status_code=422)

    @app.exception_handler(SearchError)
    @app.exception_handler(ImageDecodeError)
    async def bad_input(_: Request, exc: Exception):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception):
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    def item_or_404(s: Searcher, item_id: str) -> int:
        row = s.index.id_to_row.get(item_id)
        if row is None:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        return row

    def item_json(s: Searcher, row: int, full: bool = False) -> dict[str, Any]:
        it = s.index.items
        d = {"id": str(it["ids"][row]), "title": str(it["titles"][row]), "split": str(it["splits"][row]), "predicted": s._predicted(it["pred"][row], it["conf"][row])}
        if full:
            d["labels"] = {a.name: (a.values[int(v)] if v >= 0 else None) for a, v in zip(s.schema.attributes, it["labels"][row])}
            d["rois"] = {n: [round(float(v), 4) for v in it["rois"][row][a]] for a, n in enumerate(s.schema.names)}
        return d

    @app.get("/api/health")
    def health():
        s = provider.get()
        return {"status": "ok", "index_version": s.index.version, "items": len(s.index), "model": s.index.model_fingerprint}

    @app.get("/api/schema")
    def schema():
        s = provider.get()
        d = s.schema.to_dict()
        d["region_edits"] = [{"region": r, "attribute": a} for r, a in s.schema.region_pairs()]
        for a in s.schema.attributes:
            if a.describes and not any(e["region"] == a.region and e["attribute"] == a.describes for e in d["region_edits"]):
                d["region_edits"].append({"region": a.region, "attribute": a.describes})
        return d

    @app.get("/api/items")
    def items(offset: int = Q(0, ge=0), limit: int = Q(24, ge=1, le=200), split: str | None = Q(None, max_length=16), q: str | None = Q(None, max_length=200)):
        s = provider.get()
        it = s.index.items
        rows = range(len(s.index))
        if split:
            rows = [r for r in rows if it["splits"][r] == split]
        if q:
            ql = q.lower()
            rows = [r for r in rows if ql in str(it["titles"][r]).lower() or ql in str(it["ids"][r]).lower()]
        rows = list(rows)
        return {"total": len(rows), "offset": offset, "items": [item_json(s, r) for r in rows[offset : offset + limit]]}

    @app.get("/api/items/{item_id}")
    def item(item_id: str):
        s = provider.get()
        return item_json(s, item_or_404(s, item_id), full=True)

    @app.get("/api/items/{item_id}/image")
    async def image(item_id: str, size: int = Q(256, ge=16, le=1024)):
        s = provider.get()
        row = item_or_404(s, item_id)
        key = (s.index.version, row, size)
        with thumbs_lock:
            data = thumbs.get(key)
        if data is None:
            data = await run(_thumbnail, str(s.index.items["images"][row]), size)
            with thumbs_lock:
                thumbs[key] = data
                while len(thumbs) > 2048:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/search")
    async def search(body: SearchBody):
        s = provider.get()
        q = Query(item_id=body.item_id, edits=[parse_edit(e) for e in body.edits], filters=body.filters, k=body.k, offset=body.offset, extra_weight=body.extra_weight)
        return JSONResponse(await run(lambda: s.search(q).to_dict()))  # serialised in the worker, no re-encoding

    @app.post("/api/search/image")
    async def search_image(file: UploadFile = File(...), query: str = Form("{}")):
        s = provider.get()
        try:
            opts = json.loads(query)
            if not isinstance(opts, dict):
                raise ValueError
        except ValueError:
            raise HTTPException(400, "form field 'query' must be a JSON object (edits, filters, k, offset, extra_weight)") from None
        unknown = set(opts) - {"edits", "filters", "k", "offset", "extra_weight"}
        if unknown:
            raise HTTPException(400, f"unknown query fields: {', '.join(sorted(unknown))}")
        data = await file.read()
        try:
            edits = [parse_edit(str(e)) for e in opts.get("edits", [])]
            q = Query(image=None, edits=edits, filters={str(k): str(v) for k, v in dict(opts.get("filters", {})).items()},
                      k=int(opts.get("k", 12)), offset=int(opts.get("offset", 0)), extra_weight=float(opts.get("extra_weight", 1.0)))
        except (TypeError, ValueError) as e:
            raise HTTPException(400, f"bad query: {e}") from None
        q.image = await run(decode_image, data, "upload", MAX_IMAGE_PIXELS)
        return JSONResponse(await run(lambda: s.search(q).to_dict()))  # serialised in the worker, no re-encoding

    @app.get("/api/items/{item_id}/explain")
    async def explain(item_id: str, attribute: str = Q(..., max_length=100)):
        s = provider.get()
        row = item_or_404(s, item_id)
        a = _attribute_or_400(s, attribute)
        from .images import load_image

        im = await run(load_image, str(s.index.items["images"][row]))
        return Response(await run(_overlay, s, im, a), media_type="image/png")

    @app.post("/api/explain")
    async def explain_upload(file: UploadFile = File(...), attribute: str = Form(..., max_length=100)):
        s = provider.get()
        a = _attribute_or_400(s, attribute)
        im = await run(decode_image, await file.read(), "upload", MAX_IMAGE_PIXELS)
        return Response(await run(_overlay, s, im, a), media_type="image/png")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return BodyLimit(app, max_body) if max_body else app


def _attribute_or_400(s: Searcher, name: str) -> int:
    try:
        return s.schema.attribute_index(name)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None


def _thumbnail(path: str, size: int) -> bytes:
    from .images import load_image

    try:
        im = load_image(path)
    except ImageDecodeError as e:
        raise HTTPException(404, f"image unavailable: {e}") from None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _overlay(s: Searcher, im, attribute: int) -> bytes:
    from .explain import activation_overlay

    model = s.model()
    with s._model_lock:
        return activation_overlay(model, im, attribute)


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, model: str | Path | None = None, max_body_mb: float = 8.0, timeout: float = 20.0, log=print) -> None:
    import uvicorn

    provider = SearcherProvider(index_dir, model)
    app = create_app(provider, int(max_body_mb * 2**20), timeout)
    s = provider.get()
    log(f"serving {index_dir} (version {s.index.version}, {len(s.index)} items) at http://{host}:{port}/  (API docs: /docs)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        provider.close()
