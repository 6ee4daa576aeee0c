"""Evaluation speed: problems per minute with batched KV-cache generation against one problem at a time.

Both sides run the same model on the same contest problems (the eval stage's fresh contest, drawn from eval.seed)
through phiforge.lm.generate.generate with greedy decoding, the eval stage's max_new_tokens and its stop tokens; only
the batch size differs: 1 is one problem at a time (still with its own KV cache), the others decode that many
problems together, left-padded. A problem counts when its answer has been generated and extracted. Greedy outputs
must not depend on batching, so the script also checks that every batch size produced the same answers.

The model is a trained run's (`--run`, default the SFT model, with the run's tokenizer and the chat prompt); with no
run given, a freshly initialised model of the tiny recipe's shape with a byte-level tokenizer trained on the contest
questions stands in (it never stops early, so every answer is max_new_tokens long).

Batch sizes alternate within each repeat (the order rotates between repeats) so that noise from a shared machine
hits all of them; each figure is the median over repeats.

    python bench/eval_batching.py --run runs/tiny          # the reported run (default recipe's run folder)
    python bench/eval_batching.py --quick                  # smoke test on an untrained model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import torch  # noqa: E402

from phiforge.answers import answers_equal, extract_answer  # noqa: E402
from phiforge.config import load_recipe  # noqa: E402
from phiforge.eval.choice import prompt_ids  # noqa: E402
from phiforge.eval.contest import clean_output, contest  # noqa: E402
from phiforge.lm.generate import generate  # noqa: E402


def load(run: Path | None, recipe, model_name: str, problems):
    from phiforge.lm.tokenizer import ChatTokenizer, train_bpe

    if run is None:
        from phiforge.lm.model import Phi3

        tok = ChatTokenizer(train_bpe([p.question for p in problems] * 4, vocab_size=512, progress=False))
        recipe.model.vocab_size = tok.vocab_size
        torch.manual_seed(0)
        return Phi3(recipe.model).eval(), tok, "untrained (tiny recipe shape)"
    from phiforge.lm.checkpoint import load_model

    tok = ChatTokenizer.load(run / "tokenizer")
    folder = run / ("midtrain" if model_name == "base" else model_name) / "model"
    return load_model(folder)[0].eval(), tok, f"{model_name} from {run}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a finished run folder (default: untrained model)")
    ap.add_argument("--model", default="sft", choices=["pretrain", "base", "sft", "dpo"])
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="16 problems, batch sizes 1 and 16, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.problems, args.batch_sizes, args.repeats = 16, "1,16", 1
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.run / "recipe.yaml" if args.run else None, [f"eval.n_problems={args.problems}"])
    problems, _ = contest(recipe, set())
    model, tok, what = load(args.run, recipe, args.model, problems)
    style = "chat" if args.model in ("sft", "dpo") else "completion"
    prompts = [prompt_ids(tok, p.question, style) for p in problems]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    common = dict(max_new_tokens=recipe.eval.max_new_tokens, pad_id=tok.pad_id,
                  stop_ids=[tok.im_end_id, tok.endoftext_id], temperature=0.0)

    times: dict[int, list[float]] = {b: [] for b in sizes}
    outputs: dict[int, list[list[int]]] = {}
    generate(model, prompts[:4], batch_size=4, **common)  # warm-up: first-call allocations and thread pools
    for r in range(args.repeats):
        for b in sizes[r % len(sizes):] + sizes[: r % len(sizes)]:
            start = time.perf_counter()
            outs = generate(model, prompts, batch_size=b, **common)
            answers = [extract_answer(clean_output(tok.decode(o), style)) for o in outs]
            times[b].append(time.perf_counter() - start)
            outputs[b] = outs
            print(f"repeat {r + 1}/{args.repeats} batch {b:>4}: {times[b][-1]:.2f} s", file=sys.stderr, flush=True)
    tokens = sum(map(len, outputs[sizes[0]]))
    same = all(outputs[b] == outputs[sizes[0]] for b in sizes)
    solved = sum(answers_equal(extract_answer(clean_output(tok.decode(o), style)), p.answer)
                 for o, p in zip(outputs[sizes[0]], problems))

    print(f"model: {what}; {len(problems)} contest problems, {style} prompts, greedy, max_new_tokens "
          f"{recipe.eval.max_new_tokens}; {tokens:,} tokens generated ({tokens / len(problems):.1f} per problem), "
          f"{solved} solved; torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeats} repeats")
    print(f"greedy outputs identical across batch sizes: {same}")
    base = statistics.median(times[sizes[0]])
    print("| batch size | seconds | problems / min | tokens / s | vs one at a time |")
    print("|---|---|---|---|---|")
    for b in sizes:
        t = statistics.median(times[b])
        label = f"{b} (one at a time)" if b == 1 else str(b)
        print(f"| {label} | {t:.2f} | {60 * len(problems) / t:,.0f} | {tokens / t:,.0f} | {base / t:.1f}x |")


if __name__ == "__main__":
    main()
