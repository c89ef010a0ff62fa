"""Training speed of Quark against the PyTorch reference of the same model, for a GPU host
that has only PyTorch (carry a built `quark` binary there; no Rust, no network needed).

Runs `quark train` and benchmarks/reference_gpt.py on the same tokens (the shards Quark's
first run writes: its byte-level BPE trained on FILES), the same shape, batch, schedule and
optimizer, each in a fresh process, in the order Quark, PyTorch, PyTorch, Quark. Prints both
sides' settings, tokens/s and MFU (6N + 12·L·T·d FLOPs per token over the device's peak), and
one JSON line last.

    python benchmarks/gpt_speed.py --quark PATH/quark FILE... [--shape gpt2|tiny]
        [--device cuda|cpu] [--steps N] [--batch N] [--peak-tflops F]

`--shape gpt2` is GPT-2 small (12 layers, 12 heads, width 768, block 1024, vocabulary up to
50,304; bf16 autocast and fused AdamW on CUDA on the reference's side, bf16 matmuls with fp32
weights on Quark's); `--shape tiny` is a shape small enough for the CPU in the tests.
"""
import argparse
import glob
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

SHAPES = {
    # layers, heads, width, block, batch, vocabulary, steps, max lr, min lr, β2
    "gpt2": dict(layers=12, heads=12, width=768, block=1024, batch=12, vocab=50304,
                 steps=100, max_lr=6e-4, min_lr=6e-5, beta2=0.95),
    "tiny": dict(layers=2, heads=2, width=32, block=32, batch=4, vocab=512,
                 steps=100, max_lr=3e-3, min_lr=3e-4, beta2=0.99),
}
# Vendor dense bf16 peaks (Quark's planning catalogue); the CPU figure is the 2-core AVX-512
# development machine's fp32 peak: pass --peak-tflops for any other.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
CPU_PEAK = 384e9


def read_tokens(path):
    """A Quark token shard: b"QTOK", the id width (2 or 4), three zero bytes, the ids."""
    import torch
    data = open(path, "rb").read()
    assert data[:4] == b"QTOK", f"{path} is not a token shard"
    kind = {2: torch.uint16, 4: torch.uint32}[data[4]]
    return torch.frombuffer(bytearray(data[8:]), dtype=kind).to(torch.long)


