"""SFT of a transformers model, phiforge against TRL's SFTTrainer, side by side in one run: the same model, the same
token ids and loss masks, the same batches in the same order, AdamW with the same settings, bf16 autocast, full
fine-tuning and LoRA (peft, the same LoraConfig: rank, alpha, targets, the chat tokens' rows); then DPO of the full
model on the same pairs (TRL tokenizes their text itself: the bench checks it gets phiforge's ids). Neither side uses
activation checkpointing unless an arm ends in -gc (TRL 1.16 turns it on by default). Each arm runs in a fresh
process, so its peak RSS is its own.

Prints a table: real (non-padding) tokens per second over the steps after the first, peak RSS, the first and last
step's loss, and the largest per-step loss difference from phiforge's arm of the same kind (full or LoRA).

TRL is not a phiforge dependency: give the bench a Python that has it (a venv that sees this one's packages):

    python -m venv --system-site-packages /tmp/trlv && /tmp/trlv/bin/pip install trl==1.16.0
    python bench/posttrain_vs_trl.py --trl-python /tmp/trlv/bin/python            # Gemma 3 270M, 8 steps x 8 chats
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

# phiforge-lora-composite: phiforge's LoRA arm with the head through checkpointed chunks of log-softmax
# (lm/logprobs.target_logps), the path before the fused head + loss of train/linear_ce.py
# trl-*: TRL with activation checkpointing off, as phiforge runs (TRL 1.16 turns it on by default); trl-dpo-gc: TRL's
# default, to show what checkpointing trades
ARMS = ("phiforge-full", "trl-full", "phiforge-lora", "trl-lora", "phiforge-lora-composite", "phiforge-dpo",
        "trl-dpo", "trl-dpo-gc")


def Timer():
    """A TrainerCallback (transformers is imported late) that times each optimiser step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.t0 = [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

    return StepTimer()


def conversations(n: int, seed: int) -> list[list[dict]]:
    """`n` verified chats of the programmatic teacher's curriculum, as the sft stage trains on them."""
    from phiforge.config import load_recipe
    from phiforge.data.problems import make_problem
    from phiforge.data.render import chat

    domains = sorted(load_recipe("gemma-math").synth.domains)
    return [chat(make_problem(domains[i % len(domains)], seed=seed, index=i)) for i in range(n)]


def batches_in_order(args, n: int) -> list[list[int]]:
    from phiforge.train.sft import batches

    return [list(map(int, b)) for b in batches(n, args.batch_size, args.steps, seed=0)]


def run_phiforge(args, examples, order) -> dict:
    from phiforge.config import LoRAConfig, OptimConfig, SFTConfig
    from phiforge.lm import gemma, hf
    from phiforge.train import lora
    from phiforge.train.sft import collate, loss_sum
    from phiforge.train.optim import build_optimizer, clip_and_step, lr_at, set_lr

    model, tok = hf.load(gemma.resolve(args.model))
    if args.arm.endswith("composite"):
        del hf.CausalLM.head_weight  # loss_sum falls back to the composite path
    if "lora" in args.arm:
        lora.attach(model, tok, LoRAConfig(r=args.rank, alpha=2 * args.rank), None, "bf16")
    cfg = SFTConfig(batch_size=args.batch_size, steps=args.steps, optim=OptimConfig(
        lr=args.lr, warmup_steps=0, weight_decay=0.0))  # no warm-up: transformers' first warm-up step has lr 0
    opt = build_optimizer(model, cfg.optim)
    model.train()
    losses, seconds = [], []
    # sft.train's step, unrolled to time each step and follow a given batch order
    for step, idx in enumerate(order):
        t0 = time.perf_counter()
        set_lr(opt, lr_at(step, cfg.steps, cfg.optim))
        x, y = collate([examples[i] for i in idx], tok.pad_id)
        loss, count = loss_sum(model, x, y, "bf16")
        (loss / count).backward()
        clip_and_step(model, opt, cfg.optim.grad_clip)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()) / count)
    return {"losses": losses, "seconds": seconds}


