"""A bounded soak of `quark up`, then a burst at ten times its rate.

Steady traffic on a running `quark up` (chat completions at a fixed open-loop rate, feedback
with a correction every few seconds, so `augment.min_examples` corrections retrain the model a
few times), while the resident memory and open file descriptors of the quark process and of the
broker it started are sampled. Then a burst at ten times the rate for a minute, and the steady
rate again. Afterwards: the memory and fd curves, the answers (200, 429, other) per phase, the
time from the burst's end to the last 429, whether every answer the gateway gave was published
(response.served on the topic against 200s counted here), each consumer's lag, dead letters,
and the ERROR lines of the log.

    python benchmarks/soak.py URL QUARK_BINARY UP_PID LOG MINUTES RATE
"""
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

url, quark, up_pid, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
minutes, rate = float(sys.argv[5]), float(sys.argv[6])
KEY = "quark-local-key"
BURST_SECONDS = 60
SAMPLE_SECONDS = 15
FEEDBACK_EVERY = 4.0
# The honest corrections of scripts/bench-feedback: questions about the plays and their answers.
PROMPTS = [
    (c["prompt"], c["correction"])
    for feedback_set in json.load(open(os.path.join(os.path.dirname(__file__), "feedback_sets.json")))["sets"]
    if feedback_set["honest"] and feedback_set["kind"] == "facts"
    for c in feedback_set["corrections"]
]

answers = collections.Counter()  # (phase, status) -> count
refusals = {}  # status -> the first body answered with it
served_ids = []
lock = threading.Lock()
phase = "steady"
last_429 = 0.0


def post(path, body, key=None):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")[:300]
    except OSError:
        return "error", None


def ask(n, feedback):
    global last_429
    question, correction = PROMPTS[n % len(PROMPTS)]
    asked_in = phase
    status, reply = post("/v1/chat/completions", {"model": "champion", "messages": [{"role": "user", "content": question}], "max_tokens": 16})
    with lock:
        answers[(asked_in, status)] += 1
        if status == 200:
            served_ids.append(reply["id"])
        if status == 429:
            last_429 = time.time()
        elif status != 200:
            refusals.setdefault(status, reply)
    if status == 200 and feedback:
        post("/v1/feedback", {"request_id": reply["id"], "rating": 1, "correction": f"{correction} ({n})"}, KEY)


def children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def usage(pid):
    """(resident MiB, of which anonymous MiB, open fds, threads). File-backed pages (shared
    libraries such as libtorch, paged in as new kernels run) are the rest of the resident set."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return int(fields["Rss"]) / 1024, int(fields["Anonymous"]) / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


def served_models():
    """How many models the gateway lists (each alias's; a retraining adds a challenger)."""
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
            return len(json.load(response)["data"])
    except OSError:
        return None


def sample(start, samples, stop):
    while not stop.is_set():
        row = {"t": time.time() - start, "phase": phase, "models": served_models()}
        for name, pid in [("quark", up_pid)] + [("broker", c) for c in children(up_pid)]:
            try:
                row[name] = usage(pid)
            except OSError:
                pass
        samples.append(row)
        stop.wait(SAMPLE_SECONDS)


def drive(seconds, per_second, n):
    """Open loop: a request every 1/per_second s whatever the answers take."""
    end, period, last_feedback = time.time() + seconds, 1 / per_second, 0.0
    threads = []
    while time.time() < end:
        feedback = time.time() - last_feedback >= FEEDBACK_EVERY
        last_feedback = time.time() if feedback else last_feedback
        thread = threading.Thread(target=ask, args=(n, feedback))
        thread.start()
        threads.append(thread)
        n += 1
        time.sleep(period)
    for thread in threads:
        thread.join()
    return n


def quark_json(*args):
    return json.loads(subprocess.check_output([quark, *args]))


def trend(samples, name, field):
    """(first, last, max, slope per hour) of a process's figure over the steady phases."""
    points = [(s["t"], s[name][field]) for s in samples if name in s]
    if len(points) < 3:
        return None
    slope = statistics.linear_regression([p[0] for p in points], [p[1] for p in points]).slope
    return points[0][1], points[-1][1], max(p[1] for p in points), slope * 3600


def main():
    global phase
    models_before = len(quark_json("models", "--json")["models"])
    start = time.time()
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample, args=(start, samples, stop))
    sampler.start()
    steady = minutes * 60 - BURST_SECONDS
    n = drive(steady * 2 / 3, rate, 0)
    phase = "burst"
    burst_started = time.time()
    n = drive(BURST_SECONDS, rate * 10, n)
    burst_ended = time.time()
    phase = "after"
    drive(steady / 3, rate, n)
    stop.set()
    sampler.join()

    print(f"soak: {minutes:.0f} min, steady {rate} requests/s (16 tokens each, a correction every {FEEDBACK_EVERY} s), "
          f"burst {rate * 10} requests/s for {BURST_SECONDS} s after {steady * 2 / 3 / 60:.0f} min")
    print("soak: minute  quark RSS MiB  anonymous  fds  threads  broker RSS MiB  fds  models served")
    for s in samples[:: max(1, 60 // SAMPLE_SECONDS)]:
        q = s.get("quark", (0, 0, 0, 0))
        b = s.get("broker", (0, 0, 0, 0))
        print(f"soak: {s['t'] / 60:6.1f}  {q[0]:13.0f}  {q[1]:9.0f}  {q[2]:3}  {q[3]:7}  {b[0]:14.0f}  {b[2]:3}  {s['models']}  {s['phase']}")
    for name in ("quark", "broker"):
        for field, label in ((0, "RSS MiB"), (1, "anonymous MiB"), (2, "fds"), (3, "threads")):
            figures = trend(samples, name, field)
            if figures:
                print(f"soak: {name} {label}: first {figures[0]:.0f}, last {figures[1]:.0f}, max {figures[2]:.0f}, trend {figures[3]:+.1f}/hour")
    for asked_in in ("steady", "burst", "after"):
        counts = {str(k[1]): v for k, v in answers.items() if k[0] == asked_in}
        print(f"soak: answers while {asked_in}: {counts}")
    for status, body in refusals.items():
        print(f"soak: the first {status} answered: {body}")
    print(f"soak: last 429 came {max(0.0, last_429 - burst_ended):.1f} s after the burst ended "
          f"(burst began at {burst_started - start:.0f} s)")

    time.sleep(10)
    listing = quark_json("models", "--json")
    print(f"soak: models trained during the soak: {len(listing['models']) - models_before}")
    topics = subprocess.check_output([quark, "topics"], text=True)
    served = next(int(line.split()[1]) for line in topics.splitlines() if line.startswith("response.served "))
    print(f"soak: 200 answers {len(served_ids)}, distinct ids {len(set(served_ids))}; response.served on the topic {served}")
    print(topics)
    errors = [line for line in open(log) if re.search(r'"level":"ERROR"| ERROR ', line)]
    print(f"soak: ERROR lines in {log}: {len(errors)}")
    for line in errors[:10]:
        print("soak:   " + line.strip()[:300])


main()
