"""Pivotal Token Search cost: rollouts per pivotal token, adaptive vs fixed-20, on one model and one set of questions;
and rollout sampling speed, phiforge's shared-prefix KV cache vs transformers `generate`, on the same weights.

Part 1 runs `pts.search_query` on the run's SFT model over its held-out `pts` questions exactly as the stage does
(same sampled solutions, same seeds), once with mode=adaptive and once with mode=fixed (n_fixed 20), and prints
questions searched, pivotal tokens found, rollouts and rollouts per pivotal token, plus how many pivotal tokens the
two modes agree on. Rollout counts do not depend on the machine, so part 1 is exact.

Part 2 samples n rollouts of max_new_tokens from prefixes (a question plus the first half of a solution), with
`generate.sample_from_prefix` (prefill once, copy the cache to n rows) and with `Phi3ForCausalLM.generate` on the
same weights (the prefix repeated n times, `num_return_sequences`-style), and reports new tokens/s: medians of
--repeats, the two alternating.

    python bench/pts_rollouts.py --run runs/tiny                 # a finished default run
    python bench/pts_rollouts.py --run runs/tiny --quick         # smoke test
    python bench/pts_rollouts.py --run runs/tiny --verify 200    # also check every pivot found with fresh rollouts
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import torch  # noqa: E402

from phiforge.lm.checkpoint import load_model  # noqa: E402
from phiforge.config import load_recipe  # noqa: E402
from phiforge.lm.generate import generate, sample_from_prefix  # noqa: E402
from phiforge.train.pts import MathOracle, SuccessEstimator, search_query, summarize  # noqa: E402
from phiforge.rundir import RunDir  # noqa: E402
from phiforge.data.corpus import read_column  # noqa: E402


def search_cost(run: RunDir, recipe, n_queries: int, verify: int = 0) -> dict:
    cfg = recipe.pts
    model, _, tok = load_model(run.stage_dir("sft") / "model")
    model.eval()
    questions, answers = read_column(run, "pts", "question")[:n_queries], read_column(run, "pts", "answer")[:n_queries]
    queries = [tok.chat_prompt(q) for q in questions]
    k = cfg.solutions_per_query
    sampled = generate(model, [q for q in queries for _ in range(k)], max_new_tokens=cfg.max_response_tokens,
                       pad_id=tok.pad_id, stop_ids=tok.stop_ids, temperature=cfg.solution_temperature, seed=cfg.seed)
    solutions = []
    for i in range(len(queries)):
        sols = []
        for s in sampled[i * k:(i + 1) * k]:
            s = s + [tok.im_end_id] if len(s) < cfg.max_response_tokens else s
            if s and s not in sols:
                sols.append(s)
        solutions.append(sols)
    out = {}
    for mode in ("adaptive", "fixed"):
        c = type(cfg)(**{**cfg.__dict__, "mode": mode, "n_fixed": 20})
        t0 = time.perf_counter()
        results = [search_query(model, q, s, MathOracle(a), decode=tok.decode, stop_ids=tok.stop_ids, cfg=c)
                   for q, s, a in zip(queries, solutions, answers)]
        out[mode] = {**summarize(results), "seconds": time.perf_counter() - t0,
                     "found": {(i, pt.prefix, pt.token) for i, r in enumerate(results) for pt in r["pivotal"]}}
    if verify:
        # Each pivot found by either mode re-estimated with `verify` fresh rollouts on each side of its token
        # (another seed): a true pivot changes p(success) by at least p_gap.
        truth = {}
        for i, prefix, token in sorted(out["adaptive"]["found"] | out["fixed"]["found"]):
            est = SuccessEstimator(model, queries[i], MathOracle(answers[i]), decode=tok.decode,
                                   stop_ids=tok.stop_ids, max_response_tokens=cfg.max_response_tokens, mode="fixed",
                                   n_fixed=verify, batch=verify, max_rollouts=verify, seed=cfg.seed + 7919)
            truth[(i, prefix, token)] = abs(est.p(prefix + (token,)) - est.p(prefix)) >= cfg.p_gap
        for mode in out:
            out[mode]["confirmed"] = sum(truth[k] for k in out[mode]["found"])
    return out


def rollout_speed(run: RunDir, recipe, n: int, max_new_tokens: int, n_prefixes: int, repeats: int) -> dict:
    import transformers

    model, _, tok = load_model(run.stage_dir("sft") / "model")
    model.eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(run.stage_dir("sft") / "model", dtype=torch.float32).eval()
    questions = read_column(run, "pts", "question")[:n_prefixes]
    answers = read_column(run, "pts", "messages")[:n_prefixes]
    prefixes = [tok.chat_prompt(q) + tok.encode(m[-1]["content"])[:24] for q, m in zip(questions, answers)]
    times = {"phiforge": [], "transformers": []}
    tokens = {"phiforge": 0, "transformers": 0}
    for rep in range(repeats):
        order = ("phiforge", "transformers") if rep % 2 == 0 else ("transformers", "phiforge")
        for side in order:
            t0, made = time.perf_counter(), 0
            for p in prefixes:
                if side == "phiforge":
                    gen = torch.Generator().manual_seed(rep)
                    outs = sample_from_prefix(model, p, n, max_new_tokens=max_new_tokens, temperature=1.0,
                                              generator=gen)
                    made += sum(map(len, outs))
                else:
                    torch.manual_seed(rep)
                    with torch.inference_mode():
                        out = hf.generate(torch.tensor([p] * n), attention_mask=torch.ones(n, len(p), dtype=torch.long),
                                          max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                          do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                          pad_token_id=tok.pad_id)
                    made += out[:, len(p):].numel()
            times[side].append(time.perf_counter() - t0)
            tokens[side] = made
    return {side: tokens[side] / statistics.median(times[side]) for side in times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished phiforge run folder (needs synth and sft)")
    ap.add_argument("--queries", type=int, default=None, help="questions to search (default: the recipe's pts.n_queries)")
    ap.add_argument("--rollouts", type=int, default=16, help="part 2: rollouts per prefix")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prefixes", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--verify", type=int, default=0,
                    help="re-estimate every pivot found with this many fresh rollouts per side (0: off)")
    args = ap.parse_args()
    run = RunDir.open(Path(args.run))
    recipe = load_recipe(str(run.root / "recipe.yaml"))
    n_queries = 4 if args.quick else args.queries or recipe.pts.n_queries
    if not args.skip_search:
        cost = search_cost(run, recipe, n_queries, args.verify)
        a, f = cost["adaptive"], cost["fixed"]
        print(f"\nPTS on {run.stage_dir('sft') / 'model'}, {n_queries} questions, p_gap {recipe.pts.p_gap}\n")
        print("| mode | searched | pivotal tokens | pairs | rollouts | rollouts / pivotal token | seconds |")
        print("|---|---|---|---|---|---|---|")
        for name, r in (("adaptive", a), ("fixed-20", f)):
            print(f"| {name} | {r['searched']} | {r['pivotal_tokens']} | {r['pairs']} | {r['rollouts']:,} | "
                  f"{r['rollouts_per_pivotal_token']} | {r['seconds']:.1f} |")
        both = len(a["found"] & f["found"])
        ratio = (a["rollouts_per_pivotal_token"] / f["rollouts_per_pivotal_token"]
                 if a["rollouts_per_pivotal_token"] and f["rollouts_per_pivotal_token"] else float("nan"))
        print(f"\nadaptive / fixed-20 rollouts per pivotal token: {ratio:.2f}x (target <= 0.5x); total rollouts "
              f"{a['rollouts'] / max(f['rollouts'], 1):.2f}x; pivotal tokens found by both: {both}")
        if args.verify:
            for name, r in (("adaptive", a), ("fixed-20", f)):
                print(f"{name}: {r['confirmed']} of {r['pivotal_tokens']} pivots confirmed by {args.verify} fresh "
                      f"rollouts per side (|change in p| >= p_gap); rollouts per confirmed pivot "
                      f"{r['rollouts'] / max(r['confirmed'], 1):.1f}")
    if args.quick:
        args.rollouts, args.max_new_tokens, args.prefixes, args.repeats = 4, 16, 2, 1
    speed = rollout_speed(run, recipe, args.rollouts, args.max_new_tokens, args.prefixes, args.repeats)
    print(f"\nrollout sampling, {args.prefixes} prefixes x {args.rollouts} rollouts x {args.max_new_tokens} tokens, "
          f"{torch.get_num_threads()} threads, fp32, median of {args.repeats}\n")
    print("| engine | new tokens/s |\n|---|---|")
    for side, rate in speed.items():
        print(f"| {side} | {rate:,.0f} |")
    print(f"\nphiforge / transformers: {speed['phiforge'] / speed['transformers']:.2f}x")


if __name__ == "__main__":
    main()
