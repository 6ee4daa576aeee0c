"""Batched KV-cache sampling speed: phiforge.lm.generate.generate against transformers' generate, same weights.

A small Phi3 (d_model 256, 4 layers, 4 heads / 2 KV heads, vocab 8192) in fp32, as evaluation runs it. Both get the
same prompts (varied lengths, left-padded inside a batch), the same max_new_tokens and no stop token, so every row
produces exactly max_new_tokens; tokens/s counts only generated tokens (prompt tokens are not counted, though their
prefill is inside the timing). transformers runs with attn_implementation="sdpa", its default dynamic cache, and
top_k disabled so that temperature sampling draws from the same full distribution as phiforge.

The two implementations alternate within every repeat (and swap which goes first) so the shared machine's noise hits
both; each figure is the median over repeats. Greedy agreement is checked on the batch of the largest batch size:
weights are scaled up so that logits are peaked and argmax ties cannot make agreement a coin flip.

    python bench/generate.py                       # the reported run
    python bench/generate.py --quick               # smoke test
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import torch  # noqa: E402

from phiforge.lm.generate import generate  # noqa: E402
from phiforge.lm.model import ModelConfig, Phi3, hf_config_dict  # noqa: E402

BOS, EOS, PAD = 1, 2, 0


def build_models(cfg: ModelConfig, weight_scale: float):
    import transformers

    torch.manual_seed(0)
    pf = Phi3(cfg).eval()
    with torch.no_grad():
        for p in pf.parameters():
            if p.dim() > 1:
                p.mul_(weight_scale)
    hf_dict = hf_config_dict(cfg, BOS, EOS, PAD)
    hf_dict["eos_token_id"] = None  # no stop token on either side: every row generates max_new_tokens
    hf_cfg = transformers.Phi3Config(**hf_dict)
    hf_cfg._attn_implementation = "sdpa"
    hf = transformers.Phi3ForCausalLM(hf_cfg).eval()
    hf.load_state_dict(pf.state_dict(), strict=True)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = PAD
    return pf, hf


def make_prompts(n: int, vocab: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[BOS] + [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi) - 1)] for _ in range(n)]


def run_phiforge(model, prompts, max_new, temperature, seed) -> tuple[list[list[int]], float]:
    t = time.perf_counter()
    out = generate(model, prompts, max_new_tokens=max_new, pad_id=PAD, temperature=temperature,
                   seed=seed if temperature > 0 else None, batch_size=len(prompts))
    return out, time.perf_counter() - t


def run_hf(model, prompts, max_new, temperature, seed) -> tuple[list[list[int]], float]:
    t = time.perf_counter()
    # Left padding, built here because there is no tokenizer: part of what a caller of HF generate has to do.
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):] = torch.tensor(p)
        mask[r, L - len(p):] = 1
    kw = dict(do_sample=False) if temperature <= 0 else dict(do_sample=True, temperature=temperature, top_k=0,
                                                             top_p=1.0)
    if temperature > 0:
        torch.manual_seed(seed)
    with torch.inference_mode():
        seqs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=0,
                              pad_token_id=PAD, eos_token_id=None, **kw)
    out = seqs[:, L:].tolist()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", default="8,96", help="min,max prompt tokens (uniform)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=0.8, help="for the sampling rows")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    lo, hi = (int(s) for s in args.prompt_len.split(","))
    if args.quick:
        sizes, args.max_new_tokens, args.repeats, lo, hi = [1, 4], 8, 2, 4, 16
        cfg = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=192,
                          max_seq_len=hi + args.max_new_tokens)
    else:
        cfg = ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ffn=768,
                          max_seq_len=hi + args.max_new_tokens)
    pf, hf = build_models(cfg, weight_scale=4.0)
    prompts = make_prompts(max(sizes), cfg.vocab_size, lo, hi, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; model d_model {cfg.d_model}, "
          f"{cfg.n_layers} layers, {cfg.n_heads} heads / {cfg.n_kv_heads} kv heads, vocab {cfg.vocab_size}; "
          f"prompts {lo}-{hi} tokens, max_new_tokens {args.max_new_tokens}, median of {args.repeats} repeats")

    # Warm-up both (thread pools, allocator, first-call dispatch) on a small batch.
    for fn, m in ((run_phiforge, pf), (run_hf, hf)):
        fn(m, prompts[:4], 4, 0.0, 0)

    rows = []
    for mode, temp in (("greedy", 0.0), (f"sample T={args.temperature}", args.temperature)):
        for bs in sizes:
            batch = prompts[:bs]
            times = {"phiforge": [], "transformers": []}
            toks = {}
            for rep in range(args.repeats):
                order = [("phiforge", run_phiforge, pf), ("transformers", run_hf, hf)]
                for name, fn, m in order if rep % 2 == 0 else order[::-1]:
                    out, dt = fn(m, batch, args.max_new_tokens, temp, seed=rep)
                    times[name].append(dt)
                    toks[name] = sum(len(o) for o in out)
            assert toks["phiforge"] == toks["transformers"] == bs * args.max_new_tokens, toks
            rate = {k: toks[k] / statistics.median(v) for k, v in times.items()}
            rows.append((mode, bs, rate["phiforge"], rate["transformers"]))
            print(f"  {mode} batch {bs}: phiforge {rate['phiforge']:,.0f} tok/s, "
                  f"transformers {rate['transformers']:,.0f} tok/s", flush=True)

    # Greedy agreement on the largest batch (ragged lengths, so padding and per-row positions are exercised).
    batch = prompts[:max(sizes)]
    a, _ = run_phiforge(pf, batch, args.max_new_tokens, 0.0, 0)
    b, _ = run_hf(hf, batch, args.max_new_tokens, 0.0, 0)
    same_tokens = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    total = sum(len(r) for r in a)
    # Once two rows diverge they continue from different prefixes, so the prefix before the first mismatch is the
    # fair per-token measure.
    prefix = sum(next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra)) for ra, rb in zip(a, b))
    exact = sum(ra == rb for ra, rb in zip(a, b))

    print()
    print("| mode | batch | phiforge tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|---|")
    for mode, bs, p, h in rows:
        print(f"| {mode} | {bs} | {p:,.0f} | {h:,.0f} | {p / h:.2f}x |")
    print(f"\ngreedy agreement on {len(batch)} prompts x {args.max_new_tokens} tokens: {exact}/{len(batch)} rows "
          f"identical ({exact / len(batch):.1%}), {prefix / total:.1%} of tokens before the first divergence, "
          f"{same_tokens / total:.1%} of tokens equal position by position")


if __name__ == "__main__":
    main()
