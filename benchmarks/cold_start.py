"""Cold start of `quark up`: a fresh data directory to the first model served, for several builds.

    python benchmarks/cold_start.py NAME=DIR [NAME=DIR ...]

Each DIR holds a `quark` and a `quark-broker` executable. Every run starts `DIR/quark up` on a
fresh data directory with the default settings (the PyPI corpus, the default CPU model; the
embedded broker next to it) but for any QUARK__ variable set in the environment, polls the gateway until `GET /v1/models` lists a model, and prints
the wall time from the start of the process and the first model's pre-training figures from
`quark models --json` (tokens/s over its training steps, train and validation loss, parameters),
then stops it. Runs go in the order given: name the builds A B B A for both orders.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(directory: str) -> dict:
    data = tempfile.mkdtemp(prefix="quark-cold-")
    gateway = free_port()
    env = dict(os.environ, QUARK__DATA_DIR=data, QUARK__BROKER__LISTEN=f"127.0.0.1:{free_port()}",
               QUARK__GATEWAY__LISTEN=f"127.0.0.1:{gateway}", QUARK__TELEMETRY__LOG="warn")
    log = open(os.path.join(data, "up.out"), "w")
    started = time.monotonic()
    up = subprocess.Popen([os.path.join(directory, "quark"), "up", "--quiet"], env=env, stdout=log, stderr=log)
    try:
        while True:
            if up.poll() is not None:
                raise SystemExit(f"quark up exited; see {data}/up.out")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/v1/models", timeout=2) as reply:
                    if json.load(reply).get("data"):
                        return {"cold_start_s": round(time.monotonic() - started, 1),
                                **first_model(directory, env)}
            except OSError:
                pass
            time.sleep(1)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


def first_model(directory: str, env: dict) -> dict:
    listing = subprocess.run([os.path.join(directory, "quark"), "models", "--json"], env=env,
                             capture_output=True, text=True, check=True)
    model = json.loads(listing.stdout)["models"][0]
    metrics = model["metrics"]
    return {"parameters": model["parameters"], "training_s": round(model["duration_ms"] / 1000, 1),
            **{k: round(metrics[k], 4) for k in ("tokens_per_s", "train_loss", "val_loss")}}


def main() -> None:
    builds = [arg.split("=", 1) for arg in sys.argv[1:]]
    # The settings every run shares: the defaults, but for any QUARK__ variable given.
    overrides = {k: v for k, v in sorted(os.environ.items()) if k.startswith("QUARK__")}
    print(json.dumps({"settings": {"runs": builds, "cores": os.cpu_count(),
                                   "config": overrides or "defaults"}}))
    for name, directory in builds:
        print(json.dumps({"build": name, **cold_start(directory)}), flush=True)


if __name__ == "__main__":
    main()
