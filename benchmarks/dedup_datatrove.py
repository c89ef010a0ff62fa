"""HF datatrove's MinHash deduplication on a JSON-lines corpus, for side-by-side comparison
with `quark-bench-curate dedup`: the same shingles (word 5-grams), 128 hashes as 16 buckets
of 8. Runs datatrove's four stages (signatures, buckets, clusters, filter) in one process,
one task each, and prints one JSON line: documents, seconds, documents/s, removed ids.

    python benchmarks/dedup_datatrove.py CORPUS.jsonl REMOVED_IDS_OUT
"""
import json
import os
import sys
import tempfile
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig


def main(corpus, removed_out):
    config = MinhashConfig(hash_config=HashConfig(precision=64), n_grams=5, num_buckets=16, hashes_per_bucket=8)
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    os.makedirs(data)
    os.symlink(os.path.abspath(corpus), os.path.join(data, "corpus.jsonl"))
    reader = lambda: JsonlReader(data, id_key="id")
    stages = [
        [reader(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=config)],
        [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=config)],
        [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config)],
        [reader(), MinhashDedupFilter(input_folder=f"{work}/remove_ids", exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)),
         JsonlWriter(f"{work}/kept", compression=None)],
    ]
    tasks = [1, config.num_buckets, 1, 1]
    started = time.perf_counter()
    for i, (pipeline, n) in enumerate(zip(stages, tasks)):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=1, logging_dir=f"{work}/logs/{i}").run()
    seconds = time.perf_counter() - started
    removed = []
    for name in sorted(os.listdir(f"{work}/removed")):
        with open(f"{work}/removed/{name}") as f:
            removed += [json.loads(line)["id"] for line in f]
    with open(removed_out, "w") as f:
        f.write("\n".join(sorted(removed)) + "\n")
    documents = sum(1 for _ in open(corpus))
    print(json.dumps({"impl": "datatrove", "documents": documents, "seconds": seconds,
                      "documents_per_s": documents / seconds, "removed": len(removed)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
