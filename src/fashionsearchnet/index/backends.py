"""Inner-product search over stored vectors: brute force (numpy), FAISS, Milvus.

Every backend answers ``search(queries (Q, dim), k, allowed) -> (scores (Q, k), rows (Q, k))`` with
rows indexing the stored order, −1 padding where fewer than k are allowed. ``allowed`` is an
optional boolean mask over rows (hard filters). Approximate kinds (FAISS IVF / HNSW) fetch
``rerank`` × k candidates and re-rank them exactly against the stored vectors, so their scores are
always exact inner products.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("faiss", "milvus", "numpy")
NPROBE, EF_SEARCH = 16, 256  # default IVF lists probed and HNSW search depth (see bench/search_latency.py)
QUERY_CHUNK = 64  # exact FAISS search runs as BLAS products over this many queries at a time


class VectorBackend(Protocol):
    name: str

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a (Q, N) score matrix, best first; ties by lower row."""
    q, n = scores.shape
    k_eff = min(k, n)
    out_s = np.full((q, k), -np.inf, np.float32)
    out_i = np.full((q, k), -1, np.int64)
    if k_eff == 0:
        return out_s, out_i
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if k_eff < n else np.tile(np.arange(n), (q, 1))
    ps = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -ps), axis=1)
    out_i[:, :k_eff] = np.take_along_axis(part, order, 1)
    out_s[:, :k_eff] = np.take_along_axis(ps, order, 1)
    return out_s, out_i


class NumpyBackend:
    """Brute force: the reference every other backend is tested against."""

    name = "numpy"

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def search(self, queries, k, allowed=None):
        scores = np.asarray(queries, np.float32) @ np.asarray(self.vectors, np.float32).T
        if allowed is not None:
            scores = np.where(allowed[None, :], scores, -np.inf)
        s, i = _topk(scores, k)
        i[~np.isfinite(s)] = -1
        return s, i

    def close(self):
        pass


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the FAISS backend needs faiss-cpu: pip install 'fashionsearchnet[faiss]' (or use --backend numpy)") from None
    return faiss