def run_trl(args, examples, order) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from trl import SFTConfig, SFTTrainer

    from phiforge.lm import gemma, hf

    model, tok = hf.load(gemma.resolve(args.model))  # the same added tokens, PAD and resized embedding
    flat = [i for b in order for i in b]
    rows = [{"input_ids": examples[i][0], "assistant_masks": examples[i][1]} for i in flat]

    class InOrder(SFTTrainer):  # the batches phiforge's arm sees, in its order
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    timer = Timer()
    config = SFTConfig(
        output_dir=str(Path(args.scratch) / args.arm), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, bf16=True, use_cpu=True, logging_steps=1,
        save_strategy="no", report_to=[], gradient_checkpointing=False, max_length=None, packing=False,
        assistant_only_loss=False,
        dataloader_num_workers=0, seed=0, optim="adamw_torch_fused")
    peft_config = None
    if args.arm.endswith("lora"):
        # Without the chat tokens' rows: TRL 1.16's fused head reads `lm_head.bias`, which peft's trainable-token
        # wrapper lacks (AttributeError). The TRL arm trains 3 x 640 fewer values, no more work than phiforge's.
        peft_config = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, bias="none",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
    trainer = InOrder(model=model.hf, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok.tok,
                      peft_config=peft_config, callbacks=[timer])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "seconds": timer.seconds}


def dpo_pairs(tok, n: int) -> list[dict]:
    """Whole-response pairs as judge-guided DPO makes them: the verified solution chosen, the same solution with a
    wrong final answer rejected."""
    pairs = []
    for c in conversations(n, seed=2):
        question, solution = c[-2]["content"], c[-1]["content"]
        head, _, last = solution.rpartition("\n")
        wrong = head + "\n" + "".join(str((int(ch) + 1) % 10) if ch.isdigit() else ch for ch in last)
        pairs.append({"prompt_ids": tok.chat_prompt(question), "chosen_ids": tok.encode(solution) + [tok.im_end_id],
                      "rejected_ids": tok.encode(wrong) + [tok.im_end_id]})
    return pairs


def run_phiforge_dpo(args, model, tok, pairs, order) -> dict:
    from phiforge.config import OptimConfig
    from phiforge.train.dpo import DPOLoss, _pair_logps, precompute_reference
    from phiforge.train.optim import autocast, build_optimizer, clip_and_step, lr_at, set_lr

    ref = precompute_reference(model, pairs, pad_id=tok.pad_id, batch_size=args.batch_size, dtype="bf16")
    o = OptimConfig(lr=args.lr, warmup_steps=0, weight_decay=0.0)
    opt, loss_fn = build_optimizer(model, o), DPOLoss(0.1)
    model.train()
    losses, seconds = [], []
    for step, idx in enumerate(order):  # dpo.train_dpo's step, unrolled to time each step
        t0 = time.perf_counter()
        set_lr(opt, lr_at(step, args.steps, o))
        r = ref[idx]
        with autocast("bf16"):
            chosen, rejected = _pair_logps(model, [pairs[i] for i in idx], tok.pad_id)
        loss = loss_fn(chosen, rejected, r[:, 0], r[:, 1])[0]
        loss.backward()
        clip_and_step(model, opt, o.grad_clip)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return {"losses": losses, "seconds": seconds}


