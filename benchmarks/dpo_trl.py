"""Quark's DPO and reward model beside TRL's DPOTrainer and RewardTrainer, on the same job.

The same tiny model (a GPT-2 checkpoint `quark train` pre-trains on two plays), the same
preference pairs (for a line of a play, the next line is preferred to the same words shuffled:
training pairs from Hamlet, held-out pairs from Othello, never trained on), the same β, loss,
learning rate and schedule, pairs per step, steps, AdamW settings and gradient clipping, fp32 on
the CPU, two threads (or, with QUARK_BENCH_DEVICE=cuda, bf16 autocast over fp32 weights on the
GPU for both sides' training). Quark trains with `quark train --dpo` / `--reward`; TRL with DPOTrainer
(with and without `precompute_ref_log_probs`) and RewardTrainer on a prompt/chosen/rejected
dataset whose tokenisation is checked to be Quark's.

Both sides report their own final loss and reward accuracy (the mean over the last
`LOG` steps on the training pairs, TRL's logging window and Quark's `--log-interval`); the
trained models are then read by the same code here, with transformers, on the held-out pairs:
a DPO policy by its implicit reward β·(log π − log π_ref) against the base, a reward model by
its score. Steps/s is over the same span on both sides: each optimizer step from its start to
the weights updated (Quark's `train_us`; for TRL a callback from `on_step_begin` to
`on_step_end`), so loading, tokenising and the reference pass before training are not counted
on either side. Peak memory is the whole process's peak resident set (each side runs in a
process of its own, read by wait4). The reward model's scalar head starts from the same
weights on both sides: TRL's initialisation, saved once and loaded by both. The learning rate
follows the same schedule on both sides, step for step: Quark's (nanoGPT's warm-up from
lr/(w+1), then cosine to 0), given to TRL's trainers as their scheduler, since transformers'
own warm-up starts at 0 and so shifts every later step. Each job runs with four seeds (the
order pairs are drawn in), the sides in one order and then in the other, alternately; the
spread of one side's seeds shows how far its figures move by chance, and the sides are
compared on their means over the seeds.

  dpo_trl.py QUARK_BINARY PLAYS_DIR
"""
import json
import math
import os
import random
import subprocess
import sys
import tempfile

# Two threads on both sides: TRL's torch, and quark's libtorch in the processes it starts.
os.environ["OMP_NUM_THREADS"] = "2"
from feedback_trl import pretrained_base, step_timer  # noqa: E402

BLOCK, STEPS, LOG, PAIRS_PER_STEP = 128, 40, 10, 8
DEVICE = os.environ.get("QUARK_BENCH_DEVICE", "cpu")
LR, WARMUP, BETA, CENTER = 5e-4, 4, 0.1, 0.01
SEEDS = [1337, 1338, 1339, 1340]
# Held-out accuracy moves in steps of one pair: 384 pairs make a step 0.26 points.
TRAIN_PAIRS, HELD_OUT_PAIRS = 96, 384
USER, ASSISTANT, END, SYSTEM = "<|user|>", "<|assistant|>", "<|endoftext|>", "<|system|>"


def lines_of(path, skip):
    lines = [l.strip() for l in open(path).read().splitlines()[skip:]]
    return [l for l in lines if 5 <= len(l.split()) <= 12]


def pairs_from(path, count, seed):
    """For a line, the next line (chosen) against its words shuffled (rejected)."""
    rng = random.Random(seed)
    lines = lines_of(path, 400)
    out = []
    for i in range(0, len(lines) - 1, 3):
        words = lines[i + 1].split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        out.append({"prompt": lines[i], "chosen": lines[i + 1], "rejected": " ".join(shuffled)})
        if len(out) == count:
            return out
    raise SystemExit(f"{path}: too few lines for {count} pairs")


def quark_lr(step):
    """Quark's schedule (`optim::Schedule`, nanoGPT's): linear warm-up from LR/(WARMUP+1),
    then cosine to 0 at the last step."""
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    progress = min(1.0, (step - WARMUP) / max(1, STEPS - WARMUP))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * LR


def on_quark_schedule(trainer_class):
    """`trainer_class` with Quark's learning-rate schedule in place of transformers' own."""
    import torch

    class Scheduled(trainer_class):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                optimizer = self.optimizer if optimizer is None else optimizer
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: quark_lr(step) / LR)
            return self.lr_scheduler

    return Scheduled


def schedule_check():
    """A callback asserting that each step's learning rate is Quark's for that step."""
    from transformers import TrainerCallback

    class Check(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            lr = optimizer.param_groups[0]["lr"]
            assert abs(lr - quark_lr(state.global_step)) < 1e-12, (state.global_step, lr)

    return Check()


def tokenizer_of(model_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), eos_token=END, pad_token=SYSTEM)


