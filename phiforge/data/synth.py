"""Stage `synth`: the programmatic teacher's verified problems, rendered for pretraining and for SFT.

Sample i of a run is a pure function of (synth.seed, i): its domain and style are drawn from a generator seeded by
both, so shards can be rebuilt independently and a rerun writes identical bytes. Pretraining uses indices
[0, n_pretrain); SFT uses the next n_sft and Pivotal Token Search the n_pts after those, so no post-training
question was ever a pretraining document.

The programmatic shards are independent units, datatrove-style: each is written atomically and then a marker
(.done/<shard>.json: its counts and rejects, a key of the config that decides its bytes, and the shard's sha256, so
a damaged shard counts as not done), so a crashed or killed run resumes where it stopped, `synth.workers`
processes can make them at once, and a cluster can run
`phiforge synth RECIPE --out RUN --rank R --world-size W` as separate jobs before `phiforge run` finds
every shard done and merges. Which worker made a shard changes nothing in it. The LLM workflows
(phiforge/data/synth_llm.py) come after the programmatic shards, in shards of `synth.workflows.shard_seeds` seeds with
markers of their own, so they too resume shard by shard and split over ranks.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from phiforge.config import Recipe, SynthConfig
from phiforge.data import synth_llm
from phiforge.data.problems import Problem, make_problem
from phiforge.data.render import STYLES, chat, verify
from phiforge.data.shards import PRETRAIN_SCHEMA, SFT_SCHEMA, read_marker, write_marker, write_shard
from phiforge.errors import PhiforgeError
from phiforge.rundir import RunDir, atomic_write_text

TEACHER = "programmatic"
VERIFIER = "math-equivalence"

def _pick(weights: dict[str, float], rng: random.Random) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def sample_problem(cfg: SynthConfig, index: int, seed: int | None = None) -> tuple[Problem, str]:
    """The problem and pretraining style of sample `index`, deterministic from (seed, index)."""
    seed = cfg.seed if seed is None else seed
    rng = random.Random(hashlib.sha256(f"synth:{seed}:{index}".encode()).digest())
    domain, style = _pick(cfg.domains, rng), _pick(cfg.styles, rng)
    return make_problem(domain, seed, index, cfg.difficulty), style


def build_rows(cfg: SynthConfig, start: int, stop: int, kind: str) -> tuple[list[dict], list[dict]]:
    rows, rejects = [], []
    for i in range(start, stop):
        problem, style = sample_problem(cfg, i)
        if kind != "pretrain":
            style = "chat"
        ok = verify(problem)
        row = {
            "id": f"{kind}-{problem.id}",
            "question": problem.question,
            "answer": problem.answer,
            "source": "synthetic",
            "domain": problem.domain,
            "style": style,
            "teacher": TEACHER,
            "seed": cfg.seed,
            "verified": ok,
            "verifier": json.dumps({"name": VERIFIER, "verdict": "pass" if ok else "fail"}),
            "provenance": json.dumps(
                {"workflow": ["generate", f"render:{style}", "verify"], "index": i, "difficulty": problem.difficulty}
            ),
        }
        if kind != "pretrain":
            row["messages"] = chat(problem)
        else:
            row["text"] = STYLES[style](problem)
        if ok:
            rows.append(row)
        else:
            rejects.append({"id": row["id"], "reason": "solution's extracted answer differs from the exact answer", **row})
    return rows, rejects


def shard_tasks(cfg: SynthConfig) -> list[tuple[str, int, int, int]]:
    """(kind, shard, first index, stop index) of every programmatic shard, in corpus order."""
    post = cfg.n_pretrain + cfg.n_sft
    spans = {"pretrain": (0, cfg.n_pretrain), "sft": (cfg.n_pretrain, post), "pts": (post, post + cfg.n_pts)}
    return [(kind, shard, start, min(hi, start + cfg.shard_size))
            for kind, (lo, hi) in spans.items() for shard, start in enumerate(range(lo, hi, cfg.shard_size))]


def shard_key(cfg: SynthConfig) -> str:
    """What decides a programmatic shard's bytes: a finished shard made under another key is made again."""
    fields = {k: getattr(cfg, k) for k in ("seed", "difficulty", "n_pretrain", "n_sft", "n_pts", "shard_size",
                                           "domains", "styles")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _name(task: tuple[str, int, int, int]) -> str:
    return f"{task[0]}-{task[1]:05d}.parquet"


def finished(cfg: SynthConfig, out: Path, task: tuple) -> dict | None:
    """The summary of a programmatic shard already made under this config, else None."""
    return read_marker(out, _name(task), shard_key(cfg))


def make_shard(cfg: SynthConfig, out: Path, task: tuple) -> dict:
    """Write one programmatic shard unless it is already there, then its marker; returns the marker's summary."""
    if (done := finished(cfg, out, task)) is not None:
        return done
    kind, _, start, stop = task
    rows, rejects = build_rows(cfg, start, stop, kind)
    write_shard(out / _name(task), rows, PRETRAIN_SCHEMA if kind == "pretrain" else SFT_SCHEMA)
    summary = {"key": shard_key(cfg), "kind": kind, "samples": stop - start, "kept": len(rows),
               "domains": dict(Counter(r["domain"] for r in rows)), "styles": dict(Counter(r["style"] for r in rows)),
               "chars": sum(len(r["text"]) if kind == "pretrain" else sum(len(m["content"]) for m in r["messages"])
                            for r in rows),
               "rejects": rejects}
    write_marker(out, _name(task), summary)
    return summary


def run_rank(recipe: Recipe, run: RunDir, rank: int, world_size: int) -> int:
    """The shards of one worker out of world_size (every world_size-th programmatic shard, then every
    world_size-th LLM shard, from rank), skipping those already finished: a cluster job's unit. Returns how many it
    made. `run` later finds them done and merges."""
    if not 0 <= rank < world_size:
        raise PhiforgeError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    cfg = recipe.synth
    out = run.stage_dir("synth")
    out.mkdir(parents=True, exist_ok=True)
    made = 0
    for task in shard_tasks(cfg)[rank::world_size]:
        made += finished(cfg, out, task) is None
        make_shard(cfg, out, task)
    mine = [t for t in synth_llm.llm_tasks(cfg)[rank::world_size] if synth_llm.finished(cfg, out, t) is None]
    if mine:
        teacher = synth_llm.teacher_for(cfg, out)
        for task in mine:
            synth_llm.make_shard(cfg, out, task, teacher)
    return made + len(mine)


def _remove_stale(cfg: SynthConfig, out: Path, tasks: list[tuple]) -> None:
    """Shards of an earlier config that this one does not make (fewer samples, workflows dropped) must not be read
    as part of it."""
    keep = {_name(t) for t in tasks} | {synth_llm.shard_name(cfg, t) for t in synth_llm.llm_tasks(cfg)}
    for p in out.glob("*.parquet"):
        if p.name not in keep:
            p.unlink()


def execute(recipe: Recipe, run: RunDir) -> dict:
    cfg = recipe.synth
    out = run.stage_dir("synth")
    out.mkdir(parents=True, exist_ok=True)
    tasks = shard_tasks(cfg)
    _remove_stale(cfg, out, tasks)
    total = sum(t[3] - t[2] for t in tasks)
    with tqdm(total=total, desc="synth", unit="sample", dynamic_ncols=True) as bar:
        workers = min(cfg.workers, len(tasks))
        if workers > 1:
            # spawn, not fork: the parent may hold torch and its threads. Shards are independent and deterministic,
            # so the pool's order of work changes nothing in what is written.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for s in pool.map(make_shard, [cfg] * len(tasks), [out] * len(tasks), tasks):
                    bar.update(s["samples"])
        else:
            for task in tasks:
                bar.update(make_shard(cfg, out, task)["samples"])
    counts: dict[str, Counter] = {kind: Counter() for kind in ("pretrain", "sft", "pts", "styles")}
    chars = Counter()
    all_rejects: list[dict] = []
    for task in tasks:  # in corpus order, whoever made each shard
        s = finished(cfg, out, task)
        counts[s["kind"]].update(s["domains"])
        counts["styles"].update(s["styles"])
        chars[s["kind"]] += s["chars"]
        all_rejects += s["rejects"]
    kept = sum(sum(c.values()) for k, c in counts.items() if k != "styles")
    rejected = len(all_rejects)
    card = [{"workflow": "programmatic", "teacher": TEACHER, "seeds": total, "candidates": total, "kept": kept,
             "rejected": rejected, "accept_rate": kept / total, "chars": chars["pretrain"] + chars["sft"],
             "teacher_prompt_tokens": 0, "teacher_completion_tokens": 0, "reasons": {}}]
    if any(cfg.workflows.seeds.values()):
        llm_rejects, llm_card = synth_llm.run_workflows(cfg, out)
        all_rejects += llm_rejects
        card += llm_card
    atomic_write_text(out / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in all_rejects))
    return {
        "data_card": card,
        "samples": total,
        "kept": kept,
        "rejected": rejected,
        "accept_rate": kept / total,
        "pretrain_by_domain": dict(sorted(counts["pretrain"].items())),
        "sft_by_domain": dict(sorted(counts["sft"].items())),
        "pts_by_domain": dict(sorted(counts["pts"].items())),
        "by_style": dict(sorted(counts["styles"].items())),
        "pretrain_chars": chars["pretrain"],
        "sft_chars": chars["sft"],
    }


def outputs(run: RunDir) -> list[Path]:
    """What the stage's manifest hashes: the shards and the reject file, not the teacher's reply cache beside them."""
    out = run.stage_dir("synth")
    return sorted(out.glob("*.parquet")) + [out / "rejects.jsonl"]
