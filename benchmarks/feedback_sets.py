"""The feedback benchmark: every set of benchmarks/feedback_sets.json through the real loop.

A fresh `quark up` starts cold (the public-domain corpus, the default CPU model) and serves
its first champion; its data directory is then restored from a copy before each set, so every
set starts from the same champion. For each set, each prompt is asked through the gateway and answered with
its correction through POST /v1/feedback (rating 3: neutral, so the live negative-feedback
rollback stays out of the measurement); the augmenter releases them (augment.min_examples
is the set's size), the trainer fine-tunes, the evaluator gates. Reported per set and in
total: promoted or rejected, the share of corrected prompts answered with the correction at
greedy decoding before and after (the evaluator's report), the held-out perplexity change,
the word-order gain the champion finds in the corrections (the gate's check that they read as
language), and the wall time from the first feedback to the verdict.

  feedback_sets.py QUARK_BINARY SETS_JSON [NAME ...]
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

KEY = "quark-local-key"
VERDICT_TIMEOUT = 1200


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """`quark up` on a data directory, with its own ports."""

    def __init__(self, quark, data, extra_env=None):
        self.quark, self.data = quark, data
        self.port = free_port()
        self.env = dict(
            os.environ,
            QUARK__DATA_DIR=data,
            QUARK__BROKER__LISTEN=f"127.0.0.1:{free_port()}",
            QUARK__GATEWAY__LISTEN=f"127.0.0.1:{self.port}",
            QUARK__SCHEMA_REGISTRY__LISTEN="127.0.0.1:0",
            **(extra_env or {}),
        )
        self.log = open(os.path.join(data, "..", os.path.basename(data) + ".up.log"), "ab")
        self.process = subprocess.Popen([quark, "up", "--quiet"], env=self.env, stdout=self.log, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 1800
        while not self.serving():
            if self.process.poll() is not None:
                sys.exit(f"quark up exited; see {self.log.name}")
            if time.time() > deadline:
                sys.exit("no model served within 30 minutes")
            time.sleep(1)

    def serving(self):
        try:
            # The champion, not just any alias: a first model is challenger a moment before.
            with urllib.request.urlopen(self.url + "/v1/models/champion", timeout=5) as r:
                return bool(json.load(r).get("id"))
        except OSError:
            return False

    def post(self, path, body, key=None):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"content-type": "application/json"})
        if key:
            request.add_header("authorization", f"Bearer {key}")
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)

    def models(self):
        return json.loads(subprocess.check_output([self.quark, "models", "--json"], env=self.env))

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def report(uri):
    if not uri:
        return None
    path = urllib.parse.urlparse(uri).path
    with open(path) as f:
        return json.load(f)


def taught_share(measurement):
    scores = [s["score"] for s in (measurement or {}).get("samples", []) if s["kind"] == "taught"]
    return sum(scores) / len(scores) if scores else None


def run_set(quark, snapshot, data, one):
    # Artifacts are named by absolute URIs: each set runs in the cold start's own directory,
    # restored from the snapshot.
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)
    size = len(one["corrections"])
    stack = Stack(quark, data, {"QUARK__AUGMENT__MIN_EXAMPLES": str(size)})
    try:
        champion = stack.models()["aliases"]["champion"]
        started = time.time()
        for c in one["corrections"]:
            reply = stack.post("/v1/chat/completions", {"model": "champion", "messages": [{"role": "user", "content": c["prompt"]}], "max_tokens": 8})
            stack.post("/v1/feedback", {"request_id": reply["id"], "rating": 3, "correction": c["correction"]}, KEY)
        while True:
            listing = stack.models()
            children = [m for m in listing["models"] if m["parent_model_id"] == champion]
            judged = [m for m in children if m["evaluations"]]
            if judged:
                break
            if time.time() - started > VERDICT_TIMEOUT:
                return {"name": one["name"], "error": "no verdict in time"}
            time.sleep(1)
        wall = time.time() - started
    finally:
        stack.stop()
        shutil.copy(os.path.join(data, "logs", "quark.log"), data + f".{one['name']}.log")
    model = judged[-1]
    evaluation = model["evaluations"][-1]
    full = report(evaluation.get("report"))
    metrics = model["metrics"]
    if full:
        before, after = taught_share(full["baseline"]), taught_share(full["candidate"])
        ppl = full["candidate"]["metrics"]["perplexity"] / full["baseline"]["metrics"]["perplexity"] - 1
        order_gain = full["baseline"]["metrics"].get("taught_order_gain")
        measured_by = "evaluator"
    else:
        # Rejected by the trainer's own reading: no checkpoint fitted the gate's limits.
        before, after = metrics.get("taught_exact_before"), metrics.get("taught_exact")
        checks = {c["metric"]: c for c in evaluation["failed"]}
        p = checks.get("perplexity")
        ppl = p["candidate"] / p["baseline"] - 1 if p else None
        order_gain = None
        measured_by = "trainer"
    return {
        "name": one["name"], "kind": one["kind"], "honest": one["honest"], "size": size,
        "promoted": evaluation["passed"], "exact_before": before, "exact_after": after,
        "perplexity_change": ppl, "order_gain": order_gain, "wall_s": wall, "measured_by": measured_by,
        "steps": metrics.get("chosen_step"), "failed": [c["metric"] for c in evaluation["failed"]],
    }


def pct(x):
    return "-" if x is None else f"{100 * x:.0f} %"


def main():
    quark, sets_path, *only = sys.argv[1:]
    sets = json.load(open(sets_path))["sets"]
    sets = [s for s in sets if not only or s["name"] in only]
    # BENCH_WORK names the work directory of an earlier run to reuse its cold start.
    work = os.environ.get("BENCH_WORK") or tempfile.mkdtemp(prefix="quark-bench-feedback-")
    data, snapshot = os.path.join(work, "quark"), os.path.join(work, "cold")
    if not os.path.isdir(snapshot):
        os.makedirs(data)
        started = time.time()
        Stack(quark, data).stop()
        shutil.copytree(data, snapshot)
        print(f"cold start: {time.time() - started:.0f} s (the data directory is restored for each set)", flush=True)
    results = []
    for one in sets:
        r = run_set(quark, snapshot, data, one)
        results.append(r)
        print(json.dumps(r), flush=True)
    print("\n| set | kind | corrections | verdict | answered with the correction (greedy) before → after | held-out perplexity | word-order gain (champion) | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | | | {r['error']} | | | | |")
            continue
        verdict = "promoted" if r["promoted"] else "rejected (" + ", ".join(r["failed"]) + ")"
        ppl = "-" if r["perplexity_change"] is None else f"{100 * r['perplexity_change']:+.2f} %"
        gain = "-" if r["order_gain"] is None else f"{r['order_gain']:.2f}"
        print(f"| {r['name']} | {r['kind']} | {r['size']} | {verdict} | {pct(r['exact_before'])} → {pct(r['exact_after'])} | {ppl} | {gain} | {r['wall_s']:.0f} s |")
    ok = [r for r in results if "error" not in r]
    honest = [r for r in ok if r["honest"]]
    noisy = [r for r in ok if not r["honest"]]
    if honest:
        promoted = [r for r in honest if r["promoted"]]
        answered = sum(r["exact_after"] * r["size"] for r in promoted) / max(1, sum(r["size"] for r in promoted))
        print(f"\nhonest sets promoted: {len(promoted)}/{len(honest)}; corrected prompts answered with the correction in promoted sets: {pct(answered)}")
    if noisy:
        print(f"noisy sets rejected: {sum(not r['promoted'] for r in noisy)}/{len(noisy)}")
    if os.environ.get("KEEP_BENCH") is None and os.environ.get("BENCH_WORK") is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