def run_measured(command):
    """Runs `command`; its peak resident set (MiB) from wait4."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    stderr = child.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:3]} failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024


def quark_side(quark, start, pairs_file, work, kind, seed):
    out = os.path.join(work, "quark")
    args = [quark, "train", "--from", start, f"--{kind}", pairs_file, "--out", out, "--steps", str(STEPS), "--lr", str(LR),
            "--min-lr", "0", "--warmup", str(WARMUP), "--weight-decay", "0", "--batch-size", str(PAIRS_PER_STEP),
            "--block-size", str(BLOCK), "--log-interval", str(LOG), "--eval-interval", "0", "--checkpoint-interval", "0",
            "--seed", str(seed), "--device", DEVICE]
    args += ["--beta", str(BETA)] if kind == "dpo" else ["--center-rewards", str(CENTER)]
    peak = run_measured(args)
    model = os.path.join(out, open(os.path.join(out, "latest")).read().strip())
    state = json.load(open(os.path.join(model, "trainer_state.json")))
    return {"model": model, "loss": state["train_loss"], "accuracy": state["train_stats"]["rewards_accuracy"],
            "steps_per_s": state["step"] / (state["train_us"] / 1e6), "tokens_per_step": state["tokens"] / state["step"],
            "peak_mib": peak}


def trl_train(kind, start, pairs_file, out, precompute, seed):
    """One TRL run, in a process of its own (called as `dpo_trl.py --trl ...`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel

    torch.set_num_threads(2)
    tok = tokenizer_of(start)
    pairs = [json.loads(l) for l in open(pairs_file)]
    rows = [{"prompt": USER + p["prompt"] + ASSISTANT, "chosen": p["chosen"] + END, "rejected": p["rejected"] + END} for p in pairs]
    common = dict(output_dir=out, max_steps=STEPS, learning_rate=LR,
                  per_device_train_batch_size=PAIRS_PER_STEP, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.99,
                  adam_epsilon=1e-8, max_grad_norm=1.0, max_length=BLOCK, save_strategy="no", report_to=[],
                  logging_steps=LOG, use_cpu=DEVICE == "cpu", bf16=DEVICE != "cpu", dataloader_num_workers=0, seed=seed, disable_tqdm=True, pad_token=SYSTEM)
    timer = step_timer()
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=precompute, **common)
        model = GPT2LMHeadModel.from_pretrained(start, dtype=torch.float32)
        trainer = on_quark_schedule(DPOTrainer)(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer, schedule_check()])
        sample, first = trainer.train_dataset[0], rows[0]
        assert sample["prompt_ids"] + sample["chosen_ids"] == tok(first["prompt"] + first["chosen"])["input_ids"]
        accuracy_key = "rewards/accuracies"
    else:
        from trl import RewardConfig, RewardTrainer

        config = RewardConfig(center_rewards_coefficient=CENTER, **common)
        model = AutoModelForSequenceClassification.from_pretrained(start, num_labels=1, dtype=torch.float32)
        trainer = on_quark_schedule(RewardTrainer)(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer, schedule_check()])
        sample, first = trainer.train_dataset[0], rows[0]
        assert sample["chosen_ids"] == tok(first["prompt"] + first["chosen"])["input_ids"]
        accuracy_key = "accuracy"
    trainer.train()
    assert timer.steps == STEPS, f"TRL ran {timer.steps} steps"
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    trainer.model.save_pretrained(os.path.join(out, "model"))
    tok.save_pretrained(os.path.join(out, "model"))
    json.dump({"loss": last["loss"], "accuracy": last[accuracy_key], "steps_per_s": STEPS / timer.seconds},
              open(os.path.join(out, "result.json"), "w"))


def trl_side(kind, start, pairs_file, work, precompute, seed):
    out = os.path.join(work, "trl")
    peak = run_measured([sys.executable, __file__, "--trl", kind, start, pairs_file, out, str(precompute), str(seed)])
    result = json.load(open(os.path.join(out, "result.json")))
    return {**result, "model": os.path.join(out, "model"), "peak_mib": peak}


def response_logps(model, tok, pair):
    """Summed log-probabilities of the chosen and rejected responses (their end included)."""
    import torch

    out = []
    for response in (pair["chosen"], pair["rejected"]):
        prompt = tok(USER + pair["prompt"] + ASSISTANT)["input_ids"]
        ids = tok(USER + pair["prompt"] + ASSISTANT + response + END)["input_ids"]
        logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        targets = torch.tensor(ids[1:])
        picked = logits.gather(1, targets[:, None])[:, 0]
        out.append(picked[len(prompt) - 1:].sum().item())
    return out


def held_out_accuracy(kind, model_dir, base, pairs):
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel

    tok = tokenizer_of(base)
    wins = 0
    with torch.no_grad():
        if kind == "dpo":
            policy = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
            reference = GPT2LMHeadModel.from_pretrained(base, dtype=torch.float32).eval()
            for p in pairs:
                (pc, pr), (rc, rr) = response_logps(policy, tok, p), response_logps(reference, tok, p)
                wins += BETA * (pc - rc) > BETA * (pr - rr)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
            score = lambda text: model(torch.tensor([tok(text)["input_ids"]])).logits[0, 0].item()
            for p in pairs:
                prompt = USER + p["prompt"] + ASSISTANT
                wins += score(prompt + p["chosen"] + END) > score(prompt + p["rejected"] + END)
    return wins / len(pairs)


