"""The stage graph: each stage's module, the recipe sections it reads and the stages whose outputs it reads.

Plain data, below every stage: the runner (`phiforge.pipeline`) walks it, and a stage asks it for its own key (what
its checkpoints must have been made under) and for the paths of the inputs it declared, so that a stage reaches
only the stages it names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phiforge.config import Recipe
from phiforge.errors import PhiforgeError
from phiforge.rundir import RunDir


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # phiforge.<module> holds execute(recipe, run) -> metrics, and optionally outputs(run) -> paths
    sections: tuple[str, ...]  # recipe sections the stage reads: a change to any of them reruns it
    inputs: tuple[str, ...]  # stages whose outputs it reads: a change to any of them reruns it
    help: str
    distributed: bool = False  # under torchrun every rank runs it; other stages run on rank 0 while the rest wait
    # Run-folder paths of the state a rerun picks up from (shard markers, checkpoints): `--force` removes them.
    resumable: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("synth", "data.synth", ("synth",), (), "generate verified synthetic problems and render them",
          resumable=("synth/.done",)),
    Stage("organic", "data.organic", ("organic",), (),
          "real text (stdlib code, reference pages, package pages, books, local folders): cleaned, deduplicated, "
          "filtered by an educational-value classifier, best web pages rewritten"),
    Stage("decontam", "eval.contamination", ("decontam",), ("synth", "organic"),
          "drop training samples that overlap a benchmark (Phi-4's hybrid 13/7-gram test)"),
    Stage("tokenizer", "train.tokenizer", ("tokenizer",), ("synth", "decontam"), "train the byte-level BPE tokenizer"),
    Stage("pretrain", "train.pretrain", ("model", "pretrain", "mixture"), ("synth", "organic", "decontam", "tokenizer"),
          "pretrain the model on the Table-5 mixture of synthetic and organic text", distributed=True,
          resumable=("pretrain/checkpoints",)),
    Stage("midtrain", "train.midtrain", ("model", "pretrain", "midtrain"), ("synth", "decontam", "tokenizer", "pretrain"),
          "extend the context: raise the RoPE base, train on long documents mixed with replayed pretraining text",
          distributed=True, resumable=("midtrain/checkpoints",)),
    Stage("sft", "train.sft", ("sft",), ("synth", "decontam", "midtrain"),
          "fine-tune on chat conversations (assistant-only loss)"),
    Stage("pts", "train.pts", ("pts",), ("synth", "decontam", "sft"), "mine pivotal-token DPO pairs from the SFT policy"),
    Stage("dpo", "train.dpo", ("dpo",), ("sft", "pts"), "DPO of the SFT model on the pivotal-token pairs"),
    Stage("dpo2", "train.judge_dpo", ("dpo2", "pts"), ("synth", "decontam", "sft", "dpo"),
          "judge-guided DPO: responses of teacher, SFT and DPO judged 1-5, the PTS-DPO model trained on the pairs"),
    Stage("eval", "eval.contest", ("eval", "synth", "model", "pretrain"),
          ("synth", "decontam", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2"),
          "score untrained, pretrained, base (midtrained), SFT, DPO and judge-DPO models on a fresh contest"),
    Stage("report", "report", (),
          ("synth", "decontam", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2", "eval"),
          "write report.md/.html and plots"),
)
BY_NAME = {s.name: s for s in STAGES}


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


def fingerprint(recipe: Recipe, run: RunDir, name: str) -> str:
    """`stage_key` as one string: what a resumable stage's checkpoints record and must match to be resumed."""
    config_hash, inputs = stage_key(recipe, run, BY_NAME[name])
    return "-".join([config_hash, *inputs.values()])


def input_path(run: RunDir, stage: str, by: str, *parts: str) -> Path:
    """A path in `stage`'s folder for stage `by` to read. `stage` must be one of `by`'s declared inputs and must
    have completed: a stage cannot read what the runner does not know it depends on."""
    if stage not in BY_NAME[by].inputs:
        raise PhiforgeError(f"stage {by!r} reads {stage!r}, which is not among its inputs "
                            f"({', '.join(BY_NAME[by].inputs)}); declare it in phiforge/stages.py")
    run.require(stage, by)
    return run.stage_dir(stage).joinpath(*parts)


def model_dir(run: RunDir, stage: str, by: str) -> Path:
    """The model folder a completed input stage saved."""
    return input_path(run, stage, by, "model")


def downstream(names: list[str]) -> list[str]:
    """The named stages and every stage after the earliest of them."""
    order = [s.name for s in STAGES]
    for n in names:
        if n not in BY_NAME:
            raise PhiforgeError(f"unknown stage {n!r} (stages: {', '.join(order)})")
    first = min(order.index(n) for n in names)
    return order[first:]
