"""Peak memory of a DPO round on full responses with a large vocabulary: whole [B, T, V] logits vs the chunked head.

One DPO round as the dpo and dpo2 stages run it (reference log-probs once, then training steps, bf16 autocast) on
Gemma 3 270M (vocabulary 262,144) when `python -m phiforge.refmodel setup` has installed it, over programmatic maths
chats whose reference solution is chosen and a corrupted one rejected. Each mode runs in a fresh child process and
reports its peak resident memory (ru_maxrss) above the memory right after loading the model, and its seconds;
"whole" sets phiforge.dpo.CHUNK_ELEMENTS so high that every batch takes the whole-logits path, "chunked" is the
default. The two must reach the same losses (checked).

    python bench/dpo_memory.py                          # batch 4 pairs, 2 steps
    python bench/dpo_memory.py --batch-size 8 --steps 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing


def child(args) -> None:
    import torch

    import phiforge.dpo as dpo
    from phiforge import hf_posttrain
    from phiforge.config import DPOConfig, OptimConfig
    from phiforge.problems import make_problem
    from phiforge.render import chat

    model, tok = hf_posttrain.load(args.model)
    if args.mode == "whole":
        dpo.CHUNK_ELEMENTS = 1 << 62
    pairs = []
    for i in range(args.batch_size * args.steps):
        p = make_problem("linear_equations", 7, i, 2)
        right = chat(p)[-1]["content"]
        wrong = right.replace(str(p.answer), str(p.answer) + "1")
        pairs.append({"prompt_ids": tok.chat_prompt(p.question), "chosen_ids": tok.encode(right) + [tok.im_end_id],
                      "rejected_ids": tok.encode(wrong) + [tok.im_end_id]})
    tokens = sum(len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = DPOConfig(beta=0.1, epochs=1, batch_size=args.batch_size, dtype="bf16",
                    optim=OptimConfig(lr=1e-6, warmup_steps=0, weight_decay=0.0))
    t = time.perf_counter()
    steps, history = dpo.train_on_pairs(model, pairs, cfg, tok.pad_id)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": args.mode, "vocab": model.vocab_size, "pairs": len(pairs), "tokens": tokens,
                      "steps": steps, "losses": [h["loss"] for h in history], "seconds": seconds,
                      "model_mb": base / 1024, "peak_above_model_mb": (peak - base) / 1024,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    from phiforge import refmodel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(refmodel.GEMMA_DIR))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mode", choices=["whole", "chunked"], help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.mode:
        child(args)
        return
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"no transformers model at {args.model}: run `python -m phiforge.refmodel setup` first")
    rows = []
    for mode in ("whole", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
                              "--steps", str(args.steps), "--mode", mode], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    whole, chunked = rows
    same = all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(whole["losses"], chunked["losses"]))
    print(f"DPO round on {Path(args.model).name}: vocabulary {whole['vocab']:,}, {whole['pairs']} full-response pairs "
          f"({whole['tokens']:,} tokens), batch {args.batch_size}, {whole['steps']} steps, bf16 autocast, "
          f"{whole['threads']} threads; model loaded: {whole['model_mb']:,.0f} MB\n")
    print("| logits | peak memory above the loaded model (MB) | seconds | losses |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['peak_above_model_mb']:,.0f} | {r['seconds']:.1f} | "
              f"{', '.join(f'{x:.4f}' for x in r['losses'])} |")
    print(f"\nchunked / whole peak: {chunked['peak_above_model_mb'] / whole['peak_above_model_mb']:.2f}x; "
          f"same losses: {same}")


if __name__ == "__main__":
    main()
