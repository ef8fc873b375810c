"""Search latency, throughput, build time and memory of the vector backends.

    python bench/search_latency.py [--sizes 10000,100000,1000000] [--queries 200] [--milvus-max 100000]

Vectors have the real representation width (12 attributes × 64 dims = 768, Shopping100k's
attribute count with the default embedding size) and the structure of FashionSearchNet's: each
64-d block is the unit-normalised sum of one of its attribute's value prototypes and noise, so
items sharing attribute values are near each other, as in a trained model (pure random vectors
would be a worst case no real index sees). Queries are gallery items with one block replaced by
another value's prototype and that block's weight doubled: attribute-manipulation queries.

For each size: FAISS exact (IndexFlatIP), FAISS approximate (IVF, exact re-ranking of 4×k
candidates) with its recall@30 against exact, and milvus-lite (up to --milvus-max items).
Latency is per single query (p50/p95); throughput runs batches of queries.
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


def make_vectors(n: int, seed: int = 0, chunk: int = 100_000):
    rng = np.random.default_rng(seed)
    protos = [rng.normal(size=(v, D)).astype(np.float32) for v in SHOPPING100K]
    protos = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in protos]
    out = np.empty((n, len(SHOPPING100K) * D), np.float32)
    labels = np.empty((n, len(SHOPPING100K)), np.int16)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        for a, p in enumerate(protos):
            lab = rng.integers(0, len(p), m)
            block = p[lab] + rng.normal(scale=0.35, size=(m, D)).astype(np.float32)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--milvus-max", type=int, default=100_000, help="largest gallery sent to milvus-lite")
    ap.add_argument("--nprobe", type=int, default=32)
    args = ap.parse_args(argv)
    import faiss

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads); dim {len(SHOPPING100K) * D}")
    print(f"{'items':>9} {'backend':<22} {'build s':>8} {'+mem GiB':>9} {'p50 ms':>8} {'p95 ms':>8} {'QPS':>8} {'recall@30':>10}")
    for n in (int(x) for x in args.sizes.split(",")):
        vectors, labels, protos = make_vectors(n)
        queries = make_queries(vectors, labels, protos, args.queries)
        base = rss_gib()
        t = time.perf_counter()
        flat = FaissBackend(FaissBackend.build(vectors, "flat"), vectors, "flat")
        b_flat, m_flat = time.perf_counter() - t, rss_gib() - base
        p50, p95, qps = time_queries(flat, queries)
        exact = flat.search(queries, 30)[1]
        print(f"{n:>9} {'faiss exact (flat)':<22} {b_flat:>8.1f} {m_flat:>9.2f} {p50:>8.2f} {p95:>8.2f} {qps:>8.0f} {'1.000':>10}", flush=True)
        del flat
        base = rss_gib()
        t = time.perf_counter()
        ivf = FaissBackend(FaissBackend.build(vectors, "ivf"), vectors, "ivf", rerank=4, nprobe=args.nprobe)
        b_ivf, m_ivf = time.perf_counter() - t, rss_gib() - base
        p50, p95, qps = time_queries(ivf, queries)
        rec = recall(exact, ivf.search(queries, 30)[1])
        nlist = ivf.index.nlist
        print(f"{n:>9} {f'faiss IVF{nlist} np{args.nprobe}':<22} {b_ivf:>8.1f} {m_ivf:>9.2f} {p50:>8.2f} {p95:>8.2f} {qps:>8.0f} {rec:>10.3f}", flush=True)
        del ivf
        if n <= args.milvus_max:
            with tempfile.TemporaryDirectory() as d:
                base = rss_gib()
                t = time.perf_counter()
                MilvusBackend.build(str(Path(d) / "m.db"), "bench", vectors)
                mil = MilvusBackend(str(Path(d) / "m.db"), "bench", vectors)
                b_m, m_m = time.perf_counter() - t, rss_gib() - base
                p50, p95, qps = time_queries(mil, queries[: min(len(queries), 50)])
                rec = recall(exact[:20], mil.search(queries[:20], 30)[1])
                mil.close()
            print(f"{n:>9} {'milvus-lite (FLAT)':<22} {b_m:>8.1f} {m_m:>9.2f} {p50:>8.2f} {p95:>8.2f} {qps:>8.0f} {rec:>10.3f}", flush=True)
        else:
            print(f"{n:>9} {'milvus-lite (FLAT)':<22} {'skipped: above --milvus-max':>40}", flush=True)
        del vectors
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
