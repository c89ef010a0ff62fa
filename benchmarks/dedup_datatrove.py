"""HF datatrove's MinHash deduplication, beside `quark-bench-curate dedup`: the same JSON-lines
files in, the kept and removed documents written out as JSON lines, the same word 5-grams and
128 hashes as 16 buckets of 8, the same number of workers. Runs datatrove's four stages
(signatures, buckets, clusters, filter), timed from the first read to the last write, and
prints one JSON line: its settings, documents, seconds, documents/s, removed ids.

    python benchmarks/dedup_datatrove.py IN_DIR OUT_DIR WORKERS

IN_DIR holds the corpus as one or more .jsonl shards (a reader stage runs one task per shard).
"""
import json
import os
import sys
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig


def main(corpus, out, workers):
    workers = int(workers)
    shards = sorted(f for f in os.listdir(corpus) if f.endswith(".jsonl"))
    # Quark keeps digits as they are: so does datatrove here (its default turns them into 0).
    norm = TextNormConfig(norm_numbers=False)
    config = MinhashConfig(hash_config=HashConfig(precision=64), n_grams=5, num_buckets=16,
                           hashes_per_bucket=8, norm_config=norm)
    reader = lambda: JsonlReader(corpus, id_key="id", glob_pattern="*.jsonl")
    stages = [
        [reader(), MinhashDedupSignature(output_folder=f"{out}/sigs", config=config)],
        [MinhashDedupBuckets(input_folder=f"{out}/sigs", output_folder=f"{out}/buckets", config=config)],
        [MinhashDedupCluster(input_folder=f"{out}/buckets", output_folder=f"{out}/remove_ids", config=config)],
        [reader(), MinhashDedupFilter(input_folder=f"{out}/remove_ids",
                                      exclusion_writer=JsonlWriter(f"{out}/removed", compression=None)),
         JsonlWriter(f"{out}/kept", compression=None)],
    ]
    tasks = [len(shards), config.num_buckets, 1, len(shards)]
    started = time.perf_counter()
    for i, (pipeline, n) in enumerate(zip(stages, tasks)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(workers, n),
                              logging_dir=f"{out}/logs/{i}").run()
    seconds = time.perf_counter() - started
    removed = []
    for name in sorted(os.listdir(f"{out}/removed")):
        with open(f"{out}/removed/{name}") as f:
            removed += [json.loads(line)["id"] for line in f]
    with open(f"{out}/removed_ids.txt", "w") as f:
        f.write("\n".join(sorted(removed)) + "\n")
    documents = sum(1 for s in shards for _ in open(os.path.join(corpus, s)))
    settings = {
        "timed": "read JSON lines from disk → four stages → kept and removed JSON lines written",
        "files": len(shards), "workers": workers, "tasks per stage": tasks,
        "shingles": "word 5-grams of simplify_text (lower-cased, punctuation to spaces, digits kept) split by spaCy",
        "hashes": "16 buckets × 8, 64-bit; a duplicate is any bucket collision",
    }
    print(json.dumps({"impl": "datatrove", "settings": settings, "documents": documents, "seconds": seconds,
                      "documents_per_s": documents / seconds, "removed": len(removed)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
