"""Python's side of scripts/bench-retrieval: LanceDB (the `lancedb` package) and
sentence-transformers doing the job quark-bench-retrieval's `run` does, on the same passages
and queries, with the same model, batch size (32) and threads.

  retrieval_lancedb.py MODEL PASSAGES.jsonl QUERIES.jsonl DIR

Timers: the embedding of every passage; the table's creation with its rows and the BM25 index;
each query from its text to its hits (its embedding included for vector and hybrid search).
Hybrid search is LanceDB's own, fused by its RRFReranker (K = 60, as Quark's).
"""
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import lancedb
import pyarrow as pa
import torch
from lancedb.index import FTS
from lancedb.rerankers import RRFReranker
from sentence_transformers import SentenceTransformer

K = 10


def lines(path):
    return [json.loads(line) for line in open(path)]


def search(table, model, mode, query):
    if mode == "full_text":
        return table.search(query, query_type="fts").limit(K).to_list()
    vector = model.encode([query], convert_to_numpy=True, show_progress_bar=False)[0]
    if mode == "vector":
        return table.search(vector).distance_type("cosine").limit(K).to_list()
    hybrid = table.search(query_type="hybrid").vector(vector).text(query).distance_type("cosine")
    return hybrid.rerank(RRFReranker(K=60)).limit(K).to_list()


def main():
    model_dir, passages, queries, directory = sys.argv[1:5]
    threads = int(os.environ.get("QUARK_THREADS", "2"))
    torch.set_num_threads(threads)
    rows = lines(passages)
    model = SentenceTransformer(model_dir, device="cpu")
    started = time.perf_counter()
    vectors = model.encode([r["text"] for r in rows], batch_size=32, convert_to_numpy=True,
                           show_progress_bar=False)
    embed_s = time.perf_counter() - started
    data = pa.table({
        "id": [r["id"] for r in rows],
        "text": [r["text"] for r in rows],
        "document_id": [r["document_id"] for r in rows],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()),
                                                    vectors.shape[1]),
    })
    db = lancedb.connect(directory)  # opened before the timer, as Quark opens its store
    started = time.perf_counter()
    table = db.create_table("plays", data=data)
    table.create_index("text", config=FTS())
    append_s = time.perf_counter() - started
    asked = lines(queries)
    modes = {}
    for mode in ("vector", "full_text", "hybrid"):
        ranks, millis = [], []
        for q in asked:
            started = time.perf_counter()
            hits = search(table, model, mode, q["query"])
            millis.append((time.perf_counter() - started) * 1e3)
            ids = [h["id"] for h in hits]
            ranks.append(ids.index(q["passage_id"]) if q["passage_id"] in ids else None)
        millis.sort()
        n = len(ranks)
        pick = lambda p: millis[round((len(millis) - 1) * p)]
        modes[mode] = {
            "recall_1": sum(r is not None and r < 1 for r in ranks) / n,
            "recall_5": sum(r is not None and r < 5 for r in ranks) / n,
            "mrr_10": sum(0 if r is None else 1 / (r + 1) for r in ranks) / n,
            "p50_ms": pick(0.5), "p99_ms": pick(0.99),
        }
    print(json.dumps({"side": "python", "passages": len(rows), "queries": n, "threads": threads,
                      "embed_s": embed_s, "chunks_per_s": len(rows) / embed_s, "append_s": append_s,
                      "modes": modes, "lancedb": lancedb.__version__,
                      "sentence_transformers": __import__("sentence_transformers").__version__}))


if __name__ == "__main__":
    main()
