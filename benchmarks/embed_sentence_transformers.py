"""sentence-transformers' side of scripts/bench-embed: the same passages, batch size and
threads as quark-bench-embed, the timer around `encode` alone (model loaded, passages read).

  embed_sentence_transformers.py MODEL IN.jsonl OUT.f32 BATCH
"""
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def main():
    model_dir, path, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    threads = int(os.environ.get("QUARK_THREADS", "2"))
    torch.set_num_threads(threads)
    texts = [json.loads(line)["text"] for line in open(path)]
    model = SentenceTransformer(model_dir, device="cpu")
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)
    seconds = time.perf_counter() - started
    vectors.astype("<f4").tofile(out)
    print(json.dumps({"side": "sentence-transformers", "passages": len(texts), "seconds": seconds,
                      "passages_per_s": len(texts) / seconds, "batch_size": batch, "threads": threads,
                      "version": __import__("sentence_transformers").__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
