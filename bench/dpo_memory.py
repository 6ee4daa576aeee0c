"""Peak memory of a DPO round on full responses with a large vocabulary: whole [B, T, V] logits vs the chunked head.

The two phases of a DPO batch as the dpo and dpo2 stages run them, bf16 autocast, on Gemma 3 270M (vocabulary
262,144; `phiforge setup gemma`): the reference log-probs (no grad), and one training step's forward and
backward (the optimizer step left out: AdamW's states are the same on both paths). Responses are programmatic worked
solutions, chosen right and rejected with the last answer corrupted. Each (phase, path) runs in a fresh child
process and reports its peak resident memory (ru_maxrss) above the phase's start; "whole" sets
phiforge.lm.logprobs.CHUNK_ELEMENTS so high that the batch takes the whole-logits path, "chunked" is the default. The
check value (the reference log-probs' sum; the gradient norm) must agree between the paths.

    python bench/dpo_memory.py                       # 8 pairs of 3-solution responses
    python bench/dpo_memory.py --batch-size 4 --solutions 1
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

    import phiforge.lm.logprobs as logprobs
    import phiforge.train.dpo as dpo
    from phiforge.lm import hf
    from phiforge.data.problems import make_problem
    from phiforge.data.render import chat
    from phiforge.train.optim import autocast

    model, tok = hf.load(args.model)
    if args.mode == "whole":
        logprobs.CHUNK_ELEMENTS = 1 << 62
    pairs = []
    for i in range(args.batch_size):
        # a response of args.solutions worked solutions, as long as a judged full response can be
        problems = [make_problem("linear_equations", 7, args.solutions * i + j, 2) for j in range(args.solutions)]
        right = "\n\n".join(chat(p)[-1]["content"] for p in problems)
        wrong = right.replace(str(problems[-1].answer), str(problems[-1].answer) + "1")
        pairs.append({"prompt_ids": tok.chat_prompt(" ".join(p.question for p in problems)),
                      "chosen_ids": tok.encode(right) + [tok.im_end_id],
                      "rejected_ids": tok.encode(wrong) + [tok.im_end_id]})
    tokens = sum(len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if args.phase == "reference":
        value = dpo.precompute_reference(model, pairs, pad_id=tok.pad_id, batch_size=args.batch_size, dtype="bf16")
        value = float(value.sum())
    else:  # one training step's forward and backward, the optimizer left out: its states do not depend on the path
        ref = dpo.precompute_reference(model, pairs, pad_id=tok.pad_id, batch_size=args.batch_size, dtype="bf16")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        model.train()
        with autocast("bf16", torch.device("cpu")):
            chosen, rejected = dpo._pair_logps(model, pairs, tok.pad_id)
        loss = dpo.DPOLoss(0.1)(chosen, rejected, ref[:, 0], ref[:, 1])[0]
        loss.backward()
        value = float(sum(p.grad.float().norm() ** 2 for p in model.parameters() if p.grad is not None) ** 0.5)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": args.mode, "phase": args.phase, "vocab": model.vocab_size, "pairs": len(pairs),
                      "tokens": tokens, "value": value, "seconds": seconds, "model_mb": base / 1024,
                      "peak_above_mb": (peak - base) / 1024, "threads": torch.get_num_threads()}))


def main() -> None:
    from phiforge.lm import gemma

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(gemma.GEMMA_DIR))
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per batch (2x rows)")
    ap.add_argument("--solutions", type=int, default=3, help="worked solutions per response")
    ap.add_argument("--mode", choices=["whole", "chunked"], help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--phase", choices=["reference", "step"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child(args)
        return
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"no transformers model at {args.model}: run `phiforge setup gemma` first")
    rows = []
    for phase in ("reference", "step"):
        for mode in ("whole", "chunked"):
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch-size",
                                  str(args.batch_size), "--solutions", str(args.solutions), "--mode", mode,
                                  "--phase", phase], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"DPO on {Path(args.model).name}: vocabulary {r0['vocab']:,}, {r0['pairs']} full-response pairs in one batch "
          f"({r0['tokens']:,} tokens), bf16 autocast, {r0['threads']} threads; model loaded: {r0['model_mb']:,.0f} MB\n")
    print("| phase | logits | peak memory above the start of the phase (MB) | seconds | check value |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['mode']} | {r['peak_above_mb']:,.0f} | {r['seconds']:.1f} | {r['value']:.6g} |")
    for phase in ("reference", "step"):
        w, c = (r for r in rows if r["phase"] == phase)
        print(f"{phase}: chunked / whole peak {c['peak_above_mb'] / max(w['peak_above_mb'], 1):.2f}x, values agree to "
              f"{abs(c['value'] - w['value']) / max(abs(w['value']), 1e-12):.1e} (relative)")


if __name__ == "__main__":
    main()
