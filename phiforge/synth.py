"""Stage `synth`: the programmatic teacher's verified problems, rendered for pretraining and for SFT.

Sample i of a run is a pure function of (synth.seed, i): its domain and style are drawn from a generator seeded by
both, so shards can be rebuilt independently and a rerun writes identical bytes. Pretraining uses indices
[0, n_pretrain); SFT uses the next n_sft and Pivotal Token Search the n_pts after those, so no post-training
question was ever a pretraining document.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from phiforge.answers import verify
from phiforge.config import Recipe, SynthConfig
from phiforge.problems import Problem, make_problem
from phiforge.render import STYLES, chat
from phiforge.rundir import RunDir, atomic_path, atomic_write_text

TEACHER = "programmatic"
VERIFIER = "math-equivalence"

_COMMON = [
    ("id", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("source", pa.string()),
    ("domain", pa.string()),
    ("style", pa.string()),
    ("teacher", pa.string()),
    ("seed", pa.int64()),
    ("verified", pa.bool_()),
    ("verifier", pa.string()),
    ("provenance", pa.string()),
]
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PRETRAIN_SCHEMA = pa.schema([("text", pa.string()), *_COMMON])
SFT_SCHEMA = pa.schema([("messages", pa.list_(MESSAGE)), *_COMMON])


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


def write_shard(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def run(recipe: Recipe, run: RunDir) -> dict:
    cfg = recipe.synth
    out = run.stage_dir("synth")
    out.mkdir(parents=True, exist_ok=True)
    post = cfg.n_pretrain + cfg.n_sft
    spans = {"pretrain": (0, cfg.n_pretrain), "sft": (cfg.n_pretrain, post), "pts": (post, post + cfg.n_pts)}
    counts: dict[str, Counter] = {kind: Counter() for kind in (*spans, "styles")}
    chars = Counter()
    all_rejects: list[dict] = []
    total = post + cfg.n_pts
    with tqdm(total=total, desc="synth", unit="sample", dynamic_ncols=True) as bar:
        for kind, (lo, hi) in spans.items():
            schema = PRETRAIN_SCHEMA if kind == "pretrain" else SFT_SCHEMA
            for shard, start in enumerate(range(lo, hi, cfg.shard_size)):
                stop = min(hi, start + cfg.shard_size)
                rows, rejects = build_rows(cfg, start, stop, kind)
                write_shard(out / f"{kind}-{shard:05d}.parquet", rows, schema)
                all_rejects += rejects
                for r in rows:
                    counts[kind][r["domain"]] += 1
                    counts["styles"][r["style"]] += 1
                    chars[kind] += len(r["text"]) if kind == "pretrain" else sum(len(m["content"]) for m in r["messages"])
                bar.update(stop - start)
    kept = sum(sum(c.values()) for k, c in counts.items() if k != "styles")
    card = [{"workflow": "programmatic", "teacher": TEACHER, "seeds": total, "candidates": total, "kept": kept,
             "rejected": len(all_rejects), "accept_rate": kept / total, "chars": chars["pretrain"] + chars["sft"],
             "teacher_prompt_tokens": 0, "teacher_completion_tokens": 0, "reasons": {}}]
    if any(cfg.workflows.seeds.values()):
        from phiforge.synth_llm import run_workflows

        llm_rejects, llm_card = run_workflows(cfg, out)
        all_rejects += llm_rejects
        card += llm_card
    atomic_write_text(out / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in all_rejects))
    return {
        "data_card": card,
        "samples": total,
        "kept": kept,
        "rejected": len(all_rejects),
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


def shards(run: RunDir, kind: str) -> list[Path]:
    """A kind's Parquet shards (`pretrain`, `sft` or `pts`) in order."""
    return sorted(run.stage_dir("synth").glob(f"{kind}-*.parquet"))


def dropped_ids(run: RunDir) -> frozenset[str]:
    """Sample ids the `decontam` stage removed from training (empty before it has run)."""
    path = run.stage_dir("decontam") / "dropped.json"
    return frozenset(json.loads(path.read_text())) if path.is_file() else frozenset()


def read_column(run: RunDir, kind: str, column: str, *, include_dropped: bool = False) -> list:
    """One column across a kind's shards, without the samples decontamination dropped unless asked for them."""
    drop = frozenset() if include_dropped else dropped_ids(run)
    values: list = []
    for shard in shards(run, kind):
        cols = [column] if not drop or column == "id" else [column, "id"]
        table = pq.read_table(shard, columns=cols)
        col = table.column(column).to_pylist()
        if drop:
            col = [v for v, i in zip(col, table.column("id").to_pylist()) if i not in drop]
        values += col
    return values
