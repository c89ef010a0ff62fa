"""PyTorch's AdamW step on its own, as quark-bench-optim times Quark's: clip to norm 1
(`clip_grad_norm_`), one update, zero the gradients (kept, not set to None, as Quark keeps
them), on the reference GPT of benchmarks/reference_gpt.py (the same parameters as
Quark's GPT) with random gradients. The single-tensor update (PyTorch's default on the CPU,
a loop over the parameters) and the multi-tensor one (`foreach=True`), alternated A B B A.
Prints one JSON line per update with the settings.

    python benchmarks/adamw_torch.py VOCAB BLOCK LAYERS HEADS WIDTH STEPS THREADS
"""
import json
import sys
import time

import torch

from reference_gpt import GPT

vocab, block, layers, heads, width, steps, threads = map(int, sys.argv[1:8])
torch.set_num_threads(threads)


def optimizer(foreach):
    torch.manual_seed(7)
    model = GPT(vocab, block, layers, heads, width)
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=foreach,
    )
    sum((p * torch.randn_like(p)).sum() for p in params).backward()
    return params, opt


def timed(params, opt, foreach, n):
    def once():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=foreach)
        opt.step()
        opt.zero_grad(set_to_none=False)

    for _ in range(5):
        once()
    started = time.perf_counter()
    for _ in range(n):
        once()
    return time.perf_counter() - started


single, multi = optimizer(False), optimizer(True)
half = steps // 2
took = {False: 0.0, True: 0.0}
for foreach, (params, opt) in [(True, multi), (False, single), (False, single), (True, multi)]:
    took[foreach] += timed(params, opt, foreach, half)
for foreach in (True, False):
    params = multi[0] if foreach else single[0]
    print(json.dumps({
        "impl": "torch-foreach" if foreach else "torch-single-tensor",
        "us_per_step": took[foreach] * 1e6 / (2 * half),
        "tensors": len(params),
        "parameters": sum(p.numel() for p in params),
        "steps": 2 * half,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "shape": [vocab, block, layers, heads, width],
    }))
