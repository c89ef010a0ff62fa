"""Which parameters a small model must adapt to learn a set of corrections, measured with
Hugging Face PEFT itself on a Quark checkpoint (no Quark code in the loop).

Each variant trains on the same corrections (loss on the replies only, the whole set every
step, AdamW betas (0.9, 0.99), no weight decay, grad clip 1.0, constant lr, fp32 on the CPU,
2 threads, no rehearsal) and reports the corrections' loss and how many are reproduced
exactly (teacher-forced argmax over every reply token, end of reply included) every 20 steps.

  lora_targets.py CHECKPOINT_DIR SETS_JSON SET [STEPS]
"""
import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|endoftext|>"
PROJECTIONS = ["c_attn", "c_proj", "c_fc"]
# name, LoRA rank (0: no adapters), targets, learning rate, parameters frozen without adapters
VARIANTS = [
    ("LoRA r8, projections", 8, PROJECTIONS, 3e-3, []),
    ("LoRA r128 (full rank), projections", 128, PROJECTIONS, 3e-3, []),
    ("every weight but the embedding", 0, [], 1e-3, ["wte"]),
    ("every weight", 0, [], 1e-3, []),
    ("LoRA r8, projections + tied embedding", 8, PROJECTIONS + ["wte", "lm_head"], 3e-3, []),
]


def batch(tok, corrections):
    rows = [(tok(USER + c["prompt"] + ASSISTANT)["input_ids"], tok(c["correction"] + END)["input_ids"]) for c in corrections]
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (p, r) in enumerate(rows):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p) - 1:len(p) + len(r) - 1] = torch.tensor(r)
    return ids, labels


def reading(model, ids, labels):
    model.eval()
    with torch.no_grad():
        logits = model(ids).logits
    model.train()
    scored = labels != -100
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    right = (logits.argmax(-1) == labels) | ~scored
    return (loss * scored).sum().item() / scored.sum().item(), int(right.all(1).sum())


def train(base, ids, labels, rank, targets, lr, frozen, steps):
    torch.manual_seed(0)
    model = GPT2LMHeadModel.from_pretrained(base, dtype=torch.float32)
    if rank:
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0, fan_in_fan_out=True,
                            ensure_weight_tying="wte" in targets)
        model = get_peft_model(model, config)
    for name, p in model.named_parameters():
        if any(f in name for f in frozen):
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    trace = []
    for step in range(steps + 1):
        if step % 20 == 0:
            trace.append(reading(model, ids, labels))
        if step == steps:
            break
        loss = torch.nn.functional.cross_entropy(model(ids).logits.transpose(1, 2), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return sum(p.numel() for p in params), trace


def main():
    base, sets_path, name, *rest = sys.argv[1:]
    steps = int(rest[0]) if rest else 100
    torch.set_num_threads(2)
    corrections = {s["name"]: s for s in json.load(open(sets_path))["sets"]}[name]["corrections"]
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{base}/tokenizer.json")
    ids, labels = batch(tok, corrections)
    print(f"set {name}: {len(corrections)} corrections; base {base}; {steps} steps; readings every 20 steps")
    print("| variant | lr | trainable parameters | corrections' loss (reproduced of %d) at steps 0, 20, …, %d |" % (len(corrections), steps))
    print("|---|---|---|---|")
    for label, rank, targets, lr, frozen in VARIANTS:
        count, trace = train(base, ids, labels, rank, targets, lr, frozen, steps)
        cells = ", ".join(f"{loss:.2f} ({right})" for loss, right in trace)
        print(f"| {label} | {lr:g} | {count:,} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
