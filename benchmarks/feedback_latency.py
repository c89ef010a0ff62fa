"""Feedback → promotion latency: sends `augment.min_examples` corrections to a running gateway,
waits for the retrained model's promotion, and reports the time from the last feedback event
to model.promoted with and without the training run (model.trained's duration)."""
import json
import subprocess
import sys
import time
import urllib.request

url, quark = sys.argv[1], sys.argv[2]
KEY = "quark-local-key"
PAIRS = [
    ("Who killed the king of Denmark?", "Claudius killed the king, his brother."),
    ("Where does Hamlet live?", "Hamlet lives in the castle of Elsinore."),
    ("Who loves Desdemona?", "Othello loves Desdemona."),
    ("What did the witches tell Macbeth?", "The witches told Macbeth he would be king."),
    ("Who is Ophelia's father?", "Polonius is Ophelia's father."),
    ("Who betrays Othello?", "Iago betrays Othello."),
    ("Where is Macbeth's castle?", "Macbeth's castle is at Inverness."),
    ("Who is Hamlet's mother?", "Gertrude is Hamlet's mother."),
]


def post(path, body, key=None):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    if key:
        request.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def registry():
    return json.loads(subprocess.check_output([quark, "models", "--json"]))


before = {p["event_id"] for p in registry()["promotions"]}
for question, answer in PAIRS:
    reply = post("/v1/chat/completions", {"model": "champion", "messages": [{"role": "user", "content": question}], "max_tokens": 8})
    post("/v1/feedback", {"request_id": reply["id"], "rating": 1, "correction": answer}, KEY)
sent = time.time()
while True:
    listing = registry()
    new = [p for p in listing["promotions"] if p["event_id"] not in before]
    evaluated = [e for m in listing["models"] if m["parent_model_id"] for e in m["evaluations"]]
    if new or (evaluated and not all(e["passed"] for e in evaluated)):
        break
    if time.time() - sent > 900:
        sys.exit("no promotion within 15 minutes")
    time.sleep(0.5)
done = time.time()
retrained = [m for m in listing["models"] if m["parent_model_id"]][-1]
training = retrained["duration_ms"] / 1000
outcome = "promotion" if new else "gate decision (regressed)"
print(f"feedback → {outcome}: {done - sent:.1f} s wall, of which training {training:.1f} s; without training {done - sent - training:.1f} s")
for evaluation in retrained["evaluations"]:
    for check in evaluation["failed"]:
        print(f"  failed {check['metric']}: baseline {check['baseline']}, candidate {check['candidate']}, threshold {check['threshold']}")
