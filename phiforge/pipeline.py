"""The stage graph and its runner: skip what is unchanged, redo what is forced or stale, resume what crashed."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phiforge import distributed
from phiforge.config import Recipe, save_recipe
from phiforge.errors import PhiforgeError
from phiforge.rundir import RunDir, atomic_write_text


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # phiforge.<module> holds run(recipe, run) -> metrics, and optionally outputs(run) -> paths
    sections: tuple[str, ...]  # recipe sections the stage reads: a change to any of them reruns it
    inputs: tuple[str, ...]  # stages whose outputs it reads: a change to any of them reruns it
    help: str
    distributed: bool = False  # under torchrun every rank runs it; other stages run on rank 0 while the rest wait

    def fn(self, attr: str) -> Callable | None:
        return getattr(importlib.import_module(f"phiforge.{self.module}"), attr, None)


STAGES: tuple[Stage, ...] = (
    Stage("synth", "synth", ("synth",), (), "generate verified synthetic problems and render them"),
    Stage("organic", "organic", ("organic",), (),
          "real text (stdlib code, reference pages, package pages, books, local folders): cleaned, deduplicated, "
          "filtered by an educational-value classifier, best web pages rewritten"),
    Stage("decontam", "decontam", ("decontam",), ("synth", "organic"),
          "drop training samples that overlap a benchmark (Phi-4's hybrid 13/7-gram test)"),
    Stage("tokenizer", "tokenizer", ("tokenizer",), ("synth", "decontam"), "train the byte-level BPE tokenizer"),
    Stage("pretrain", "pretrain", ("model", "pretrain", "mixture"), ("synth", "organic", "decontam", "tokenizer"),
          "pretrain the model on the Table-5 mixture of synthetic and organic text", distributed=True),
    Stage("midtrain", "midtrain", ("model", "pretrain", "midtrain"), ("synth", "decontam", "tokenizer", "pretrain"),
          "extend the context: raise the RoPE base, train on long documents mixed with replayed pretraining text",
          distributed=True),
    Stage("sft", "sft", ("sft",), ("synth", "decontam", "midtrain"),
          "fine-tune on chat conversations (assistant-only loss)"),
    Stage("pts", "pts", ("pts",), ("synth", "decontam", "sft"), "mine pivotal-token DPO pairs from the SFT policy"),
    Stage("dpo", "dpo", ("dpo",), ("sft", "pts"), "DPO of the SFT model on the pivotal-token pairs"),
    Stage("dpo2", "dpo2", ("dpo2", "pts"), ("synth", "decontam", "sft", "dpo"),
          "judge-guided DPO: responses of teacher, SFT and DPO judged 1-5, the PTS-DPO model trained on the pairs"),
    Stage("eval", "evaluate", ("eval", "synth", "model", "pretrain"),
          ("synth", "decontam", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2"),
          "score untrained, pretrained, base (midtrained), SFT, DPO and judge-DPO models on a fresh contest"),
    Stage("report", "report", (),
          ("synth", "decontam", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2", "eval"),
          "write report.md/.html and plots"),
)
BY_NAME = {s.name: s for s in STAGES}


def log(msg: str) -> None:
    if distributed.world().main:
        print(f"[phiforge] {msg}", file=sys.stderr, flush=True)


# The stages that make and feed phiforge's own model: with sft.init, post-training starts from a transformers
# folder, so no stage reads them.
OWN_MODEL_STAGES = ("tokenizer", "pretrain", "midtrain")


def inputs_of(recipe: Recipe, stage: Stage) -> tuple[str, ...]:
    """The stages whose outputs `stage` reads under this recipe: `stage.inputs`, without the own-model stages when
    sft.init names a transformers folder to post-train."""
    if recipe.sft.init:
        return tuple(i for i in stage.inputs if i not in OWN_MODEL_STAGES)
    return stage.inputs


def needed(recipe: Recipe) -> set[str]:
    """The stages the last one (the report) reads under this recipe, directly or through others: with sft.init,
    not the tokenizer, pretraining or midtraining, whose model nothing would use."""
    todo, seen = [STAGES[-1].name], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += inputs_of(recipe, BY_NAME[name])
    return seen


def stage_key(recipe: Recipe, run: RunDir, stage: Stage) -> tuple[str, dict]:
    return recipe.section_hash(*stage.sections) if stage.sections else "", {
        i: run.output_digest(i) for i in inputs_of(recipe, stage)
    }


def is_current(recipe: Recipe, run: RunDir, stage: Stage) -> bool:
    m = run.manifest(stage.name)
    if m is None:
        return False
    config_hash, inputs = stage_key(recipe, run, stage)
    return m.get("config_hash") == config_hash and m.get("input_hashes") == inputs and run.outputs_intact(m)


def run_stage(recipe: Recipe, run: RunDir, stage: Stage) -> dict:
    w = distributed.world()
    for dep in inputs_of(recipe, stage):
        run.require(dep, stage.name)
    config_hash, inputs = stage_key(recipe, run, stage)
    if w.main:
        run.invalidate(stage.name)  # from here until the new manifest lands, the stage counts as incomplete
        run.stage_dir(stage.name).mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    log(f"{stage.name}: running" + (f" on {w.size} ranks" if w.size > 1 and stage.distributed else ""))
    metrics = stage.fn("run")(recipe, run) if (stage.distributed or w.main) else {}
    seconds = time.perf_counter() - t0
    if w.main:
        outputs_fn = stage.fn("outputs")
        outputs = outputs_fn(run) if outputs_fn else [run.stage_dir(stage.name)]
        manifest = {
            "stage": stage.name,
            "config": {s: dataclasses.asdict(getattr(recipe, s)) for s in stage.sections},
            "config_hash": config_hash,
            "input_hashes": inputs,
            "metrics": metrics,
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(seconds, 2),
        }
        run.write_manifest(stage.name, manifest, outputs)
    distributed.barrier()
    log(f"{stage.name}: done in {seconds:.1f}s")
    return metrics


def downstream(names: list[str]) -> list[str]:
    """The named stages and every stage after the earliest of them."""
    order = [s.name for s in STAGES]
    for n in names:
        if n not in BY_NAME:
            raise PhiforgeError(f"unknown stage {n!r} (stages: {', '.join(order)})")
    first = min(order.index(n) for n in names)
    return order[first:]


def prepare(recipe: Recipe, out: Path) -> RunDir:
    if distributed.world().main:
        run = RunDir.create(out)
        atomic_write_text(run.root / "recipe.yaml", save_recipe(recipe))
    distributed.barrier()
    return RunDir.open(out)


def run_pipeline(recipe: Recipe, out: Path, force: list[str] = (), only: list[str] | None = None) -> RunDir:
    run = prepare(recipe, out)
    if distributed.world().main:
        for name in downstream(list(force)) if force else []:
            run.invalidate(name)
    distributed.barrier()
    t0 = time.perf_counter()
    wanted = needed(recipe) if only is None else set(only)
    for stage in STAGES:
        if stage.name not in wanted:
            if only is None:
                log(f"{stage.name}: not needed by this recipe, skipped")
            continue
        if is_current(recipe, run, stage):
            log(f"{stage.name}: unchanged, skipped")
            continue
        run_stage(recipe, run, stage)
    log(f"finished in {(time.perf_counter() - t0) / 60:.1f} min; report: {run.root / 'report.md'}")
    return run