def safetensors_numel(path):
    """Parameters in a safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    numel = 0
    for name, entry in header.items():
        if name != "__metadata__":
            n = 1
            for dim in entry["shape"]:
                n *= dim
            numel += n
    return numel


def reference_run(args):
    """One PyTorch run in this process (the parent starts it as a child)."""
    import torch
    from reference_gpt import GPT, Settings, flops_per_token, train, validation_loss
    s = SHAPES[args.shape]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(1337)
    train_tokens = read_tokens(os.path.join(args.data_dir, "train.tok"))
    val_tokens = read_tokens(os.path.join(args.data_dir, "val.tok"))
    model = GPT(args.vocab, s["block"], s["layers"], s["heads"], s["width"]).to(device)
    settings = Settings(steps=args.steps, batch=args.batch, block=s["block"],
                        max_lr=s["max_lr"], min_lr=s["min_lr"], warmup=args.steps // 10,
                        betas=(0.9, s["beta2"]))
    tokens_per_s, losses = train(model, train_tokens, settings, device)
    print(json.dumps({
        "tokens_per_s": tokens_per_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_token": flops_per_token(model, s["layers"], s["block"], s["width"]),
        "train_loss": losses[-1],
        "val_loss": validation_loss(model, val_tokens, s["block"], device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }))


def quark_run(args, out, tokenizer):
    s = SHAPES[args.shape]
    cmd = [args.quark, "train", "--device", args.device, "--data", *args.files, "--out", out,
           "--tokenizer", tokenizer, "--vocab-size", str(s["vocab"]),
           "--n-layer", str(s["layers"]), "--n-head", str(s["heads"]),
           "--n-embd", str(s["width"]), "--block-size", str(s["block"]),
           "--batch-size", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.steps // 10), "--lr", str(s["max_lr"]),
           "--min-lr", str(s["min_lr"]), "--beta2", str(s["beta2"]),
           "--eval-interval", "0", "--checkpoint-interval", "0", "--log-interval", "10"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args))
    if done.returncode != 0:
        sys.exit(f"quark train failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary = re.search(r"train loss ([0-9.]+), validation loss ([0-9.]+), ([0-9.]+) tokens/s",
                        done.stdout)
    checkpoint = os.path.dirname(glob.glob(f"{out}/**/model.safetensors", recursive=True)[0])
    config = json.load(open(os.path.join(checkpoint, "config.json")))
    return {
        "tokens_per_s": float(summary.group(3)),
        "parameters": safetensors_numel(os.path.join(checkpoint, "model.safetensors")),
        "vocab": config["vocab_size"],
        "train_loss": float(summary.group(1)),
        "val_loss": float(summary.group(2)),
        "tokenizer": os.path.join(checkpoint, "tokenizer.json"),
    }


def child_env(args):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def pytorch_run(args, data_dir, vocab):
    cmd = [sys.executable, os.path.abspath(__file__), "--reference-run", "--data-dir", data_dir,
           "--vocab", str(vocab), "--shape", args.shape, "--device", args.device,
           "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads),
           "--quark", args.quark]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args))
    if done.returncode != 0:
        sys.exit(f"the PyTorch reference failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak(args, device_name):
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device == "cpu":
        return CPU_PEAK
    return next((p for name, p in PEAKS.items() if name in device_name), None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--quark", required=True)
    ap.add_argument("--shape", choices=SHAPES, default="gpt2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float)
    ap.add_argument("--reference-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    args.steps = args.steps or shape["steps"]
    args.batch = args.batch or shape["batch"]
    if args.reference_run:
        return reference_run(args)
    if not args.files:
        ap.error("give the text files to train on")
    with tempfile.TemporaryDirectory() as out:
        first = quark_run(args, f"{out}/quark-1", "bpe")
        data_dir = f"{out}/quark-1/data"
        torch_runs = [pytorch_run(args, data_dir, first["vocab"]) for _ in range(2)]
        last = quark_run(args, f"{out}/quark-2", first["tokenizer"])
    report(args, shape, [first, last], torch_runs)


def report(args, shape, quark, torch_runs):
    ref = torch_runs[0]
    flops, device_name = ref["flops_per_token"], ref["device"]
    top = peak(args, device_name)
    mfu = lambda tps: tps * flops / top if top else None
    print(f"shape {args.shape}: {shape['layers']} layers, {shape['heads']} heads, width "
          f"{shape['width']}, block {shape['block']}, batch {args.batch}, vocabulary "
          f"{quark[0]['vocab']}, {args.steps} steps, lr {shape['max_lr']} → {shape['min_lr']}, "
          f"β2 {shape['beta2']}; device {device_name}, peak "
          f"{top / 1e12 if top else 'unknown'} TFLOP/s, {flops / 1e6:.1f} MFLOP per token")
    print(f"quark: {quark[0]['parameters']:,} parameters, bf16 matmuls on CUDA (fp32 on the "
          f"CPU), its flat-buffer AdamW; pytorch {ref['torch']}: {ref['parameters']:,} "
          f"parameters, threads {ref['threads']}, autocast bf16 and fused AdamW on CUDA")
    for name, runs in (("quark", quark), ("pytorch", torch_runs)):
        for run in runs:
            m = mfu(run["tokens_per_s"])
            print(f"{name}: {run['tokens_per_s']:,.0f} tokens/s, MFU "
                  f"{f'{100 * m:.1f}%' if m is not None else 'n/a'}, loss at the last step "
                  f"{run['train_loss']:.3f}, validation {run['val_loss']:.3f}")
    mean = lambda runs: sum(r["tokens_per_s"] for r in runs) / len(runs)
    print(json.dumps({
        "shape": args.shape, "device": device_name, "steps": args.steps, "batch": args.batch,
        "parameters": {"quark": quark[0]["parameters"], "pytorch": ref["parameters"]},
        "vocab": quark[0]["vocab"],
        "quark": quark, "pytorch": torch_runs,
        "ratio": mean(quark) / mean(torch_runs),
        "mfu": {"quark": mfu(mean(quark)), "pytorch": mfu(mean(torch_runs))},
    }))


if __name__ == "__main__":
    main()
