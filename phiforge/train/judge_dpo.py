"""Stage `dpo2`: judge-guided DPO, the second DPO round of Phi-4 (§4.2).

Prompts are synth `pts` questions that neither pretraining, SFT nor PTS used. Every policy in `dpo2.policies`
answers each of them: `teacher` with the synthetic reference solution (the paper's GPT-4o/GPT-4t responses), `sft`
and `dpo` with `samples_per_policy` sampled solutions each. A judge scores every response (faults, then 1-5 for
accuracy, style and detail); every two responses to one prompt that the judge tells apart make a pair, chosen = the
higher accuracy, else the higher mean. The PTS-DPO model is then trained on these full-response pairs, against its
own log-probs before the round as the reference. With `sft.init` the policies are the run's transformers folders,
and so is the result.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from phiforge.data.corpus import read_column
from phiforge.lm.generate import generate
from phiforge.lm.teachers import make_teacher
from phiforge.rundir import atomic_write_json, atomic_write_text
from phiforge.train.dpo import train_on_pairs
from phiforge.train.judge import JudgeTask, LLMJudge, ProgrammaticJudge, preference_pairs
from phiforge.train.optim import device
from phiforge.train.sft import load_policy


def make_judge(cfg, run):
    """The judge a recipe names: programmatic, or an LLM behind the teacher interface (HTTP server or checkpoint)."""
    if cfg.judge.kind == "programmatic":
        return ProgrammaticJudge()
    return LLMJudge(make_teacher(cfg.judge, "dpo2.judge", cache_dir=run.stage_dir("dpo2") / "judge-cache"))


def questions(recipe, run) -> list[dict]:
    """The round's prompts: the `pts` questions after the ones PTS searched."""
    lo, hi = recipe.pts.n_queries, recipe.pts.n_queries + recipe.dpo2.n_queries
    cols = {c: read_column(run, "pts", c)[lo:hi] for c in ("id", "question", "answer", "messages")}
    return [{"id": i, "question": q, "answer": a, "reference": m[-1]["content"]}
            for i, q, a, m in zip(cols["id"], cols["question"], cols["answer"], cols["messages"])]


def responses(recipe, run, items: list[dict], tok) -> list[list[dict]]:
    """Per question, every policy's responses: text, token ids (stop token kept when it stopped), finished."""

    cfg = recipe.dpo2
    out: list[list[dict]] = [[] for _ in items]
    for policy in cfg.policies:
        if policy == "teacher":
            for i, item in enumerate(items):
                ids = tok.encode(item["reference"]) + [tok.im_end_id]
                out[i].append({"policy": "teacher", "text": item["reference"], "ids": ids, "finished": True})
            continue
        model = load_policy(recipe, run, policy, "dpo2", cfg.dtype, train=False)[0].to(device()).eval()
        k = cfg.samples_per_policy
        prompts = [tok.chat_prompt(item["question"]) for item in items for _ in range(k)]
        sampled = generate(model, prompts, max_new_tokens=cfg.max_response_tokens, pad_id=tok.pad_id,
                           stop_ids=tok.stop_ids, temperature=cfg.temperature, seed=cfg.seed, progress=True)
        for n, ids in enumerate(sampled):
            finished = len(ids) < cfg.max_response_tokens
            out[n // k].append({"policy": policy, "text": tok.decode(ids), "finished": finished,
                                "ids": ids + [tok.im_end_id] if finished else ids})
    return out


def execute(recipe, run) -> dict:

    cfg = recipe.dpo2
    model, tok, save = load_policy(recipe, run, "dpo", "dpo2", cfg.dtype)  # phiforge's, or sft.init's transformers model
    items = questions(recipe, run)
    answered = responses(recipe, run, items, tok)
    judge = make_judge(cfg, run)
    tasks = [JudgeTask(item["question"], r["text"], item["reference"], item["answer"], r["finished"])
             for item, rs in zip(items, answered) for r in rs]
    verdicts = iter(judge.score(tasks))

    pairs, lines = [], []
    by_policy: dict[str, list] = defaultdict(list)
    wins: dict[str, int] = defaultdict(int)
    for item, rs in zip(items, answered):
        scores = [next(verdicts) for _ in rs]
        for r, s in zip(rs, scores):
            if s is not None:
                by_policy[r["policy"]].append(s)
        prompt_ids = tok.chat_prompt(item["question"])
        for c, r in preference_pairs(scores):
            if rs[c]["ids"] == rs[r]["ids"]:
                continue
            wins[rs[c]["policy"]] += 1
            pairs.append({"prompt_ids": prompt_ids, "chosen_ids": rs[c]["ids"], "rejected_ids": rs[r]["ids"]})
            lines.append(json.dumps({
                "question_id": item["id"], "question": item["question"], "answer": item["answer"],
                "chosen": {"policy": rs[c]["policy"], "text": rs[c]["text"], **scores[c].to_dict()},
                "rejected": {"policy": rs[r]["policy"], "text": rs[r]["text"], **scores[r].to_dict()}}) + "\n")

    model.to(device())
    steps, history = train_on_pairs(model, pairs, cfg, tok.pad_id)
    out = run.stage_dir("dpo2")
    save(model, out / "model")
    atomic_write_text(out / "pairs.jsonl", "".join(lines))
    atomic_write_json(out / "history.json", {"train": history})
    last = history[-1] if history else {}
    mean = {p: {axis: round(sum(getattr(s, axis) for s in ss) / len(ss), 3) for axis in ("accuracy", "style", "detail")}
            for p, ss in by_policy.items() if ss}
    return {"judge": judge.name, "questions": len(items), "responses": len(tasks),
            "unscored": getattr(judge, "unparsed", 0), "mean_scores": mean,
            "chosen_by_policy": dict(wins), "pairs": len(pairs), "steps": steps,
            "first_loss": history[0]["loss"] if history else None, "final_loss": last.get("loss"),
            "final_reward_margin": last.get("reward_margin"), "final_pair_accuracy": last.get("accuracy")}


def outputs(run) -> list[Path]:
    out = run.stage_dir("dpo2")
    return [out / "model", out / "pairs.jsonl", out / "history.json"]