def reward_start(base, work):
    """The reward model both sides start from: the base's body and TRL's (transformers')
    initialisation of the scalar head, saved once."""
    import shutil
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(SEEDS[0])
    tok = tokenizer_of(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    start = os.path.join(work, "reward-start")
    model.save_pretrained(start)
    shutil.copy(os.path.join(base, "tokenizer.json"), start)
    return start


def main():
    quark, plays = sys.argv[1:3]
    import torch

    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="quark-bench-dpo-")
    base = pretrained_base(quark, plays, work)
    train = pairs_from(os.path.join(plays, "hamlet_gut.txt"), TRAIN_PAIRS, 1)
    held_out = pairs_from(os.path.join(plays, "othello_gut.txt"), HELD_OUT_PAIRS, 2)
    pairs_file = os.path.join(work, "pairs.jsonl")
    with open(pairs_file, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in train)
    print(f"settings (both sides): {TRAIN_PAIRS} training pairs, {HELD_OUT_PAIRS} held out, {STEPS} steps of {PAIRS_PER_STEP} pairs, "
          f"lr {LR} on Quark's schedule ({WARMUP} warm-up steps from lr/{WARMUP + 1}, cosine to 0 at step {STEPS}), AdamW betas (0.9, 0.99), no weight decay, grad clip 1.0, "
          f"DPO sigmoid loss with beta {BETA}, reward centring {CENTER}, every weight trained, seeds {SEEDS}, {'fp32 on the CPU, 2 threads' if DEVICE == 'cpu' else f'bf16 autocast over fp32 weights on {torch.cuda.get_device_name()}'}; "
          f"TRL {__import__('trl').__version__}, transformers {__import__('transformers').__version__}, torch {torch.__version__}")
    print("| job | seed | side | final loss | final reward accuracy (training pairs) | held-out reward accuracy | steps/s | Quark ÷ side | tokens/s (Quark's tokens a step) | peak memory (resident) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    jobs = {
        "dpo": (base, ["quark", "trl", "trl-precompute"]),
        "reward": (reward_start(base, work), ["quark", "trl"]),
    }
    summary = []
    for kind, (start, sides) in jobs.items():
        held = {side: [] for side in sides}
        for run, seed in enumerate(SEEDS):
            # The sides in one order, then the other: whoever runs first pays for a cold machine.
            order = sides if run % 2 == 0 else sides[::-1]
            results = {}
            for side in order:
                side_work = os.path.join(work, kind, f"{run}-{side}")
                os.makedirs(side_work)
                if side == "quark":
                    results[side] = quark_side(quark, start, pairs_file, side_work, kind, seed)
                else:
                    results[side] = trl_side(kind, start, pairs_file, side_work, side == "trl-precompute", seed)
            for side in sides:
                r = results[side]
                accuracy = held_out_accuracy(kind, r["model"], base if kind == "dpo" else start, held_out)
                held[side].append((accuracy, results["quark"]["steps_per_s"] / r["steps_per_s"]))
                ratio = "" if side == "quark" else f"{results['quark']['steps_per_s'] / r['steps_per_s']:.2f}"
                print(f"| {kind} | {seed} | {side} ({order.index(side) + 1} of {len(order)}) | {r['loss']:.4f} | "
                      f"{100 * r['accuracy']:.1f} % | {100 * accuracy:.1f} % | {r['steps_per_s']:.2f} | {ratio} | "
                      f"{results['quark']['tokens_per_step'] * r['steps_per_s']:.0f} | "
                      f"{r['peak_mib']:.0f} MiB |", flush=True)
        for side in sides:
            accuracies = [a for a, _ in held[side]]
            ratios = [q for _, q in held[side]]
            mean = 100 * sum(accuracies) / len(accuracies)
            quark_mean = 100 * sum(a for a, _ in held["quark"]) / len(SEEDS)
            summary.append(f"| {kind} | {side} | {mean:.2f} % | {100 * min(accuracies):.1f}–{100 * max(accuracies):.1f} % | "
                           + ("— | —" if side == "quark" else f"{quark_mean - mean:+.2f} | {min(ratios):.2f}–{max(ratios):.2f}") + " |")
    print(f"\n| job | side | held-out reward accuracy, mean of {len(SEEDS)} seeds | range over the seeds | Quark − side (points) | Quark's steps/s ÷ side's |")
    print("|---|---|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    if sys.argv[1] == "--trl":
        kind, start, pairs_file, out, precompute, seed = sys.argv[2:]
        trl_train(kind, start, pairs_file, out, precompute == "True", int(seed))
    else:
        main()
