"""The synth stage's LLM part: `synth.workflows` run on `synth.teacher`, written beside the programmatic shards.

Kept samples land in `<into>-llm-<workflow>.parquet` with the programmatic shards' schema (`into` is pretrain or
sft), so decontamination and training read them like any other sample; their `teacher`, `verifier` and
`provenance` columns say which teacher made them, how they were checked, and every step with its request seed and
scores. Rejected candidates join the stage's rejects.jsonl with their reason. The data card has one row per
(workflow, teacher): seeds, candidates, kept, rejected, accept rate, characters kept, the tokens the teacher read
and wrote (fresh requests only; cache hits cost none) and the most frequent reasons for rejection.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from phiforge import seeds as seed_sources
from phiforge.config import SynthConfig
from phiforge.seeds import Seed
from phiforge.teacher import make_teacher
from phiforge.workflows import SEED_KIND, WORKFLOWS, Knobs, Record


def workflow_seeds(cfg: SynthConfig, workflow: str, n: int) -> list[Seed]:
    kind = SEED_KIND[workflow]
    if kind == "passages":
        return seed_sources.passages(n, cfg.seed)
    if kind == "code":
        return seed_sources.code_seeds(n, cfg.seed, cfg.difficulty)
    return seed_sources.question_seeds(n, cfg.seed, [d for d, w in cfg.domains.items() if w > 0], cfg.difficulty)


def row(cfg: SynthConfig, r: Record, sample_id: str, teacher: str, into: str) -> dict:
    out = {
        "id": sample_id,
        "question": r.question,
        "answer": r.answer,
        "source": "code" if r.workflow == "reverse_code" else "synthetic",
        "domain": r.seed.domain,
        "style": r.workflow,
        "teacher": teacher,
        "seed": cfg.seed,
        "verified": r.kept,
        "verifier": json.dumps(r.verifier),
        "provenance": json.dumps({"workflow": r.workflow, "seed_id": r.seed.id, "seed_source": r.seed.source,
                                  "steps": r.steps, "scores": r.scores}),
    }
    if into == "sft":
        out["messages"] = r.messages()
    else:
        out["text"] = r.text()
    return out


def reason_key(reason: str) -> str:
    """A rejection reason without its particulars (numbers, quoted text), so that like reasons count together."""
    return reason.split(" (")[0].split(": {")[0][:80]


def run_workflows(cfg: SynthConfig, out: Path) -> tuple[list[dict], list[dict]]:
    from phiforge.synth import PRETRAIN_SCHEMA, SFT_SCHEMA, write_shard

    w = cfg.workflows
    teacher = make_teacher(cfg.teacher, cache_dir=out / "teacher-cache")
    knobs = Knobs(seed=cfg.seed, temperature=w.temperature, max_tokens=w.max_tokens, exercises=w.exercises,
                  rounds=w.rounds, min_score=w.min_score, k=w.k, min_share=w.min_share,
                  answer_instruction=w.answer_instruction, grounding=w.grounding)
    schema = SFT_SCHEMA if w.into == "sft" else PRETRAIN_SCHEMA
    rejects, card = [], []
    for name in WORKFLOWS:  # a fixed order, so a rerun sends the same batches
        n = w.seeds.get(name, 0)
        if not n:
            continue
        seeds = workflow_seeds(cfg, name, n)
        before = dict(getattr(teacher, "stats", {}))
        t0 = time.perf_counter()
        records = WORKFLOWS[name](teacher, seeds, knobs)
        seconds = time.perf_counter() - t0
        per_seed: Counter = Counter()
        rows = []
        for r in records:
            j, per_seed[r.seed.id] = per_seed[r.seed.id], per_seed[r.seed.id] + 1
            sample = row(cfg, r, f"{w.into}-llm-{name}-{r.seed.id}-{j}", teacher.name, w.into)
            if r.kept:
                rows.append(sample)
            else:
                rejects.append({"id": sample["id"], "reason": r.reason, "reply": r.reply[:4000], **sample})
        write_shard(out / f"{w.into}-llm-{name}.parquet", rows, schema)
        stats = getattr(teacher, "stats", {})
        spent = {k: stats.get(k, 0) - before.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}
        chars = sum(len(x["text"]) if "text" in x else sum(len(m["content"]) for m in x["messages"]) for x in rows)
        reasons = Counter(reason_key(r.reason) for r in records if not r.kept)
        card.append({"workflow": name, "teacher": teacher.name, "seeds": len(seeds), "candidates": len(records),
                     "kept": len(rows), "rejected": len(records) - len(rows),
                     "accept_rate": len(rows) / len(records) if records else 0.0, "chars": chars,
                     "teacher_prompt_tokens": spent["prompt_tokens"],
                     "teacher_completion_tokens": spent["completion_tokens"], "seconds": round(seconds, 2),
                     "reasons": dict(reasons.most_common(5))})
    return rejects, card
