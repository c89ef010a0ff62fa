"""The PyTorch reference of Quark's GPT for side-by-side training benchmarks: the same layout
(GPT-2: biases, tanh GELU, tied embeddings, scaled_dot_product_attention), initialisation,
schedule and optimizer as `quark train`, and nanoGPT's training loop (sample windows, forward
under autocast on CUDA, backward, clip, AdamW step).

Used by benchmarks/shakespeare_pytorch.py (CPU, character level), benchmarks/gpt_speed.py
(GPT-2 small on a GPU, a tiny shape on the CPU in the tests) and benchmarks/adamw_torch.py.
"""
import contextlib
import math
import time
from dataclasses import dataclass

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
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def flops_per_token(model, layers, block, d):
    """Quark's (and nanoGPT's) MFU accounting: 6N over every parameter but the position
    table, plus 12·L·T·d for attention at full context."""
    n = sum(p.numel() for p in model.parameters()) - block * d
    return 6 * n + 12 * layers * block * d


@dataclass
class Settings:
    steps: int
    batch: int
    block: int
    max_lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    betas: tuple = (0.9, 0.99)
    weight_decay: float = 0.1
    clip: float = 1.0
    log_interval: int = 10

    def lr_at(self, step):
        """Quark's schedule: linear warm-up, cosine decay to min_lr at the last step."""
        if step < self.warmup:
            return self.max_lr * (step + 1) / (self.warmup + 1)
        if step > self.steps:
            return self.min_lr
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (self.max_lr - self.min_lr)


def train(model, tokens, settings, device=torch.device("cpu")):
    """Trains `model` on random windows of the 1-D token tensor `tokens` (on the host).

    Returns (tokens/s over the training loop, the losses read every log_interval steps). On
    CUDA: bf16 autocast and the fused AdamW, batches pinned and copied without blocking."""
    cuda = device.type == "cuda"
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.max_lr, betas=settings.betas, fused=cuda or None,
    )
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda
                else contextlib.nullcontext())
    block, losses = settings.block, []

    def batch():
        ix = torch.randint(len(tokens) - block - 1, (settings.batch,))
        x = torch.stack([tokens[i : i + block] for i in ix])
        y = torch.stack([tokens[i + 1 : i + 1 + block] for i in ix])
        if cuda:
            return (x.pin_memory().to(device, non_blocking=True),
                    y.pin_memory().to(device, non_blocking=True))
        return x, y

    started = time.perf_counter()
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = settings.lr_at(step)
        x, y = batch()
        with autocast:
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
        opt.step()
        if step % settings.log_interval == settings.log_interval - 1:
            losses.append(loss.item())  # the same host sync per log interval as Quark
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return settings.steps * settings.batch * block / seconds, losses


def validation_loss(model, tokens, block, device=torch.device("cpu"), rows=64):
    """Mean loss over the whole split in non-overlapping windows, as `quark train` reports it."""
    model.eval()
    windows = (len(tokens) - 1) // block
    total = 0.0
    with torch.no_grad():
        for start in range(0, windows, rows):
            idx = torch.arange(start, min(start + rows, windows)) * block
            x = torch.stack([tokens[i : i + block] for i in idx]).to(device)
            y = torch.stack([tokens[i + 1 : i + 1 + block] for i in idx]).to(device)
            total += model(x, y).item() * len(idx)
    model.train()
    return total / windows
