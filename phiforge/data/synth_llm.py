"""The synth stage's LLM part: `synth.workflows` run on `synth.teacher`, written beside the programmatic shards.

Kept samples land in `<into>-llm-<workflow>-<shard>.parquet` with the programmatic shards' schema (`into` is pretrain or
sft), so decontamination and training read them like any other sample; their `teacher`, `verifier` and
`provenance` columns say which teacher made them, how they were checked, and every step with its request seed and
scores. Rejected candidates join the stage's rejects.jsonl with their reason. The data card has one row per
(workflow, teacher): seeds, candidates, kept, rejected, accept rate, characters kept, the tokens the teacher read
and wrote (fresh requests only; cache hits cost none) and the most frequent reasons for rejection.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from phiforge.config import SynthConfig, WorkflowKnobs
from phiforge.data import seed_texts
from phiforge.data.seed_texts import Seed
from phiforge.data.shards import PRETRAIN_SCHEMA, SFT_SCHEMA, read_marker, write_marker, write_shard
from phiforge.data.workflows import SEED_KIND, WORKFLOWS, Knobs, Record
from phiforge.lm.teachers import make_teacher


def workflow_seeds(cfg: SynthConfig, workflow: str, n: int) -> list[Seed]:
    domains = tuple(d for d, w in cfg.domains.items() if w > 0)
    return list(_seeds(SEED_KIND[workflow], n, cfg.seed, cfg.difficulty, domains))


@functools.lru_cache(maxsize=8)  # every shard of a workflow slices the same list
def _seeds(kind: str, n: int, seed: int, difficulty: int, domains: tuple[str, ...]) -> tuple[Seed, ...]:
    if kind == "passages":
        return tuple(seed_texts.passages(n, seed))
    if kind == "code":
        return tuple(seed_texts.code_seeds(n, seed, difficulty))
    return tuple(seed_texts.question_seeds(n, seed, list(domains), difficulty))


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


def llm_tasks(cfg: SynthConfig) -> list[tuple[str, int, int, int]]:
    """(workflow, shard, first seed, stop seed) of every LLM shard, workflows in WORKFLOWS order: each workflow's
    seeds cut into runs of `synth.workflows.shard_seeds`, the unit one worker makes and a crash resumes from."""
    w = cfg.workflows
    return [(name, shard, lo, min(w.seeds[name], lo + w.shard_seeds)) for name in WORKFLOWS if w.seeds.get(name)
            for shard, lo in enumerate(range(0, w.seeds[name], w.shard_seeds))]


def shard_name(cfg: SynthConfig, task: tuple) -> str:
    return f"{cfg.workflows.into}-llm-{task[0]}-{task[1]:05d}.parquet"


def llm_key(cfg: SynthConfig) -> str:
    """What decides an LLM shard's samples: the seeds drawn, the workflow settings and the teacher."""
    fields = {"seed": cfg.seed, "difficulty": cfg.difficulty, "domains": cfg.domains,
              "workflows": dataclasses.asdict(cfg.workflows), "teacher": dataclasses.asdict(cfg.teacher)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def finished(cfg: SynthConfig, out: Path, task: tuple) -> dict | None:
    """The summary of an LLM shard already made under this config, else None."""
    return read_marker(out, shard_name(cfg, task), llm_key(cfg))


def make_shard(cfg: SynthConfig, out: Path, task: tuple, teacher) -> dict:
    """Run one workflow on one shard's seeds unless that shard is done; write its kept samples, then its marker
    (counts, teacher tokens, rejects). A seed's requests carry seeds of their own (workflows.request_seed), so
    which shard or worker sends them does not change what an HTTP teacher answers."""
    if (done := finished(cfg, out, task)) is not None:
        return done
    w = cfg.workflows
    name, _, lo, hi = task
    seeds = workflow_seeds(cfg, name, w.seeds[name])[lo:hi]
    knobs = Knobs(seed=cfg.seed, **{f.name: getattr(w, f.name) for f in dataclasses.fields(WorkflowKnobs)})
    before = dict(getattr(teacher, "stats", {}))
    t0 = time.perf_counter()
    records = WORKFLOWS[name](teacher, seeds, knobs)
    seconds = time.perf_counter() - t0
    per_seed: Counter = Counter()
    rows, rejects = [], []
    for r in records:
        j, per_seed[r.seed.id] = per_seed[r.seed.id], per_seed[r.seed.id] + 1
        sample = row(cfg, r, f"{w.into}-llm-{name}-{r.seed.id}-{j}", teacher.name, w.into)
        if r.kept:
            rows.append(sample)
        else:
            rejects.append({"id": sample["id"], "reason": r.reason, "reply": r.reply[:4000], **sample})
    write_shard(out / shard_name(cfg, task), rows, SFT_SCHEMA if w.into == "sft" else PRETRAIN_SCHEMA)
    stats = getattr(teacher, "stats", {})
    summary = {"key": llm_key(cfg), "workflow": name, "teacher": teacher.name, "seeds": len(seeds),
               "candidates": len(records), "kept": len(rows),
               "chars": sum(len(x["text"]) if "text" in x else sum(len(m["content"]) for m in x["messages"])
                            for x in rows),
               "teacher_prompt_tokens": stats.get("prompt_tokens", 0) - before.get("prompt_tokens", 0),
               "teacher_completion_tokens": stats.get("completion_tokens", 0) - before.get("completion_tokens", 0),
               "seconds": round(seconds, 2), "reasons": dict(Counter(reason_key(r.reason) for r in records
                                                                     if not r.kept)),
               "rejects": rejects}
    write_marker(out, shard_name(cfg, task), summary)
    return summary


def teacher_for(cfg: SynthConfig, out: Path):
    return make_teacher(cfg.teacher, "synth.teacher", cache_dir=out / "teacher-cache")


def run_workflows(cfg: SynthConfig, out: Path) -> tuple[list[dict], list[dict]]:
    """Every LLM shard not yet made (by this process, an earlier crashed run or cluster jobs), then the rejects
    and one data-card row per workflow, summed over its shards."""
    tasks = llm_tasks(cfg)
    missing = [t for t in tasks if finished(cfg, out, t) is None]
    teacher = teacher_for(cfg, out) if missing else None
    summaries = [make_shard(cfg, out, t, teacher) for t in tasks]
    rejects, card = [], []
    for name in dict.fromkeys(t[0] for t in tasks):
        mine = [s for t, s in zip(tasks, summaries) if t[0] == name]
        rejects += [r for s in mine for r in s["rejects"]]
        total = {k: sum(s[k] for s in mine) for k in ("seeds", "candidates", "kept", "chars", "teacher_prompt_tokens",
                                                      "teacher_completion_tokens", "seconds")}
        reasons = sum((Counter(s["reasons"]) for s in mine), Counter())
        card.append({"workflow": name, "teacher": mine[0]["teacher"], "seeds": total["seeds"],
                     "candidates": total["candidates"], "kept": total["kept"],
                     "rejected": total["candidates"] - total["kept"],
                     "accept_rate": total["kept"] / total["candidates"] if total["candidates"] else 0.0,
                     "chars": total["chars"], "teacher_prompt_tokens": total["teacher_prompt_tokens"],
                     "teacher_completion_tokens": total["teacher_completion_tokens"],
                     "seconds": round(total["seconds"], 2), "reasons": dict(reasons.most_common(5))})
    return rejects, card
