"""PyTorch eager reference for Quark's Shakespeare baseline: the reference GPT
(benchmarks/reference_gpt.py) with the same data, schedule and optimizer as
`quark train --tokenizer char` with its defaults, so the two can be compared side by side.

Prints one JSON line: validation loss over the whole validation split (non-overlapping
windows), training tokens/s (training steps only), parameters.

    python benchmarks/shakespeare_pytorch.py FILE... [--steps 2000] [--threads N]
"""
import argparse
import json

import torch

from reference_gpt import GPT, Settings, train, validation_loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    text = "".join(open(f, encoding="utf-8").read() for f in a.files)
    split = int(len(text) * 0.9)
    train_text, val_text = text[:split], text[split:]
    chars = sorted(set(train_text))
    stoi = {c: i + 5 for i, c in enumerate(chars)}  # five special tokens first, as in Quark
    encode = lambda s: torch.tensor([stoi.get(c, 4) for c in s], dtype=torch.long)
    train_tokens, val_tokens = encode(train_text), encode(val_text)
    settings = Settings(steps=a.steps, batch=12, block=64)
    model = GPT(len(chars) + 5, settings.block, layers=4, heads=4, d=128)
    tokens_per_s, _ = train(model, train_tokens, settings)
    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": a.steps,
        "batch": settings.batch,
        "block": settings.block,
        "val_loss": validation_loss(model, val_tokens, settings.block),
        "tokens_per_s": tokens_per_s,
    }))


if __name__ == "__main__":
    main()
