"""`phiforge experiment NAME`: one of Phi-4's data claims tested at small scale, in one command.

An experiment (a YAML file in phiforge/recipes/experiments/, or any path) names a base recipe, the variants to
compare (each a set of dotted recipe overrides), the seeds, and the evaluation suite. Every variant x seed is a
normal run folder trained up to `pretrain`: runs live under `<out>/runs/<digest of the resolved recipe>`, so two
experiments that share a configuration share its run, and a rerun skips what is done. Data stages that are equal
between runs (the organic corpus, say) are copied from a finished sibling rather than rebuilt.

Each pretrained model is scored on the same suite: the fresh contest (greedy, questions seen in its training
dropped), the fresh AMC-style contest (AMC points per 150, by log-likelihood of the options, bare and after the
model's own solution), and real benchmarks (DeepMind mathematics, GSM8K-100). Outside reference models (Gemma 3
270M) take the same suite. The comparison report gives mean +- standard error over seeds, the paired difference
from the baseline variant, and a plot with error bars.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phiforge.answers import answers_equal, extract_answer
from phiforge.config import RECIPES_DIR, Recipe, recipe_from_dict, resolve_recipe_path, set_key
from phiforge.data.corpus import read_column
from phiforge.data.render import BASE_STYLES, question_prompt
from phiforge.errors import PhiforgeError
from phiforge.eval import amc, benchmarks
from phiforge.eval.contest import clean_output, contest, score_amc
from phiforge.lm import gemma
from phiforge.lm.engine import load_engine
from phiforge.pipeline import is_current, prepare, run_pipeline
from phiforge.rundir import RunDir, atomic_write_json, atomic_write_text
from phiforge.stages import BY_NAME, stage_key

EXPERIMENTS_DIR = RECIPES_DIR / "experiments"
TRAINED_STAGES = ["synth", "organic", "decontam", "tokenizer", "pretrain"]
SHAREABLE = ("synth", "organic", "decontam", "tokenizer")  # cheap to copy, pure functions of config and inputs
SEED_KEYS = ("synth.seed", "pretrain.seed", "mixture.seed")  # what a seed changes: problems, init, data order


@dataclass
class Variant:
    name: str
    description: str = ""
    set: dict[str, Any] = field(default_factory=dict)
    style: str = "completion"  # how the base model is prompted: phiforge.data.render.question_prompt


@dataclass
class Suite:
    contest: int = 200  # fresh-contest problems (0 = none)
    amc: int = 150  # AMC-style items (0 = none)
    # benchmark -> items, evenly spaced through it
    benchmarks: dict[str, int] = field(default_factory=lambda: {"deepmind-math": 320, "gsm8k100": 100})
    shots: int = 0
    max_new_tokens: int = 128
    batch_size: int = 32


@dataclass
class Experiment:
    name: str
    claim: str
    variants: list[Variant]
    baseline: str
    recipe: str = "tiny"
    set: dict[str, Any] = field(default_factory=dict)  # overrides shared by every variant
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    suite: Suite = field(default_factory=Suite)
    references: list[str] = field(default_factory=list)  # outside models: "gemma-3-270m" or a transformers folder

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


# ------------------------------------------------------------------------------------------------ loading


def available() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def load(name_or_path: str) -> Experiment:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise PhiforgeError(f"no experiment named {name_or_path!r}; shipped: {', '.join(available())}, "
                                f"or give a .yaml path")
    if not path.is_file():
        raise PhiforgeError(f"experiment file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PhiforgeError(f"experiment {path}: not valid YAML ({e})") from None
    return from_dict(raw, str(path))


def from_dict(raw: Any, source: str) -> Experiment:

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise PhiforgeError(f"{source}: {key} {what}")

    need(isinstance(raw, dict), "top level", "must be a mapping")
    known = {f.name for f in dataclasses.fields(Experiment)}
    for k in raw:
        need(k in known, f"key {k!r}", f"is unknown (known: {', '.join(sorted(known))})")
    for k in ("name", "claim", "variants", "baseline"):
        need(k in raw, k, "is required")
    need(isinstance(raw["variants"], dict) and len(raw["variants"]) >= 2, "variants",
         "must map at least two variant names to their settings")
    variants = []
    vkeys = {f.name for f in dataclasses.fields(Variant)} - {"name"}
    for name, body in raw["variants"].items():
        body = body or {}
        need(isinstance(body, dict), f"variants.{name}", "must be a mapping")
        for k in body:
            need(k in vkeys, f"variants.{name}.{k}", f"is unknown (known: {', '.join(sorted(vkeys))})")
        need(isinstance(body.get("set", {}), dict), f"variants.{name}.set", "must map dotted keys to values")
        need(body.get("style", "completion") in BASE_STYLES, f"variants.{name}.style",
             f"must be one of {BASE_STYLES}")
        variants.append(Variant(name=str(name), **body))
    suite_raw = raw.get("suite") or {}
    skeys = {f.name for f in dataclasses.fields(Suite)}
    for k in suite_raw:
        need(k in skeys, f"suite.{k}", f"is unknown (known: {', '.join(sorted(skeys))})")
    suite = Suite(**suite_raw)
    for b in suite.benchmarks:
        need(b in benchmarks.BENCHMARKS, f"suite.benchmarks.{b}", f"is not a benchmark ({', '.join(benchmarks.BENCHMARKS)})")
    exp = Experiment(**{**raw, "variants": variants, "suite": suite})
    need(exp.baseline in {v.name for v in variants}, "baseline", f"must name a variant, got {exp.baseline!r}")
    need(len(exp.seeds) >= 1 and len(set(exp.seeds)) == len(exp.seeds), "seeds", "must be distinct, at least one")
    resolve_recipe_path(exp.recipe)
    for v in variants:  # every variant must make a valid recipe before anything trains
        for seed in exp.seeds:
            recipe_for(exp, v, seed)
    return exp


def recipe_for(exp: Experiment, variant: Variant, seed: int) -> Recipe:
    path = resolve_recipe_path(exp.recipe)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key, value in [*exp.set.items(), *variant.set.items(), *((k, seed) for k in SEED_KEYS)]:
        set_key(raw, key, value)
    raw["name"] = f"{exp.name}/{variant.name}-s{seed}"
    return recipe_from_dict(raw, source=f"experiment {exp.name}, variant {variant.name}, seed {seed}")


def run_key(exp: Experiment, variant: Variant, seed: int) -> str:
    """The run's folder name: a digest of what the experiment asks for (base recipe, settings, seed), so experiments
    asking for the same run share it. Not of the resolved recipe: a key or default added to phiforge later then
    reaches an existing run through the pipeline's stage hashes, which redo only the stages it changes, instead of
    through a new folder, which would retrain everything."""
    settings = {**exp.set, **variant.set, **{k: seed for k in SEED_KEYS}}
    blob = json.dumps({"recipe": exp.recipe, "set": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- running


def _borrow(run: RunDir, recipe: Recipe, pool: Path) -> None:
    """Copy each shareable stage that a finished sibling run made from the same config and inputs."""
    for name in SHAREABLE:
        if is_current(recipe, run, BY_NAME[name]):
            continue
        want = stage_key(recipe, run, BY_NAME[name])
        for sibling in sorted(pool.iterdir()) if pool.is_dir() else []:
            if sibling == run.root or not (sibling / name / "manifest.json").is_file():
                continue
            other = RunDir.open(sibling)
            m = other.manifest(name)
            if m and (m.get("config_hash"), m.get("input_hashes")) == want and other.outputs_intact(m):
                shutil.rmtree(run.stage_dir(name), ignore_errors=True)
                shutil.copytree(other.stage_dir(name), run.stage_dir(name))
                break


def train(recipe: Recipe, out: Path) -> RunDir:
    _borrow(prepare(recipe, out), recipe, out.parent)
    return run_pipeline(recipe, out, only=TRAINED_STAGES)


def suite_key(suite: Suite, style: str) -> str:
    return hashlib.sha256(json.dumps([dataclasses.asdict(suite), style], sort_keys=True).encode()).hexdigest()[:12]


def score(engine, recipe: Recipe, seen: set[str], suite: Suite, style: str, out: Path) -> dict:
    """The suite's metrics for one model, and every sample as JSONL under `out`."""

    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    gen = dict(max_new_tokens=suite.max_new_tokens, temperature=0.0, top_p=1.0, seed=0, batch_size=suite.batch_size)
    # the suite's sizes and generation settings in place of the recipe's own eval section
    ev = dataclasses.replace(recipe.eval, n_problems=suite.contest, amc_n_problems=suite.amc,
                             max_new_tokens=suite.max_new_tokens, batch_size=suite.batch_size)
    recipe = dataclasses.replace(recipe, eval=ev)
    if suite.contest:
        problems, dropped = contest(recipe, seen)
        texts = engine.complete([engine.encode(question_prompt(p.question, style)) for p in problems],
                                stops=benchmarks.MATH_STOPS, **gen)
        rows = []
        for p, t in zip(problems, texts):
            t = clean_output(t, style)
            pred = extract_answer(t)
            rows.append({"id": p.id, "domain": p.domain, "question": p.question, "gold": p.answer, "output": t,
                         "extracted": pred, "correct": answers_equal(pred, p.answer)})
        metrics["contest"] = 100 * sum(r["correct"] for r in rows) / len(rows)
        metrics["contest_dropped_seen"] = dropped
        atomic_write_text(out / "contest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    if suite.amc:
        items, info = amc.contest(recipe, seen)
        result = score_amc(engine, items, info, style, ev, out / "amc.jsonl")
        metrics["amc_loglik"] = result["loglik"]["per_150"]
        metrics["amc_solved"] = result["solved_loglik"]["per_150"]
    for name, limit in suite.benchmarks.items():
        summary, records = benchmarks.evaluate(engine, benchmarks.subset(name, limit), style=style,
                                               shots=suite.shots, max_new_tokens=suite.max_new_tokens,
                                               batch_size=suite.batch_size)
        metrics[name] = 100 * summary["pass@1"]
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return metrics


def evaluate_run(run: RunDir, recipe: Recipe, suite: Suite, style: str) -> dict:
    """The suite on the run's pretrained model; cached in the run folder until the model or the suite changes."""

    path = run.root / "experiment" / f"{suite_key(suite, style)}.json"
    model_digest = run.output_digest("pretrain")
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("model_digest") == model_digest:
            return cached["metrics"]
    engine, _ = load_engine(run.stage_dir("pretrain") / "model")
    seen = set(read_column(run, "pretrain", "question"))
    metrics = score(engine, recipe, seen, suite, style, path.with_suffix(""))
    pre = run.manifest("pretrain")["metrics"]
    metrics |= {"final_val_loss": pre["final_val_loss"], "params": pre["params"],
                "tokens_trained": pre["tokens_trained"]}
    atomic_write_json(path, {"model_digest": model_digest, "style": style, "metrics": metrics})
    return metrics


def reference_folder(name: str) -> Path:
    if name == "gemma-3-270m":
        return gemma.path()
    path = Path(name)
    if not (path / "config.json").is_file():
        raise PhiforgeError(f"reference {name!r} is neither 'gemma-3-270m' nor a transformers model folder")
    return path


def evaluate_reference(name: str, exp: Experiment, root: Path) -> dict:
    """An outside model on the suite: the base recipe's contests with nothing dropped, since it never saw them."""
    folder = reference_folder(name)
    slug = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    path = root / "references" / f"{folder.name}-{slug}-{suite_key(exp.suite, 'completion')}.json"
    if path.is_file():
        return json.loads(path.read_text())["metrics"]
    engine, _ = load_engine(folder)
    recipe = recipe_for(exp, exp.variant(exp.baseline), exp.seeds[0])
    metrics = score(engine, recipe, set(), exp.suite, "completion", path.with_suffix(""))
    atomic_write_json(path, {"model": str(folder), "metrics": metrics})
    return metrics


def run(exp: Experiment, root: Path, seeds: list[int] | None = None, references: list[str] | None = None) -> dict:
    """Train and score every variant x seed, then write the comparison report; returns the results."""
    seeds = seeds or exp.seeds

    for name in exp.suite.benchmarks:  # a missing data package must stop us before training, not after
        benchmarks.get(name).load()
    pool = root / "runs"
    here = root / exp.name
    results: dict[str, dict[int, dict]] = {v.name: {} for v in exp.variants}
    folders: dict[str, dict[int, str]] = {v.name: {} for v in exp.variants}
    jobs = [(v, s) for v in exp.variants for s in seeds]
    for i, (v, seed) in enumerate(jobs, 1):
        recipe = recipe_for(exp, v, seed)
        out = pool / run_key(exp, v, seed)
        _log(f"[{i}/{len(jobs)}] {v.name} seed {seed}: run {out}")
        r = train(recipe, out)
        results[v.name][seed] = evaluate_run(r, recipe, exp.suite, v.style)
        folders[v.name][seed] = str(r.root)
        _log(f"[{i}/{len(jobs)}] {v.name} seed {seed}: " + ", ".join(
            f"{k} {results[v.name][seed][k]:.1f}" for k in metric_names(exp)))
    refs, missing = {}, {}
    for name in exp.references if references is None else references:
        _log(f"reference {name}: scoring on the same suite")
        try:
            refs[name] = evaluate_reference(name, exp, root)
        except PhiforgeError as e:  # an absent outside model must not cost the trained runs their report
            missing[name] = str(e)
            _log(f"reference {name} skipped: {e}")
    summary = summarize(exp, results, refs)
    summary["runs"], summary["references_missing"] = folders, missing
    here.mkdir(parents=True, exist_ok=True)
    atomic_write_json(here / "results.json", summary)
    plot(exp, summary, here / "comparison.png")
    atomic_write_text(here / "report.md", report(exp, summary))
    _log(f"report: {here / 'report.md'}")
    return summary


def _log(msg: str) -> None:
    print(f"[phiforge experiment] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- statistics


METRIC_LABELS = {
    "contest": "fresh contest, greedy %",
    "amc_loglik": "AMC /150, option loglik",
    "amc_solved": "AMC /150, after own solution",
    "deepmind-math": "DeepMind maths %",
    "gsm8k100": "GSM8K-100 %",
    "gsm-symbolic": "GSM-Symbolic %",
    "champ": "CHAMP %",
}


def metric_names(exp: Experiment) -> list[str]:
    s = exp.suite
    return [*(["contest"] if s.contest else []), *(["amc_loglik", "amc_solved"] if s.amc else []),
            *s.benchmarks]


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt n; 0 for one value)."""
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd / math.sqrt(n)


def summarize(exp: Experiment, results: dict[str, dict[int, dict]], refs: dict[str, dict]) -> dict:
    names = metric_names(exp)
    base = results[exp.baseline]
    table = {}
    for v in exp.variants:
        rows = results[v.name]
        entry = {"description": v.description, "style": v.style, "seeds": sorted(rows), "metrics": {}}
        for m in [*names, "final_val_loss", "params"]:
            vals = [rows[s][m] for s in sorted(rows)]
            mean, se = mean_se(vals)
            entry["metrics"][m] = {"mean": mean, "se": se, "values": vals}
            common = [s for s in sorted(rows) if s in base]
            if v.name != exp.baseline and m in names and common:
                d_mean, d_se = mean_se([rows[s][m] - base[s][m] for s in common])
                entry["metrics"][m]["diff_vs_baseline"] = {"mean": d_mean, "se": d_se}
        table[v.name] = entry
    return {"experiment": exp.name, "claim": exp.claim, "baseline": exp.baseline, "metrics": names,
            "variants": table, "references": refs}


def report(exp: Experiment, summary: dict) -> str:
    names = summary["metrics"]
    n_seeds = max(len(v["seeds"]) for v in summary["variants"].values())
    lines = [f"# Experiment `{exp.name}`", "", exp.claim.strip(), "",
             f"Mean +- standard error over {n_seeds} seeds ({', '.join(map(str, exp.seeds))}); a seed changes the "
             f"synthetic problems, the initialisation and the data order. Base recipe `{exp.recipe}` with "
             + (", ".join(f"`{k}={v}`" for k, v in exp.set.items()) or "no overrides") + ".", "",
             "| variant | params | " + " | ".join(METRIC_LABELS.get(m, m) for m in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for name, v in summary["variants"].items():
        cells = [f"{v['metrics'][m]['mean']:.1f} +- {v['metrics'][m]['se']:.1f}" for m in names]
        lines.append(f"| {name} | {v['metrics']['params']['mean'] / 1e6:.2f}M | " + " | ".join(cells) + " |")
    for name, m in summary["references"].items():
        lines.append(f"| {name} (reference, greedy) | | " + " | ".join(f"{m.get(k, float('nan')):.1f}" for k in names)
                     + " |")
    if "amc_loglik" in names:
        lines += ["", "AMC points per 25 questions (6 right, 1.5 blank, 0 wrong): all blank scores 37.5, random "
                      "guessing 30. Option loglik picks the likeliest option as the answer line right after the "
                      "question; after own solution, in place of the answer line of the model's greedy solution "
                      "(the same for answer-only models, which write no solution)."]
    lines += ["", f"Paired difference from `{summary['baseline']}` (same seed), mean +- s.e.:", "",
              "| variant | " + " | ".join(METRIC_LABELS.get(m, m) for m in names) + " |",
              "|---|" + "---:|" * len(names)]
    for name, v in summary["variants"].items():
        if name == summary["baseline"]:
            continue
        cells = []
        for m in names:
            d = v["metrics"][m].get("diff_vs_baseline")
            cells.append(f"{d['mean']:+.1f} +- {d['se']:.1f}" if d else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, why in summary.get("references_missing", {}).items():
        lines += ["", f"Reference `{name}` not scored: {why}"]
    lines += ["", "Variants:", ""]
    for v in exp.variants:
        sets = ", ".join(f"`{k}={v2}`" for k, v2 in v.set.items()) or "the base recipe"
        lines.append(f"- `{v.name}` ({v.style} prompts): {v.description.strip()} Settings: {sets}.")
    lines += ["", "![comparison](comparison.png)", ""]
    return "\n".join(lines)


def plot(exp: Experiment, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["metrics"]
    variants = list(summary["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, m in zip(axes[0], names):
        means = [summary["variants"][v]["metrics"][m]["mean"] for v in variants]
        ses = [summary["variants"][v]["metrics"][m]["se"] for v in variants]
        ax.bar(range(len(variants)), means, yerr=ses, capsize=4, color=[f"C{i}" for i in range(len(variants))])
        for j, v in enumerate(variants):
            vals = summary["variants"][v]["metrics"][m]["values"]
            ax.scatter([j] * len(vals), vals, s=9, color="black", zorder=3)
        if m.startswith("amc"):  # what answering nothing, or guessing, scores
            ax.axhline(37.5, color="grey", ls=":", lw=1)
            ax.axhline(30.0, color="grey", ls="-.", lw=1)
        for k, (ref, rm) in enumerate(summary["references"].items()):
            if m in rm:
                ax.axhline(rm[m], color="grey", ls="--", lw=1, label=ref if k == 0 else None)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS.get(m, m), fontsize=9)
        if summary["references"] and m == names[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{exp.name}: mean +- s.e. over seeds (dots: seeds; AMC: dotted all blank 37.5, dash-dot "
                 f"random guessing 30)", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
