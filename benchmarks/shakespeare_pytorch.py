"""PyTorch eager reference for Quark's Shakespeare baseline: the same model (GPT-2 layout,
tanh GELU, tied embeddings, scaled_dot_product_attention), data, schedule and optimizer as
`quark train --tokenizer char` with its defaults, so the two can be compared side by side.

Prints one JSON line: validation loss over the whole validation split (non-overlapping
windows), training tokens/s (training steps only), parameters.

    python benchmarks/shakespeare_pytorch.py FILE... [--steps 2000] [--threads N]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, block, layers, heads, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


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
    train, val = encode(train_text), encode(val_text)
    block, batch, layers, heads, d = 64, 12, 4, 4, 128
    model = GPT(len(chars) + 5, block, layers, heads, d)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99),
    )
    max_lr, min_lr, warmup, decay_steps = 1e-3, 1e-4, 100, a.steps

    def lr_at(step):
        if step < warmup:
            return max_lr * (step + 1) / (warmup + 1)
        if step > decay_steps:
            return min_lr
        progress = (step - warmup) / max(1, decay_steps - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)

    train_seconds = 0.0
    for step in range(a.steps):
        started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ix = torch.randint(len(train) - block - 1, (batch,))
        x = torch.stack([train[i : i + block] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + block] for i in ix])
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 9:
            loss.item()  # the same host sync per log interval as Quark
        train_seconds += time.perf_counter() - started

    model.eval()
    windows = (len(val) - 1) // block
    total = 0.0
    with torch.no_grad():
        for start in range(0, windows, 64):
            idx = torch.arange(start, min(start + 64, windows)) * block
            x = torch.stack([val[i : i + block] for i in idx])
            y = torch.stack([val[i + 1 : i + 1 + block] for i in idx])
            total += model(x, y).item() * len(idx)
    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": a.steps,
        "val_loss": total / windows,
        "tokens_per_s": a.steps * batch * block / train_seconds,
    }))


if __name__ == "__main__":
    main()
