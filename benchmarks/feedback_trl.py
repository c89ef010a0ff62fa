"""Quark's LoRA fine-tuning beside TRL's (SFTTrainer + PEFT LoRA), on the same job.

The same base model (a GPT-2 checkpoint `quark train` pre-trains on two plays), the same
corrections (sets of benchmarks/feedback_sets.json), the same LoRA rank, alpha and target
modules, the same steps, learning rate, warm-up and batch (the whole set every step), loss on
the replies only, two threads. Quark trains with `quark train --sft --lora-rank`; TRL with
SFTTrainer on a prompt/completion dataset. Both results are then measured by the same code
here, with transformers: the share of corrected prompts answered with the correction at
greedy decoding, and perplexity on held-out text (a third play, never trained on). The timer
is around the same span on both sides: each optimizer step, from its start to the weights
updated, summed over the run (Quark's trainer_state.json `train_us`; for TRL, a callback from
`on_step_begin` to `on_step_end`), so model loading, tokenising, Python imports and saving are
not counted on either side. Each set runs twice, with two seeds, the sides in one order and
then the other; the two seeds of one side show how far its results move by chance.

The target modules are the attention and MLP projections, not Quark's default (which adds the
token embedding, shared by the tied output layer): TRL 1.16's SFTTrainer computes the loss
from `lm_head.weight` directly and refuses an adapter on the output layer.

  feedback_trl.py QUARK_BINARY PLAYS_DIR SETS_JSON [SET ...]
"""
import json
import math
import os
import string
import subprocess
import sys
import tempfile
import time

# Two threads on both sides: TRL's torch here, quark's libtorch in the processes it starts.
os.environ["OMP_NUM_THREADS"] = "2"
import torch  # noqa: E402

torch.set_num_threads(2)
RANK, ALPHA, TARGETS = 8, 16.0, ["c_attn", "c_proj", "c_fc"]
STEPS, LR, WARMUP, BLOCK = 60, 1e-3, 10, 128
SEEDS = [1337, 1338]
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|endoftext|>"


def words(text):
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return text.split()


def tokenizer_of(model_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), eos_token=END, pad_token=END)


