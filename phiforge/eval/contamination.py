"""Stage `decontam`: the run's training data against the benchmarks this harness reports.

The test itself (Phi-4's hybrid 13/7-gram overlap) is `phiforge.data.decontam`; this stage builds its index from
the benchmarks' items (`phiforge.eval.benchmarks`), which is why it sits in the evaluation layer, and runs it over
every synth sample and organic document through the corpus reader."""

from __future__ import annotations

import json
from pathlib import Path

from phiforge.data import corpus
from phiforge.data.decontam import BenchmarkIndex, decontaminate, training_text
from phiforge.errors import PhiforgeError
from phiforge.eval import benchmarks
from phiforge.rundir import atomic_write_json, atomic_write_text


def build_harness_index(cfg) -> tuple[BenchmarkIndex, dict]:
    """One index over every benchmark of the harness that is installed: each item's question and reference solution."""
    items, status = [], {}
    for name in cfg.benchmarks:
        bench = benchmarks.get(name)
        try:
            loaded = bench.load()
        except PhiforgeError as e:
            if cfg.if_missing == "error":
                raise PhiforgeError(f"decontam.benchmarks: {e}") from e
            status[name] = {"items": 0, "skipped": str(e)}
            continue
        items += [(name, it.id, f"{it.question}\n{it.solution}") for it in loaded]
        status[name] = {"items": len(loaded)}
    if not items:
        raise PhiforgeError(f"decontam: none of decontam.benchmarks ({', '.join(cfg.benchmarks)}) is installed: "
                            + "; ".join(s["skipped"] for s in status.values()))
    index = BenchmarkIndex(items, info_threshold=cfg.info_threshold,
                           contaminated_threshold=cfg.contaminated_threshold, allow_min_items=cfg.allow_min_items)
    return index, status


def execute(recipe, run) -> dict:
    """Stage `decontam`: every synth training sample and every organic document (each source before it enters the
    mixture) against the harness's benchmarks; the flagged ones are listed in `dropped.json`, which every training
    stage's reader leaves out, and shown with their verdicts in `flagged.jsonl`."""
    cfg, out = recipe.decontam, run.stage_dir("decontam")
    index, bench_status = build_harness_index(cfg)
    sources = {}
    for kind in [*corpus.SYNTH_KINDS, *(f"organic/{s}" for s in corpus.ORGANIC_SOURCES)]:
        columns = {"sft": ["id", "messages"], "pts": ["id", "question"]}.get(kind, ["id", "text"])
        files = corpus.shards(run, kind.removeprefix("organic/"))
        if not files and kind.startswith("organic/"):
            continue  # a run without the organic stage
        rows = [r for shard in files for r in corpus.read_rows(shard, columns)]
        sources[kind] = [{"id": r["id"], "text": r["text"] if "text" in r else training_text(kind, r)} for r in rows]
    if cfg.allow_min_train_docs:
        index.allow_common_train_ngrams((d["text"] for docs in sources.values() for d in docs),
                                        cfg.allow_min_train_docs)
    dropped, lines, per_source = [], [], {}
    for kind, docs in sources.items():
        _, flagged, stats = decontaminate(docs, index, drop_partial=cfg.drop_partial)
        per_source[kind] = {k: stats[k] for k in ("docs", "kept", "flagged", "status", "benchmark")}
        for doc, v in flagged:
            dropped.append(doc["id"])
            lines.append(json.dumps({"source": kind, "id": doc["id"], "status": v.status, "reason": v.reason,
                                     "benchmark": v.benchmark, "item_id": v.item_id, "ratio": round(v.ratio, 4),
                                     "ngram": v.ngram, "text": doc["text"][:500]}) + "\n")
    atomic_write_text(out / "flagged.jsonl", "".join(lines))
    atomic_write_json(out / "dropped.json", sorted(dropped))
    return {"benchmarks": bench_status, "sources": per_source, "dropped": len(dropped),
            "allow_listed_ngrams": {str(n): c for n, c in index.allowed.items()},
            "thresholds": {"info": cfg.info_threshold, "contaminated": cfg.contaminated_threshold}}


def outputs(run) -> list[Path]:
    out = run.stage_dir("decontam")
    return [out / "dropped.json", out / "flagged.jsonl"]
