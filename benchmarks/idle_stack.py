"""CPU of an idle `quark up`: the broker process and the quark process, measured separately.

    python benchmarks/idle_stack.py --quark $CARGO_TARGET_DIR/debug/quark \
        --broker NAME=PATH [--broker NAME=PATH ...] [--warmup 20] [--window 20]

Each --broker is a quark-broker executable (`broker.command`), run in the order given and then
in reverse. Every run starts `quark up` on a fresh data directory marked as already started
(no corpus is ingested, no model trained: nothing happens), waits until the gateway answers,
lets it settle for --warmup seconds and reads both processes' CPU time (utime + stime from
/proc) over --window seconds. Prints one line per run and the settings beside them.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def run(quark: str, broker: str, warmup: float, window: float) -> dict:
    data = tempfile.mkdtemp(prefix="quark-idle-")
    open(os.path.join(data, "cold-start.json"), "w").write("{}")
    gateway, bus = free_port(), free_port()
    env = dict(os.environ,
               QUARK__DATA_DIR=data,
               QUARK__BROKER__LISTEN=f"127.0.0.1:{bus}",
               QUARK__BROKER__COMMAND=broker,
               QUARK__GATEWAY__LISTEN=f"127.0.0.1:{gateway}",
               QUARK__SCHEMA_REGISTRY__LISTEN=f"127.0.0.1:{free_port()}")
    log = open(os.path.join(data, "up.out"), "w")
    up = subprocess.Popen([quark, "up", "--quiet"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{gateway}/v1/models", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or up.poll() is not None:
                    raise SystemExit(f"quark up did not start; see {data}/up.out")
                time.sleep(0.5)
        time.sleep(warmup)
        brokers = [p for p in children(up.pid) if "broker" in open(f"/proc/{p}/cmdline").read()]
        assert len(brokers) == 1, brokers
        before = (cpu_seconds(up.pid), cpu_seconds(brokers[0]), time.monotonic())
        time.sleep(window)
        after = (cpu_seconds(up.pid), cpu_seconds(brokers[0]), time.monotonic())
        wall = after[2] - before[2]
        return {"quark_pct": 100 * (after[0] - before[0]) / wall,
                "broker_pct": 100 * (after[1] - before[1]) / wall}
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--quark", required=True)
    args.add_argument("--broker", action="append", required=True, help="NAME=PATH")
    args.add_argument("--warmup", type=float, default=20)
    args.add_argument("--window", type=float, default=20)
    opts = args.parse_args()
    brokers = [b.split("=", 1) for b in opts.broker]
    print(json.dumps({"settings": {"quark": opts.quark, "brokers": dict(brokers), "warmup_s": opts.warmup,
                                   "window_s": opts.window, "cores": os.cpu_count()}}))
    for name, path in brokers + brokers[::-1]:
        result = run(opts.quark, path, opts.warmup, opts.window)
        print(json.dumps({"broker": name, **{k: round(v, 1) for k, v in result.items()},
                          "stack_pct": round(result["quark_pct"] + result["broker_pct"], 1)}), flush=True)


if __name__ == "__main__":
    main()
