"""Serving throughput side by side: Quark's gateway (continuous batching), the gateway of an
earlier Quark build (one generation at a time), and the peer (transformers' batched
`generate` behind a minimal HTTP wrapper, benchmarks/serving_peer.py), on the same
checkpoint, the same prompts and the same load. The peer runs twice: on 1 intra-op thread,
the same as Quark's batch (its default), and on 2, libtorch's default on 2 cores.

A `quark up` of the earlier build on a fresh data directory trains the cold-start model (the
default CPU shape, fewer steps: the weights' quality does not change the work of a decode
step) and serves it; this build serves a copy of that directory;
then each server in turn serves that checkpoint while `quark-bench-gateway` streams
completions at 1, 4, 16 and 64 concurrent clients, 16 and 128 new tokens each (the same
client, prompts, temperature and token budget for all). The servers run one after
the other, in one order and then the reverse; each side's figures are printed with its
settings, and the ratios are taken within one run.

  serving.py QUARK_BIN_DIR BASELINE_BIN_DIR LOAD_CLIENT PLAYS_DIR [RAW_JSON]
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

CONCURRENCY, TOKENS = [1, 4, 16, 64], [16, 128]
THREADS = 2
# Each side and its libtorch intra-op threads: the peer on Quark's 1 and on its own default.
SIDES = {"quark": 1, "baseline": THREADS, "peer-1t": 1, "peer-2t": THREADS}
PORT = 18180


def requests_for(concurrency):
    return max(8, 2 * concurrency)


def wait_ready(url, process, timeout=900):
    started = time.time()
    while time.time() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                models = json.load(r)["data"]
                if models:
                    return models[0]["id"]
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not become ready")


def stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def quark_env(data):
    env = dict(os.environ)
    env.update({
        "QUARK__DATA_DIR": data,
        "QUARK__BROKER__LISTEN": "127.0.0.1:19192",
        "QUARK__GATEWAY__LISTEN": f"127.0.0.1:{PORT}",
        "QUARK__SCHEMA_REGISTRY__LISTEN": "127.0.0.1:0",
        "QUARK__TELEMETRY__LOG": "warn",
        "QUARK__TRAINER__DEVICE": "cpu",
        "QUARK__TRAINER__PRETRAIN_STEPS": "60",
        "QUARK__GATEWAY__MAX_TOKENS": "512",
        # The model alone: the safety filter and the red-team suite are off on both builds.
        "QUARK__GATEWAY__MODERATION__ENABLED": "false",
        "QUARK__EVALUATE__RED_TEAM_PROMPTS": "0",
    })
    return env


def start_quark(bin_dir, data, log):
    return subprocess.Popen([os.path.join(bin_dir, "quark"), "up", "--quiet"], env=quark_env(data),
                            stdout=subprocess.DEVNULL, stderr=open(log, "a"))


def checkpoint_of(data, model_id):
    for root, dirs, files in os.walk(data):
        if os.path.basename(root) == model_id and "config.json" in files:
            return root
    raise SystemExit(f"no checkpoint directory for {model_id} under {data}")


def load(client, url, model, prompts):
    rows = []
    for tokens in TOKENS:
        for concurrency in CONCURRENCY:
            out = subprocess.check_output([client, url, model, prompts, str(concurrency), str(requests_for(concurrency)), str(tokens)])
            rows.append(json.loads(out))
    return rows


def main():
    quark_bin, baseline_bin, client, plays = sys.argv[1:5]
    work = tempfile.mkdtemp(prefix="quark-bench-serving-")
    data = os.path.join(work, "quark")
    url = f"http://127.0.0.1:{PORT}"
    # The earlier build trains the checkpoint and writes the data directory; this build serves
    # a copy of it. The other way round, the earlier build would refuse a database that this
    # build's newer migrations had touched.
    up = start_quark(baseline_bin, data, os.path.join(work, "cold.log"))
    champion = wait_ready(url, up)
    stop(up)
    data_of = {"baseline": data, "quark": os.path.join(work, "quark-copy")}
    shutil.copytree(data, data_of["quark"])
    checkpoint = checkpoint_of(data, champion)
    config = json.load(open(os.path.join(checkpoint, "config.json")))
    prompts = os.path.join(work, "prompts.txt")
    lines = [l.strip() for l in open(os.path.join(plays, "hamlet_gut.txt")).read().splitlines()[400:]]
    with open(prompts, "w") as f:
        f.write("\n".join([l for l in lines if 6 <= len(l.split()) <= 12][:256]) + "\n")
    print(f"checkpoint: {config['n_layer']}×{config['n_head']}×{config['n_embd']}, block {config['n_positions']}, "
          f"vocab {config['vocab_size']}; prompts: 256 lines of Hamlet (6-12 words), one a request in turn; "
          f"each request streams max_tokens new tokens at temperature 0.8; requests per run: max(8, 2 × clients); "
          f"libtorch intra-op threads: quark's batch {SIDES['quark']} (gateway.batch.threads, its default), the baseline "
          f"{SIDES['baseline']} (libtorch's default on {os.cpu_count()} cores), peer-1t {SIDES['peer-1t']} and peer-2t "
          f"{SIDES['peer-2t']} (torch.set_num_threads); load client quark-bench-gateway (Rust, tokio)")
    print("sides: quark = this build's gateway (continuous batching, defaults: 64 requests, 16,384 tokens); "
          "baseline = the earlier build's gateway (one generation at a time); "
          "peer-1t, peer-2t = transformers batched generate (static batches of up to 64, answers sent whole)")

    def run_side(side):
        log = os.path.join(work, f"{side}.log")
        if side.startswith("peer"):
            process = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "serving_peer.py"),
                                        checkpoint, str(PORT), str(SIDES[side])], stderr=open(log, "a"))
            model = wait_ready_peer(url, process)
        else:
            process = start_quark(quark_bin if side == "quark" else baseline_bin, data_of[side], log)
            model = wait_ready(url, process)
            assert model == champion, (model, champion)
            # Each build is the one it claims to be: only the batching gateway reports its batch.
            request = urllib.request.Request(url + "/v1/admin/status", headers={"authorization": "Bearer quark-local-key"})
            status = json.load(urllib.request.urlopen(request, timeout=10))
            assert ("batch" in status) == (side == "quark"), (side, status)
        try:
            return load(client, url, model, prompts)
        finally:
            stop(process)

    results = {}
    for run, order in enumerate([list(SIDES), list(reversed(SIDES))]):
        for side in order:
            results[(run, side)] = run_side(side)
        print(f"\nrun {run + 1}, order {' → '.join(order)}")
        print("| new tokens | clients | side | requests/s | tokens/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | latency p50 / p99 (ms) | errors | quark ÷ side (tokens/s) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for i in range(len(TOKENS) * len(CONCURRENCY)):
            for side in SIDES:
                r = results[(run, side)][i]
                q = results[(run, "quark")][i]
                ratio = "" if side == "quark" else f"{q['tokens_per_s'] / r['tokens_per_s']:.1f}"
                print(f"| {r['max_tokens']} | {r['concurrency']} | {side} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                      f"{r['ttft_ms']['p50']} / {r['ttft_ms']['p99']} | {r['itl_ms']['p50']} / {r['itl_ms']['p99']} | "
                      f"{r['e2e_ms']['p50']} / {r['e2e_ms']['p99']} | {r['errors']} | {ratio} |", flush=True)
        # The latency goal: p50 at 16 clients within 2x one client's latency.
        for tokens in TOKENS:
            by_clients = {r["concurrency"]: r for r in results[(run, "quark")] if r["max_tokens"] == tokens}
            ratio = by_clients[16]["e2e_ms"]["p50"] / by_clients[1]["e2e_ms"]["p50"]
            print(f"quark, {tokens} tokens: p50 at 16 clients ÷ p50 at 1 client = {ratio:.2f}")
    raw = sys.argv[5] if len(sys.argv) > 5 else os.path.join(work, "serving.json")
    json.dump({f"{run}-{side}": rows for (run, side), rows in results.items()}, open(raw, "w"))
    print(f"\nraw figures: {raw}")


def wait_ready_peer(url, process, timeout=300):
    started = time.time()
    body = json.dumps({"prompt": "To be", "max_tokens": 1}).encode()
    while time.time() - started < timeout:
        if process.poll() is not None:
            raise SystemExit("the peer exited")
        try:
            request = urllib.request.Request(url + "/v1/completions", body, {"content-type": "application/json"})
            urllib.request.urlopen(request, timeout=5).read()
            return "peer"
        except OSError:
            time.sleep(1)
    raise SystemExit("the peer did not become ready")


if __name__ == "__main__":
    main()