def run_trl_dpo(args, model, tok, pairs, order) -> dict:
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import DPOConfig, DPOTrainer

    timer = Timer()

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    # TRL 1.16 tokenizes text pairs itself (prompt, prompt + chosen, prompt + rejected, the completion starting where
    # they diverge): hand it the text of phiforge's ids, without the <bos> its tokenizer adds, ending in <|im_end|>
    # (the tokenizer's EOS, so TRL appends none), and refuse to time it unless its ids come out the same as ours.
    text = tok.tok.decode
    rows = []
    for i in (i for b in order for i in b):
        p = pairs[i]
        assert p["prompt_ids"][0] == tok.tok.bos_token_id and tok.tok.eos_token_id == tok.im_end_id
        rows.append({"prompt": text(p["prompt_ids"][1:]), "chosen": text(p["chosen_ids"]),
                     "rejected": text(p["rejected_ids"])})
        for side in ("chosen", "rejected"):
            ids = tok.tok(rows[-1]["prompt"] + rows[-1][side])["input_ids"]
            if ids != p["prompt_ids"] + p[side + "_ids"]:
                sys.exit(f"trl-dpo: pair {i}'s {side} side tokenizes differently from phiforge's ids")
    config = DPOConfig(
        output_dir=str(Path(args.scratch) / args.arm), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        bf16=True, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[],
        gradient_checkpointing=args.arm.endswith("-gc"), beta=0.1, max_length=None,
        precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch_size, dataloader_num_workers=0, seed=0,
        optim="adamw_torch_fused")
    trainer = InOrder(model=model.hf, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok.tok,
                      callbacks=[timer])
    trainer.train()
    return {"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h], "seconds": timer.seconds}


def child(args) -> None:
    from phiforge.lm import gemma, hf

    model, tok = hf.load(gemma.resolve(args.model))
    if "-dpo" in args.arm:
        pairs = dpo_pairs(tok, args.chats)
        order = batches_in_order(args, len(pairs))
        out = (run_trl_dpo if args.arm.startswith("trl") else run_phiforge_dpo)(args, model, tok, pairs, order)
        out["real_tokens"] = [sum(len(pairs[i]["prompt_ids"]) * 2 + len(pairs[i]["chosen_ids"])
                                  + len(pairs[i]["rejected_ids"]) for i in b) for b in order]
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print("RESULT " + json.dumps(out))
        return
    del model
    examples = []  # (ids, mask): TRL takes the mask over the ids, phiforge the shifted targets it implies
    for c in conversations(args.chats, seed=1):
        ids, mask = tok.encode_chat(c)
        examples.append((ids[: args.max_len + 1], [int(m) for m in mask[: args.max_len + 1]]))
    order = batches_in_order(args, len(examples))
    if args.arm.startswith("trl"):
        out = run_trl(args, examples, order)
    else:
        pairs = [(ids[:-1], [t if m else -100 for t, m in zip(ids[1:], mask[1:])]) for ids, mask in examples]
        out = run_phiforge(args, pairs, order)
    out["real_tokens"] = [sum(len(examples[i][0]) - 1 for i in b) for b in order]
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m", help="gemma-3-270m (set up on first use) or a folder")
    ap.add_argument("--trl-python", default=sys.executable, help="a Python with trl installed")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chats", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--scratch", default="/tmp/posttrain-vs-trl")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        return child(args)

    results = {}
    for arm in args.arms.split(","):
        python = args.trl_python if arm.startswith("trl") else sys.executable
        cmd = [python, __file__, "--arm", arm] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                  if k not in ("arm", "arms", "trl_python")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode or line is None:
            sys.exit(f"{arm} failed:\n{done.stderr[-3000:]}")
        results[arm] = json.loads(line[len("RESULT "):])
        r = results[arm]
        print(f"{arm}: {len(r['losses'])} steps, losses {[round(v, 3) for v in r['losses']]}", flush=True)

    print(f"\n{args.steps} steps x {args.batch_size} chats (max {args.max_len} tokens), bf16 autocast, lr {args.lr}, "
          f"LoRA rank {args.rank}\n")
    print("| arm | real tokens/s (steps 2..) | median s/step | peak RSS GB | loss first -> last | max loss diff |")
    print("|---|---|---|---|---|---|")
    for arm, r in results.items():
        tokens, secs = sum(r["real_tokens"][1:]), sum(r["seconds"][1:])
        kind = arm.split("-")[1]  # full, lora or dpo
        ref = results.get("phiforge-" + kind) if arm != "phiforge-" + kind else None
        diff = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"])) if ref else float("nan")
        print(f"| {arm} | {tokens / secs:.0f} | {statistics.median(r['seconds'][1:]):.2f} | {r['peak_rss_gb']:.2f} | "
              f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} | {diff:.3f} |")


if __name__ == "__main__":
    main()
