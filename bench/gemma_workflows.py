"""Phi-4's LLM workflows with a real small LLM as the teacher: Gemma 3 270M (a transformers folder) on this CPU.

    python bench/gemma_workflows.py /tmp/gemma/hf --workflows rewrite plurality --seeds 4 --max-tokens 192

The folder converted from the registry's GGUF is the *base* model and carries no chat template, so the prompt is
rendered either in Gemma's turn format (`--template turns`, the format Gemma's instruction-tuned models use; its
`<end_of_turn>` ends a reply) or as plain text for a base model to continue (`--template plain`). Prints, per
workflow: seeds, candidates, kept, accept rate, teacher tokens and tokens/s, the most common reasons for rejection,
and one kept sample; `--json` also writes every record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phiforge.data import seed_texts  # noqa: E402
from phiforge.data.synth_llm import reason_key  # noqa: E402
from phiforge.lm.teachers import LocalTeacher  # noqa: E402
from phiforge.data.workflows import SEED_KIND, WORKFLOWS, Knobs  # noqa: E402

TEMPLATES = {
    "turns": ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
              "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] | trim }}<end_of_turn>\n"
              "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    # A base model continues text: the request, then a blank line, and the reply is whatever comes next.
    "plain": "{{ bos_token }}{% for m in messages %}{{ m['content'] | trim }}\n\n{% endfor %}",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a transformers causal-LM folder (e.g. /tmp/gemma/hf)")
    ap.add_argument("--workflows", nargs="+", default=["rewrite", "plurality"], choices=list(WORKFLOWS))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--template", choices=list(TEMPLATES), default="turns")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-share", type=float, default=0.5, help="plurality: winning share of the k answers")
    ap.add_argument("--bare-questions", action="store_true",
                    help="plurality: send the question alone, without the step-by-step instruction")
    ap.add_argument("--json", type=Path, help="write every record here")
    args = ap.parse_args()

    teacher = LocalTeacher(args.model, batch_size=args.batch_size, batch_sampled=True)
    hf = getattr(teacher.tok, "tok", None)  # a transformers tokenizer; phiforge's own has its chat format built in
    if hasattr(hf, "apply_chat_template") and not hf.chat_template:
        teacher.use_chat_template(TEMPLATES[args.template], ["<end_of_turn>"] if args.template == "turns" else [])
    knobs = Knobs(seed=args.seed, temperature=args.temperature, max_tokens=args.max_tokens, k=args.k, exercises=2,
                  min_share=args.min_share, **({"answer_instruction": ""} if args.bare_questions else {}))
    dump = []
    for name in args.workflows:
        kind = SEED_KIND[name]
        seeds = (seed_texts.passages(args.seeds, args.seed) if kind == "passages" else
                 seed_texts.code_seeds(args.seeds, args.seed) if kind == "code" else
                 seed_texts.question_seeds(args.seeds, args.seed, ["arithmetic", "fractions", "linear_equations",
                                                                     "number_theory"]))
        before = dict(teacher.stats)
        t0 = time.perf_counter()
        records = WORKFLOWS[name](teacher, seeds, knobs)
        dt = time.perf_counter() - t0
        out_tok = teacher.stats["completion_tokens"] - before["completion_tokens"]
        kept = [r for r in records if r.kept]
        print(f"\n== {name} ({args.template} template): {len(seeds)} seeds, {len(records)} candidates, "
              f"{len(kept)} kept, accept rate {len(kept) / max(1, len(records)):.1%}; "
              f"{out_tok} tokens written in {dt:.0f} s ({out_tok / dt:.1f} tokens/s)")
        for reason, n in Counter(reason_key(r.reason) for r in records if not r.kept).most_common(5):
            print(f"   rejected {n}: {reason}")
        if name == "plurality":
            right = [r.verifier.get("matches_exact") for r in kept]
            print(f"   plurality answer equals the exact answer for {sum(map(bool, right))} of {len(kept)} kept")
        if kept:
            print("   kept sample:", json.dumps(kept[0].text()[:400]))
        dump += [{"workflow": name, "seed": r.seed.id, "kept": r.kept, "reason": r.reason, "reply": r.reply,
                  "text": r.text(),
                  "steps": r.steps, "verifier": r.verifier, "scores": r.scores} for r in records]
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
