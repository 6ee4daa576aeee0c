"""Post-training a real transformers folder (`sft.init`): Gemma 3 270M, a few SFT steps on programmatic maths chats,
then DPO on one full-response pair and one single-token pair, as the sft and dpo stages run them.

Prints the assistant-token loss on the training chats before and after SFT, seconds per SFT step, the saved
folder's size and its generation_config, transformers' greedy reply to a held-out question before and after, and
the DPO reward margin (policy minus reference, chosen minus rejected) before and after. The base model has no chat
template, so the ChatML tokens are new rows of the embedding: the first steps mostly teach the format.

    phiforge setup gemma                      # once: data/models/gemma-3-270m-hf
    python bench/hf_posttrain.py                           # 12 SFT steps, batch 4, on CPU
    python bench/hf_posttrain.py --steps 30 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import torch  # noqa: E402

from phiforge.lm import hf  # noqa: E402
from phiforge.lm import gemma  # noqa: E402
from phiforge.config import DPOConfig, OptimConfig, SFTConfig  # noqa: E402
from phiforge.lm.logprobs import sequence_logps  # noqa: E402
from phiforge.train.dpo import precompute_reference, train_on_pairs  # noqa: E402
from phiforge.lm.generate import generate  # noqa: E402
from phiforge.data.problems import make_problem  # noqa: E402
from phiforge.data.render import chat  # noqa: E402
from phiforge.train.sft import build_example, collate, train  # noqa: E402
from phiforge.train.optim import cross_entropy  # noqa: E402


def assistant_loss(model, examples, pad_id, batch: int = 4) -> float:
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            x, y = collate(examples[i:i + batch], pad_id)
            dev = next(model.parameters()).device
            loss, n = cross_entropy(model(x.to(dev)), y.to(dev))
            total, count = total + float(loss), count + n
    return total / count


def margin(model, pairs, ref, pad_id) -> list[float]:
    model.eval()
    with torch.no_grad():
        c = sequence_logps(model, [p["prompt_ids"] for p in pairs], [p["chosen_ids"] for p in pairs], pad_id)
        r = sequence_logps(model, [p["prompt_ids"] for p in pairs], [p["rejected_ids"] for p in pairs], pad_id)
    return [round(float(v), 3) for v in (c - ref[:, 0].to(c.device)) - (r - ref[:, 1].to(r.device))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(gemma.GEMMA_DIR))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--chats", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, tok = hf.load(gemma.path(Path(args.model)))
    model.to(args.device)
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s: {sum(p.numel() for p in model.parameters()):,} "
          f"params, vocab {len(tok.tok)}, pad {tok.pad_id}, stops {tok.stop_ids}, bos {tok.bos}")
    problems = [make_problem("arithmetic", seed=0, index=i) for i in range(args.chats + 1)]
    examples = [build_example(tok, chat(p), 256) for p in problems[:-1]]
    held_out = tok.chat_prompt(problems[-1].question)
    greedy = dict(max_new_tokens=40, pad_id=tok.pad_id, stop_ids=tok.stop_ids)
    print(f"held-out question: {problems[-1].question!r} (answer {problems[-1].answer})")
    print(f"  before: {tok.decode(generate(model, [held_out], **greedy)[0])!r}")
    before = assistant_loss(model, examples, tok.pad_id)

    cfg = SFTConfig(batch_size=args.batch_size, steps=args.steps, dtype=args.dtype, log_every=1,
                    optim=OptimConfig(lr=args.lr, warmup_steps=min(2, args.steps - 1), weight_decay=0.0))
    t0 = time.perf_counter()
    history = train(model, examples, tok.pad_id, cfg)
    sft_s = time.perf_counter() - t0
    after = assistant_loss(model, examples, tok.pad_id)
    print(f"SFT {args.steps} steps x {args.batch_size} chats ({args.dtype}): {sft_s / args.steps:.2f} s/step; "
          f"assistant loss {before:.3f} -> {after:.3f}; step losses {[round(h['loss'], 3) for h in history]}")
    print(f"  after: {tok.decode(generate(model, [held_out], **greedy)[0])!r}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hf.save(model, tok, Path(tmp) / "sft", args.dtype)
        size = sum(f.stat().st_size for f in (Path(tmp) / "sft").iterdir())
        import transformers

        loaded = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "sft", dtype="auto")
        ltok = transformers.AutoTokenizer.from_pretrained(Path(tmp) / "sft")
        gen = loaded.generation_config
        print(f"saved in {time.perf_counter() - t0:.1f}s, {size / 1e6:.0f} MB, {loaded.dtype}; generation_config eos "
              f"{gen.eos_token_id} pad {gen.pad_token_id}; tokenizer eos {ltok.eos_token!r} pad {ltok.pad_token!r}")
        assert gen.pad_token_id not in gen.eos_token_id and ltok.pad_token_id != ltok.eos_token_id
        assert ltok.apply_chat_template([{"role": "user", "content": problems[-1].question}], tokenize=True,
                                        add_generation_prompt=True, return_dict=False) == held_out

    p = problems[-1]
    # The wrong answer differs in its last digit, the pivotal token of the single-token pair (Gemma splits digits).
    right = p.answer
    wrong = right[:-1] + str((int(right[-1]) + 1) % 10)
    prefix = held_out + tok.encode("The answer is \\boxed{" + right[:-1])
    pairs = [{"prompt_ids": held_out, "chosen_ids": tok.encode(f"The answer is \\boxed{{{right}}}.") + [tok.im_end_id],
              "rejected_ids": tok.encode(f"The answer is \\boxed{{{wrong}}}.") + [tok.im_end_id]},
             {"prompt_ids": prefix, "chosen_ids": tok.encode(right[-1]), "rejected_ids": tok.encode(wrong[-1])}]
    assert len(pairs[1]["chosen_ids"]) == len(pairs[1]["rejected_ids"]) == 1
    dcfg = DPOConfig(beta=0.1, epochs=4, batch_size=2, dtype=args.dtype, log_every=1,
                     optim=OptimConfig(lr=args.lr, warmup_steps=0, weight_decay=0.0))
    ref = precompute_reference(model, pairs, pad_id=tok.pad_id, batch_size=2, dtype=args.dtype)
    t0 = time.perf_counter()
    steps, history = train_on_pairs(model, pairs, dcfg, tok.pad_id)
    print(f"DPO {steps} steps on a full-response and a single-token pair: {(time.perf_counter() - t0) / steps:.2f} "
          f"s/step; losses {[round(h['loss'], 3) for h in history]}; margin after (from 0) "
          f"{margin(model, pairs, ref, tok.pad_id)}")


if __name__ == "__main__":
    main()