def measure(model_dir, corrections, held_out_ids):
    """Greedy answers to the corrected prompts, and held-out perplexity."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = tokenizer_of(model_dir)
    stops = [tok.convert_tokens_to_ids(t) for t in (END, USER)]
    exact = 0
    with torch.no_grad():
        for c in corrections:
            ids = tok(USER + c["prompt"] + ASSISTANT)["input_ids"]
            need = len(tok(c["correction"])["input_ids"]) + 4
            out = model.generate(torch.tensor([ids]), max_new_tokens=need, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
            text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
            exact += words(text) == words(c["correction"])
        losses = []
        for start in range(0, len(held_out_ids) - BLOCK - 1, BLOCK):
            window = torch.tensor([held_out_ids[start:start + BLOCK + 1]])
            logits = model(window[:, :-1]).logits[0]
            losses.append(torch.nn.functional.cross_entropy(logits, window[0, 1:]).item())
    return exact / len(corrections), math.exp(sum(losses) / len(losses))


def packed_rows(tok, corrections):
    """Rows of BLOCK tokens Quark packs the set into (an example of n ids gives n - 1 pairs)."""
    rows, used = 1, 0
    for c in corrections:
        n = len(tok(USER + c["prompt"] + ASSISTANT + c["correction"] + END)["input_ids"]) - 1
        if used + n > BLOCK:
            rows, used = rows + 1, 0
        used += n
    return rows


def quark_side(quark, base, corrections, work, rows, seed):
    data = os.path.join(work, "sft.jsonl")
    with open(data, "w") as f:
        for c in corrections:
            f.write(json.dumps({"prompt": c["prompt"], "response": c["correction"]}) + "\n")
    out = os.path.join(work, "quark")
    subprocess.run([quark, "train", "--from", base, "--sft", data, "--out", out, "--lora-rank", str(RANK),
                    "--lora-alpha", str(ALPHA), "--lora-targets", ",".join(TARGETS), "--steps", str(STEPS),
                    "--lr", str(LR), "--min-lr", "0", "--warmup", str(WARMUP), "--weight-decay", "0",
                    "--batch-size", str(rows), "--block-size", str(BLOCK), "--eval-interval", "0",
                    "--checkpoint-interval", "0", "--seed", str(seed), "--device", "cpu"], check=True, capture_output=True)
    merged = os.path.join(out, "merged")
    state = json.load(open(os.path.join(merged, "trainer_state.json")))
    return merged, state["train_us"] / 1e6


def step_timer():
    """A TRL callback summing each optimizer step's span, as Quark's `train_us` does."""
    import torch
    from transformers import TrainerCallback

    def now():
        # On a GPU the step's kernels are queued: wait for them, as Quark's step waits for its loss.
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    class Timer(TrainerCallback):
        seconds, steps, started = 0.0, 0, None

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = now()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += now() - self.started
            self.steps += 1

    return Timer()


def trl_side(base, corrections, work, seed):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer

    tok = tokenizer_of(base)
    dataset = Dataset.from_list([{"prompt": USER + c["prompt"] + ASSISTANT, "completion": c["correction"] + END} for c in corrections])
    config = SFTConfig(output_dir=os.path.join(work, "trl"), max_steps=STEPS, learning_rate=LR, lr_scheduler_type="cosine",
                       warmup_steps=WARMUP, per_device_train_batch_size=len(corrections), weight_decay=0.0,
                       adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, max_grad_norm=1.0, max_length=BLOCK,
                       completion_only_loss=True, packing=False, save_strategy="no", report_to=[], logging_steps=STEPS,
                       use_cpu=True, dataloader_num_workers=0, seed=seed, disable_tqdm=True)
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = GPT2LMHeadModel.from_pretrained(base, dtype=torch.float32)
    timer = step_timer()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok, peft_config=peft, callbacks=[timer])
    sample = trainer.train_dataset[0]
    expected = tok(USER + corrections[0]["prompt"] + ASSISTANT + corrections[0]["correction"] + END)["input_ids"]
    assert sample["input_ids"] == expected, f"TRL tokenised {sample['input_ids']}, Quark renders {expected}"
    trainer.train()
    assert timer.steps == STEPS, f"TRL ran {timer.steps} steps"
    merged = os.path.join(work, "trl-merged")
    trainer.model.merge_and_unload().save_pretrained(merged)
    tok.save_pretrained(merged)
    return merged, timer.seconds


def pretrained_base(quark, plays, work):
    """The base both sides start from: `quark train` on Hamlet and Macbeth, 300 steps."""
    base_run = os.path.join(work, "base")
    subprocess.run([quark, "train", "--data", os.path.join(plays, "hamlet_gut.txt"), os.path.join(plays, "macbeth_gut.txt"),
                    "--vocab-size", "4096", "--block-size", str(BLOCK), "--steps", "300", "--eval-interval", "0",
                    "--checkpoint-interval", "0", "--out", base_run, "--device", "cpu"], check=True, capture_output=True)
    return os.path.join(base_run, open(os.path.join(base_run, "latest")).read().strip())


def main():
    quark, plays, sets_path, *names = sys.argv[1:]
    sets = {s["name"]: s for s in json.load(open(sets_path))["sets"]}
    names = names or ["hamlet-facts", "macbeth-facts", "style-greeting", "refusal-harm"]
    work = tempfile.mkdtemp(prefix="quark-bench-trl-")
    base = pretrained_base(quark, plays, work)
    tok = tokenizer_of(base)
    held_out = tok(open(os.path.join(plays, "othello_gut.txt")).read()[:60000])["input_ids"]
    print(f"settings (both sides): LoRA rank {RANK}, alpha {ALPHA}, targets {TARGETS}, {STEPS} steps, lr {LR} cosine to 0 "
          f"after {WARMUP} warm-up steps, AdamW betas (0.9, 0.99), no weight decay, grad clip 1.0, the whole set every step, "
          f"loss on replies only, fp32 on the CPU, 2 threads; TRL {__import__('trl').__version__}, PEFT {__import__('peft').__version__}, "
          f"transformers {__import__('transformers').__version__}, torch {torch.__version__}")
    print("| set | seed | side | answered with the correction (greedy) | held-out perplexity | training steps' time | Quark ÷ TRL |")
    print("|---|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        corrections = sets[name]["corrections"]
        em0, ppl0 = measure(base, corrections, held_out)
        # Each set twice, with two seeds (LoRA's initialisation) and the sides in both orders:
        # the spread between a side's two seeds is the noise the sides are compared within.
        for j, seed in enumerate(SEEDS):
            sides = {}
            order = ["quark", "trl"] if (i + j) % 2 == 0 else ["trl", "quark"]
            for side in order:
                side_work = os.path.join(work, name, f"{side}-{seed}")
                os.makedirs(side_work)
                if side == "quark":
                    sides[side] = quark_side(quark, base, corrections, side_work, packed_rows(tok, corrections), seed)
                else:
                    sides[side] = trl_side(base, corrections, side_work, seed)
            ratio = sides["quark"][1] / sides["trl"][1]
            for side in ["quark", "trl"]:
                model, seconds = sides[side]
                em, ppl = measure(model, corrections, held_out)
                print(f"| {name} | {seed} | {side} ({'first' if order[0] == side else 'second'}) | {100 * em0:.0f} % → {100 * em:.0f} % | "
                      f"{ppl0:.2f} → {ppl:.2f} ({100 * (ppl / ppl0 - 1):+.2f} %) | {seconds:.1f} s | "
                      f"{f'{ratio:.2f}' if side == 'quark' else ''} |", flush=True)


if __name__ == "__main__":
    main()
