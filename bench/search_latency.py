"""Search latency, throughput, build time and memory of the vector backends.

    python bench/search_latency.py [--sizes 10000,100000,1000000] [--queries 200] [--milvus-max 100000]

Vectors have the real representation width (12 attributes × 64 dims = 768, Shopping100k's
attribute count with the default embedding size) and the structure of FashionSearchNet's: each
64-d block is the unit-normalised sum of one of its attribute's value prototypes and noise, so
items sharing attribute values are near each other, as in a trained model (pure random vectors
would be a worst case no real index sees). Queries are gallery items with one block replaced by
another value's prototype and that block's weight doubled: attribute-manipulation queries.

For each size: FAISS exact (IndexFlatIP; single queries run as one BLAS product), FAISS
approximate (IVF and HNSW, each re-ranking 4×k candidates exactly) with recall@30 against exact,
and milvus-lite (up to --milvus-max items). Latency is per single query (p50/p95); throughput
runs batches of 64 queries. The noise is calibrated so a block's cosine to its prototype matches
what trained models give (--proto-cos).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fashionsearchnet.index.backends import FaissBackend, MilvusBackend  # noqa: E402

SHOPPING100K = (16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15)
D = 64


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def noise_scale(proto_cos: float) -> float:
    """Per-dimension noise σ giving E[cos(block, its prototype)] ≈ proto_cos in D dimensions."""
    return float(np.sqrt((1.0 / proto_cos**2 - 1.0) / D))


def make_vectors(n: int, seed: int = 0, chunk: int = 100_000, sigma: float = 0.09):
    rng = np.random.default_rng(seed)
    protos = [rng.normal(size=(v, D)).astype(np.float32) for v in SHOPPING100K]
    protos = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in protos]
    out = np.empty((n, len(SHOPPING100K) * D), np.float32)
    labels = np.empty((n, len(SHOPPING100K)), np.int16)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        for a, p in enumerate(protos):
            lab = rng.integers(0, len(p), m)
            block = p[lab] + rng.normal(scale=sigma, size=(m, D)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[s : s + m, a * D : (a + 1) * D] = block
            labels[s : s + m, a] = lab
    return out, labels, protos


def make_queries(vectors, labels, protos, q: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(vectors), q)
    out = vectors[rows].copy()
    for j in range(q):
        a = int(rng.integers(len(protos)))
        v = (int(labels[rows[j], a]) + 1 + int(rng.integers(len(protos[a]) - 1))) % len(protos[a])
        out[j, a * D : (a + 1) * D] = protos[a][v] * 2.0  # prototype substitution, weight 1 + extra 1
    return out


def time_queries(backend, queries, k=30):
    lat = []
    for q in queries:
        t = time.perf_counter()
        backend.search(q[None], k)
        lat.append(time.perf_counter() - t)
    batch = min(len(queries), 64)
    t = time.perf_counter()
    for s in range(0, len(queries), batch):
        backend.search(queries[s : s + batch], k)
    qps = len(queries) / (time.perf_counter() - t)
    lat = np.asarray(lat) * 1000
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), qps


def recall(exact_rows, approx_rows):
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact_rows, approx_rows)]))


def row(n, name, build, mem, timing, rec):
    p50, p95, qps = timing
    print(f"{n:>9} {name:<24} {build:>8.1f} {mem:>9.2f} {p50:>8.2f} {p95:>8.2f} {qps:>8.0f} {rec:>10.3f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--milvus-max", type=int, default=100_000, help="largest gallery sent to milvus-lite")
    ap.add_argument("--nprobe", default="32,128", help="IVF probes to measure (comma list)")
    ap.add_argument("--ef-search", default="128,256,512", help="HNSW search depths to measure (comma list)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--kinds", default="flat,ivf,hnsw,milvus")
    ap.add_argument("--proto-cos", type=float, default=0.80,
                    help="mean cosine of an item's block to its value prototype (0.80 measured on the CAD model's test "
                         "embeddings, 0.88 on Fashion Product's; lower is harder for approximate search)")
    args = ap.parse_args(argv)
    import faiss

    kinds = set(args.kinds.split(","))
    sigma = noise_scale(args.proto_cos)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads); dim {len(SHOPPING100K) * D}; "
          f"block-to-prototype cosine {args.proto_cos} (noise σ {sigma:.4f}); {args.queries} attribute-manipulation queries, k=30")
    print(f"{'items':>9} {'backend':<24} {'build s':>8} {'+mem GiB':>9} {'p50 ms':>8} {'p95 ms':>8} {'QPS':>8} {'recall@30':>10}")
    for n in (int(x) for x in args.sizes.split(",")):
        vectors, labels, protos = make_vectors(n, sigma=sigma)
        queries = make_queries(vectors, labels, protos, args.queries)
        base = rss_gib()
        t = time.perf_counter()
        flat = FaissBackend(FaissBackend.build(vectors, "flat"), vectors, "flat")
        b_flat, m_flat = time.perf_counter() - t, rss_gib() - base
        exact = np.concatenate([flat.search(queries[s : s + 1], 30)[1] for s in range(len(queries))])
        if "flat" in kinds:
            row(n, "faiss exact (flat)", b_flat, m_flat, time_queries(flat, queries), 1.0)
        del flat
        if "ivf" in kinds:
            base = rss_gib()
            t = time.perf_counter()
            index = FaissBackend.build(vectors, "ivf")
            b, m = time.perf_counter() - t, rss_gib() - base
            for npb in (int(x) for x in args.nprobe.split(",")):
                ivf = FaissBackend(index, vectors, "ivf", rerank=4, nprobe=npb)
                row(n, f"faiss IVF{index.nlist} np{npb}", b, m, time_queries(ivf, queries), recall(exact, ivf.search(queries, 30)[1]))
            del index, ivf
        if "hnsw" in kinds:
            base = rss_gib()
            t = time.perf_counter()
            index = FaissBackend.build(vectors, "hnsw", hnsw_m=args.hnsw_m)
            b, m = time.perf_counter() - t, rss_gib() - base
            for ef in (int(x) for x in args.ef_search.split(",")):
                h = FaissBackend(index, vectors, "hnsw", rerank=4, ef_search=ef)
                row(n, f"faiss HNSW{args.hnsw_m} ef{ef}", b, m, time_queries(h, queries), recall(exact, h.search(queries, 30)[1]))
            del index, h
        if "milvus" in kinds and n <= args.milvus_max:
            with tempfile.TemporaryDirectory() as d:
                base = rss_gib()
                t = time.perf_counter()
                MilvusBackend.build(str(Path(d) / "m.db"), "bench", vectors)
                mil = MilvusBackend(str(Path(d) / "m.db"), "bench", vectors)
                b, m = time.perf_counter() - t, rss_gib() - base
                timing = time_queries(mil, queries[: min(len(queries), 50)])
                rec = recall(exact[:20], mil.search(queries[:20], 30)[1])
                mil.close()
            row(n, "milvus-lite (FLAT)", b, m, timing, rec)
        elif "milvus" in kinds:
            print(f"{n:>9} {'milvus-lite (FLAT)':<24} {'skipped: above --milvus-max':>40}", flush=True)
        del vectors
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
