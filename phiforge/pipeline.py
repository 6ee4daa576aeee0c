"""The runner of the stage graph (phiforge/stages.py): skip what is unchanged, redo what is forced, stale or
damaged, resume what crashed.

A stage is current when its recipe slice and its inputs' output digests match its manifest and every output still
has the sha256 the manifest recorded; a damaged output redoes its stage, and the stages after it when the redone
outputs differ (their input digests change). `--force` also removes a stage's resumable state (synth's shard
markers, training checkpoints), so a forced stage starts afresh.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from phiforge import machine
from phiforge.config import Recipe, save_recipe
from phiforge.errors import PhiforgeError
from phiforge.rundir import RunDir, atomic_write_text
from phiforge.stages import BY_NAME, STAGES, Stage, downstream, inputs_of, needed, stage_key
from phiforge.train import distributed


def entry(stage: Stage, attr: str) -> Callable | None:
    """A stage module's `execute` or `outputs`, imported when the stage runs: `phiforge chat` never loads training."""
    return getattr(importlib.import_module(f"phiforge.{stage.module}"), attr, None)


def log(msg: str) -> None:
    if distributed.world().main:
        print(f"[phiforge] {msg}", file=sys.stderr, flush=True)


def stale_reason(recipe: Recipe, run: RunDir, stage: Stage) -> str | None:
    """Why `stage` must run (not run yet, recipe or inputs changed, an output damaged), or None if it is current."""
    m = run.manifest(stage.name)
    if m is None:
        return "not complete"
    config_hash, inputs = stage_key(recipe, run, stage)
    if m.get("config_hash") != config_hash:
        return "recipe changed"
    if m.get("input_hashes") != inputs:
        return "inputs changed"
    bad = run.check_outputs(stage.name)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        return f"{bad[0]}{more} damaged or missing (sha256 differs from {stage.name}/manifest.json)"
    return None


def is_current(recipe: Recipe, run: RunDir, stage: Stage) -> bool:
    return stale_reason(recipe, run, stage) is None


def check_inputs(recipe: Recipe, run: RunDir, stage: Stage) -> None:
    """Refuse to run `stage` on an input whose files no longer match their stage's manifest: it would read damaged
    data (a truncated Parquet shard fails deep inside pyarrow) or, worse, silently wrong data."""
    for dep in inputs_of(recipe, stage):
        run.require(dep, stage.name)
        bad = run.check_outputs(dep)
        if bad:
            raise PhiforgeError(
                f"{run.root / bad[0]} is damaged or missing (its sha256 differs from {dep}/manifest.json), so stage "
                f"{stage.name!r} cannot read it; `phiforge run --out {run.root}` redoes {dep!r} and what depends on it"
            )


def run_stage(recipe: Recipe, run: RunDir, stage: Stage) -> dict:
    w = distributed.world()
    check_inputs(recipe, run, stage)
    config_hash, inputs = stage_key(recipe, run, stage)
    if w.main:
        run.invalidate(stage.name)  # from here until the new manifest lands, the stage counts as incomplete
        run.stage_dir(stage.name).mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    peak_is_own = machine.reset_peak_rss()
    t0 = time.perf_counter()
    log(f"{stage.name}: running" + (f" on {w.size} ranks" if w.size > 1 and stage.distributed else ""))
    try:
        metrics = entry(stage, "execute")(recipe, run) if (stage.distributed or w.main) else {}
    except Exception as e:
        if not isinstance(e, (PhiforgeError, OSError)):
            # A reader that hit damaged data raises its library's own error (pyarrow's `ZSTD decompression
            # failed`), naming no file: if an input was damaged while the stage ran, name it instead.
            run.forget_checks()
            check_inputs(recipe, run, stage)
        raise
    seconds = time.perf_counter() - t0
    if w.main:
        outputs_fn = entry(stage, "outputs")
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
            # this process's (rank 0's) peak resident memory during the stage; "process" where it could not be
            # reset, so it is the largest since the process started
            "peak_rss_gb": machine.peak_rss_gb(), "peak_rss_scope": "stage" if peak_is_own else "process",
            "machine": machine.describe(),  # what the floats depend on beyond the recipe: `phiforge compare`
        }
        run.write_manifest(stage.name, manifest, outputs)
    distributed.barrier()
    log(f"{stage.name}: done in {seconds:.1f}s")
    return metrics


def prepare(recipe: Recipe, out: Path, save: bool = True) -> RunDir:
    """Open (or make) the run folder. `recipe.yaml` is written when it is missing, and when `save` and the recipe
    differs from it; never rewritten unchanged, so a complete run folder on a read-only disk can be rerun (to find
    everything current) without a write."""
    if distributed.world().main:
        run = RunDir.create(out)
        path, text = run.root / "recipe.yaml", save_recipe(recipe)
        saved = path.read_text(encoding="utf-8") if path.is_file() else None
        if saved is None or (save and saved != text):
            atomic_write_text(path, text)
        elif saved != text:
            log(f"{path} left as it is: this command's recipe (its --set or recipe file) differs from it and applies "
                f"to this command only; `phiforge run --out {out}` redoes what it changed with the saved recipe")
    distributed.barrier()
    return RunDir.open(out)


def clear_resumable(run: RunDir, names: list[str]) -> None:
    """Remove the resumable state of the named stages, so forcing one redoes it from the start."""
    for name in names:
        for rel in BY_NAME[name].resumable:
            path = run.root / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def run_pipeline(recipe: Recipe, out: Path, force: list[str] = (), only: list[str] | None = None) -> RunDir:
    run = prepare(recipe, out, save=only is None)
    if distributed.world().main and force:
        forced = downstream(list(force))
        for name in forced:
            run.invalidate(name)
        clear_resumable(run, forced)
    distributed.barrier()
    t0 = time.perf_counter()
    wanted = needed(recipe) if only is None else set(only)
    ran = 0
    for stage in STAGES:
        if stage.name not in wanted:
            if only is None:
                log(f"{stage.name}: not needed by this recipe, skipped")
            continue
        reason = stale_reason(recipe, run, stage)
        if reason is None:
            log(f"{stage.name}: unchanged, skipped")
            continue
        if reason != "not complete":
            log(f"{stage.name}: {reason}; redoing it")
        run_stage(recipe, run, stage)
        ran += 1
    done = f"finished in {(time.perf_counter() - t0) / 60:.1f} min" if ran else "nothing to do, every stage is current"
    # the report only when it is there and describes the run as it now is (a stage run alone leaves it stale)
    report = f"; report: {run.root / 'report.md'}" if is_current(recipe, run, STAGES[-1]) else ""
    log(done + report)
    return run