class FaissBackend:
    """FAISS inner product: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate, re-ranked exactly)."""

    name = "faiss"

    def __init__(self, index, vectors: np.ndarray, kind: str, rerank: int = 4, nprobe: int = NPROBE, ef_search: int = EF_SEARCH):
        self.index, self.vectors, self.kind = index, vectors, kind
        self.rerank, self.nprobe, self.ef_search = rerank, nprobe, ef_search

    @staticmethod
    def build(vectors: np.ndarray, kind: str = "flat", nlist: int | None = None, hnsw_m: int = 32, seed: int = 0):
        faiss = _faiss()
        v = np.ascontiguousarray(vectors, np.float32)
        n, dim = v.shape
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = nlist or max(1, min(int(np.sqrt(n)), n // 39 or 1))
            quant = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quant, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = v[rng.choice(n, min(n, nlist * 64), replace=False)] if n > nlist * 64 else v
            index.cp.seed = seed
            index.train(train)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
        else:
            raise ValueError(f"unknown FAISS index kind {kind!r}; valid: flat, ivf, hnsw")
        if n:
            index.add(v)
        return index

    def search(self, queries, k, allowed=None):
        faiss = _faiss()
        q = np.ascontiguousarray(queries, np.float32)
        n = self.index.ntotal
        fetch = k if self.kind == "flat" else min(n, max(k * self.rerank, k))
        params = None
        if allowed is not None:
            sel = faiss.IDSelectorBitmap(np.packbits(allowed.astype(np.uint8), bitorder="little"))
            params = {"flat": faiss.SearchParameters, "ivf": faiss.SearchParametersIVF, "hnsw": faiss.SearchParametersHNSW}[self.kind](sel=sel)
        elif self.kind != "flat":
            params = {"ivf": faiss.SearchParametersIVF, "hnsw": faiss.SearchParametersHNSW}[self.kind]()
        if self.kind == "ivf":
            params.nprobe = self.nprobe
        if self.kind == "hnsw":
            params.efSearch = max(self.ef_search, fetch)
        if fetch == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.kind == "flat" and self.vectors is not None and len(self.vectors) == n and len(q):
            # Exact search as BLAS matrix products, QUERY_CHUNK queries at a time: FAISS scans one
            # query on one thread and its batched path was 4-7x slower here (bench/search_latency.py).
            # Same exact inner products; the FAISS flat index stays the stored format.
            nb = NumpyBackend(self.vectors)
            parts = [nb.search(q[c : c + QUERY_CHUNK], k, allowed) for c in range(0, len(q), QUERY_CHUNK)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        s, i = self.index.search(q, fetch, params=params) if params is not None else self.index.search(q, fetch)
        if self.kind == "flat":
            s = np.where(i < 0, -np.inf, s).astype(np.float32)
            return _pad(s, i, k)
        return _rerank(q, i, self.vectors, k)

    def close(self):
        pass


def _pad(s, i, k):
    if s.shape[1] < k:
        s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=-np.inf)
        i = np.pad(i, ((0, 0), (0, k - i.shape[1])), constant_values=-1)
    return s, i.astype(np.int64)


def _rerank(q: np.ndarray, cand: np.ndarray, vectors: np.ndarray, k: int):
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    for r in range(len(q)):
        c = np.unique(cand[r][cand[r] >= 0])
        if len(c) == 0:
            continue
        sc = np.asarray(vectors[c], np.float32) @ q[r]
        s, j = _topk(sc[None, :], k)
        ok = j[0] >= 0
        out_s[r, ok], out_i[r, ok] = s[0, ok], c[j[0, ok]]
    return out_s, out_i


def _is_local(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def _release_lite(uri: str) -> None:
    """Stop milvus-lite's in-process server for a file URI, releasing its lock on the file
    (the index renames its version folder after building, and a server kept on the old path
    would hold the lock)."""
    if not _is_local(uri):
        return
    try:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)
    except (ImportError, AttributeError):  # other milvus-lite versions manage this themselves
        pass


class MilvusBackend:
    """Milvus through pymilvus: milvus-lite with a local file URI, or a server/cluster URI."""

    name = "milvus"

    def __init__(self, uri: str, collection: str, vectors: np.ndarray, token: str | None = None):
        from pymilvus import MilvusClient

        self.uri = uri
        self.client = MilvusClient(uri, token=token or "")
        self.collection, self.vectors = collection, vectors
        self.client.load_collection(collection)

    @staticmethod
    def build(uri: str, collection: str, vectors: np.ndarray, token: str | None = None, batch: int = 5000) -> None:
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError:
            raise ImportError("the Milvus backend needs pymilvus (and milvus-lite for file URIs): pip install 'fashionsearchnet[milvus]'") from None
        client = MilvusClient(uri, token=token or "")
        if client.has_collection(collection):
            client.drop_collection(collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        ip = client.prepare_index_params()
        ip.add_index(field_name="vec", index_type="FLAT", metric_type="IP")
        client.create_collection(collection, schema=schema, index_params=ip)
        for s in range(0, len(vectors), batch):
            chunk = np.asarray(vectors[s : s + batch], np.float32)
            client.insert(collection, [{"row": s + j, "vec": chunk[j].tolist()} for j in range(len(chunk))])
        client.flush(collection)
        client.close()
        _release_lite(uri)

    def search(self, queries, k, allowed=None):
        q = np.asarray(queries, np.float32)
        expr = ""
        if allowed is not None:
            rows = np.flatnonzero(allowed)
            if len(rows) == 0:
                return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            expr = f"row in {json.dumps(rows.tolist())}"
        # Milvus caps topk at 16384; ask for a few more and re-rank so ties order like the others
        fetch = min(16384, k + 8)
        res = self.client.search(self.collection, data=q.tolist(), limit=fetch, filter=expr, output_fields=["row"], search_params={"metric_type": "IP"})
        cand = np.full((len(q), fetch), -1, np.int64)
        for r, hits in enumerate(res):
            for j, h in enumerate(hits):
                cand[r, j] = int(h["entity"]["row"] if "entity" in h and "row" in h["entity"] else h["id"])
        return _rerank(q, cand, self.vectors, k)

    def close(self):
        self.client.close()
        _release_lite(self.uri)


def open_backend(name: str, version_dir: Path, vectors: np.ndarray, manifest: dict) -> VectorBackend:
    if name == "numpy":
        return NumpyBackend(vectors)
    if name == "faiss":
        faiss = _faiss()
        spec = manifest.get("faiss", {})
        index = faiss.read_index(str(version_dir / "faiss.index"))
        return FaissBackend(index, vectors, spec.get("kind", "flat"), spec.get("rerank", 4), spec.get("nprobe", NPROBE), spec.get("ef_search", EF_SEARCH))
    if name == "milvus":
        spec = manifest["milvus"]
        uri = spec["uri"] if not spec.get("local") else str(version_dir / spec["uri"])
        return MilvusBackend(uri, spec["collection"], vectors, spec.get("token"))
    raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
