"""Stage `eval`: a fresh contest, drawn after training from a seed range training never used, and a fresh
AMC-style multiple-choice contest from a third seed (phiforge/eval/amc.py; scored with AMC points in phiforge/eval/choice.py).

Any contest question whose text appears anywhere in the run's training data is dropped before scoring (the count is
reported), so the score measures solving, not recall. Each model is scored greedy and by maj@k, and every sample's
prompt, output, extracted answer and verdict lands in `eval/<model>.jsonl`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import torch

from phiforge import stages
from phiforge.answers import answers_equal, extract_answer
from phiforge.config import Recipe
from phiforge.data.corpus import read_column
from phiforge.data.problems import Problem
from phiforge.data.render import first_answer
from phiforge.data.synth import sample_problem
from phiforge.errors import PhiforgeError
from phiforge.eval import amc, benchmarks, choice
from phiforge.eval.benchmarks import MATH_STOPS
from phiforge.lm import gemma, hf
from phiforge.lm.cached_engine import CachedEngine
from phiforge.lm.checkpoint import load_model
from phiforge.lm.engine import PhiforgeEngine
from phiforge.lm.model import Phi3
from phiforge.lm.tokenizer import ChatTokenizer
from phiforge.rundir import RunDir, atomic_write_json, atomic_write_text
from phiforge.train.optim import device
from phiforge.train.sft import load_policy


def contest(recipe: Recipe, seen_questions: set[str]) -> tuple[list[Problem], int]:
    """`eval.n_problems` distinct problems from the contest seed, none of whose questions training saw."""
    problems, seen_here, dropped = [], set(), 0
    index = 0
    limit = 50 * recipe.eval.n_problems
    while len(problems) < recipe.eval.n_problems:
        if index >= limit:
            raise PhiforgeError(
                f"only {len(problems)} of eval.n_problems={recipe.eval.n_problems} contest problems are unseen by "
                f"training after {limit} draws; lower eval.n_problems or raise synth.difficulty"
            )
        problem, _ = sample_problem(recipe.synth, index, seed=recipe.eval.seed)
        index += 1
        if problem.question in seen_questions:
            dropped += 1
            continue
        if problem.question not in seen_here:
            seen_here.add(problem.question)
            problems.append(problem)
    return problems, dropped


def clean_output(text: str, style: str) -> str:
    return (text if style == "chat" else first_answer(text)).strip()


def _vote_key(answer: str) -> str:
    try:
        return str(Fraction(answer.replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        return answer.strip()


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (numerically equal forms pooled); ties go to the earliest."""
    keyed = [(a, _vote_key(a)) for a in answers if a is not None]
    if not keyed:
        return None
    counts = Counter(k for _, k in keyed)
    best = max(counts.values())
    return next(a for a, k in keyed if counts[k] == best)


def score_model(engine: PhiforgeEngine, problems: list[Problem], style: str,
                recipe: Recipe) -> tuple[dict, list[dict]]:
    cfg, tok = recipe.eval, engine.tok
    prompts = [choice.prompt_ids(tok, p.question, style) for p in problems]  # a tokenizer serves as the engine
    common = dict(stops=(), max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p, seed=cfg.seed,
                  batch_size=cfg.batch_size)
    greedy = engine.complete(prompts, temperature=0.0, **common)
    k = cfg.maj_k
    sampled = engine.complete([p for p in prompts for _ in range(k)], temperature=cfg.temperature, **common)
    records = []
    for i, p in enumerate(problems):
        out = clean_output(greedy[i], style)
        pred = extract_answer(out)
        samples = [clean_output(s, style) for s in sampled[i * k : (i + 1) * k]]
        extracted = [extract_answer(s) for s in samples]
        vote = majority(extracted)
        records.append({
            "id": p.id, "domain": p.domain, "question": p.question, "gold": p.answer, "style": style,
            "prompt": tok.decode(prompts[i], skip_special=False), "output": out, "extracted": pred,
            "correct": answers_equal(pred, p.answer),
            "samples": [{"output": s, "extracted": e} for s, e in zip(samples, extracted)],
            "maj_answer": vote, "maj_correct": answers_equal(vote, p.answer),
        })
    return summarize(records), records


def summarize(records: list[dict]) -> dict:
    n = len(records)

    def acc(key: str, rows: list[dict]) -> dict:
        c = sum(r[key] for r in rows)
        p = c / len(rows)
        return {"correct": c, "n": len(rows), "acc": p, "stderr": math.sqrt(p * (1 - p) / len(rows))}

    domains = sorted({r["domain"] for r in records})
    return {
        "n": n,
        "greedy": acc("correct", records),
        "maj": acc("maj_correct", records),
        "answered": sum(r["extracted"] is not None for r in records) / n,
        "by_domain": {d: acc("correct", [r for r in records if r["domain"] == d]) for d in domains},
    }


def paired(a: list[dict], b: list[dict]) -> dict:
    """Greedy accuracy of a minus b on the same problems, with an exact two-sided sign test on the discordant pairs
    (McNemar's test): whether a's lead is more than the luck of which problems were drawn."""
    wins = sum(x["correct"] and not y["correct"] for x, y in zip(a, b))
    losses = sum(y["correct"] and not x["correct"] for x, y in zip(a, b))
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n if n else 1.0
    return {"delta": (sum(x["correct"] for x in a) - sum(y["correct"] for y in b)) / len(a),
            "wins": wins, "losses": losses, "p_value": min(1.0, 2 * tail)}


def candidates(recipe: Recipe, run: RunDir) -> list[tuple[str, Callable, str]]:
    """(name, build -> (model, tokenizer), prompt style) for every model eval scores, in EVAL_MODELS order.
    "base" is the model post-training starts from: the pretrained one after midtraining extended its context, or
    with sft.init the transformers folder as given ("init")."""
    if recipe.sft.init:
        return [("init", lambda: hf.load(gemma.resolve(recipe.sft.init), "bf16"), "completion"),
                *((stage, lambda stage=stage: load_policy(recipe, run, stage, "eval", train=False)[:2], "chat")
                  for stage in ("sft", "dpo", "dpo2"))]
    tok = ChatTokenizer.load(stages.input_path(run, "tokenizer", "eval"))

    def untrained():
        torch.manual_seed(recipe.pretrain.seed)  # the floor: the architecture before any training
        return Phi3(recipe.model), tok

    def own(stage: str) -> Callable:
        return lambda: (load_model(stages.model_dir(run, stage, "eval"))[0], tok)

    return [("untrained", untrained, "completion"), ("pretrain", own("pretrain"), "completion"),
            ("base", own("midtrain"), "completion"), ("sft", own("sft"), "chat"), ("dpo", own("dpo"), "chat"),
            ("dpo2", own("dpo2"), "chat")]


def execute(recipe: Recipe, run: RunDir) -> dict:
    seen = {q for kind in ("pretrain", "sft", "pts") for q in read_column(run, kind, "question")}
    problems, dropped = contest(recipe, seen)
    out = run.stage_dir("eval")
    summary = {"contest": {"seed": recipe.eval.seed, "n_problems": len(problems), "dropped_seen_in_training": dropped,
                           "maj_k": recipe.eval.maj_k, "temperature": recipe.eval.temperature},
               "models": {}}
    all_records = {}
    amc_items, amc_info = amc.contest(recipe, seen) if recipe.eval.amc_n_problems else ([], {})
    sets, skipped = {}, {}
    for bench_name, n in recipe.eval.benchmarks.items():
        try:
            sets[bench_name] = benchmarks.subset(bench_name, n)
            sets[bench_name].load()  # a missing data package shows here, before any model is scored
        except PhiforgeError as e:
            skipped[bench_name] = str(e)
            sets.pop(bench_name)
    if recipe.eval.benchmarks:
        summary["benchmarks"] = {"skipped": skipped, "models": {}}
    if amc_items:
        summary["amc"] = {"seed": recipe.eval.amc_seed, "n_problems": len(amc_items),
                          "dropped": amc_info["dropped"], "blank_below": recipe.eval.amc_blank_below,
                          "normalize": recipe.eval.amc_normalize, "models": {}}
    for name, build, style in candidates(recipe, run):
        model, tok = build()
        engine = PhiforgeEngine(model.to(device()), tok)
        if name == "init":  # the model as given: its replies are the same every run on this machine
            engine = CachedEngine.for_folder(engine, gemma.resolve(recipe.sft.init))
        result, records = score_model(engine, problems, style, recipe)
        result["prompt_style"] = style
        summary["models"][name] = result
        all_records[name] = records
        atomic_write_text(out / f"{name}.jsonl", "".join(_jsonl(r) for r in records))
        print(f"eval {name:>9}: greedy {result['greedy']['acc']:.1%}  maj@{recipe.eval.maj_k} {result['maj']['acc']:.1%}")
        if amc_items:
            summary["amc"]["models"][name] = score_amc(engine, amc_items, amc_info, style,
                                                       recipe.eval, out / f"amc-{name}.jsonl")
        if sets and name in recipe.eval.benchmark_models:
            summary["benchmarks"]["models"][name] = score_benchmarks(engine, sets, style, recipe, out, name)
        if isinstance(engine, CachedEngine):
            summary["models"][name]["replies"] = engine.replies
            print(f"eval {name:>9}: {engine.hits} of {engine.hits + engine.misses} reply sets read from this "
                  f"machine's cache ({engine.root})")
    if summary.get("benchmarks", {}).get("models"):
        summary["benchmarks"]["paired"] = paired_benchmarks(out, list(summary["benchmarks"]["models"]), sets)
    if sets:
        summary["benchmarks"]["reference"] = score_reference(recipe, sets, out)
    summary["paired"] = {f"{a}_vs_{b}": paired(all_records[a], all_records[b])
                         for a, b in (("dpo2", "dpo"), ("dpo", "sft"), ("sft", "base"), ("base", "pretrain"),
                                      ("base", "untrained"), ("sft", "init")) if a in all_records and b in all_records}
    atomic_write_json(out / "summary.json", summary)
    amc_metrics = {"amc_per_150": {name: {mode: r[mode]["per_150"] for mode in r}
                                   for name, r in summary["amc"]["models"].items()}} if amc_items else {}
    bench_metrics = {"benchmarks": {name: {b: r["pass@1"] for b, r in rows.items()}
                                    for name, rows in summary["benchmarks"]["models"].items()}
                     } if summary.get("benchmarks", {}).get("models") else {}
    return {name: {"greedy": m["greedy"]["acc"], "maj": m["maj"]["acc"]} for name, m in summary["models"].items()} | {
        "n_problems": len(problems), "dropped_seen_in_training": dropped} | amc_metrics | bench_metrics


def paired_benchmarks(out: Path, models: list[str], sets: dict) -> dict:
    """Each scored model against the one scored before it (sft vs init, dpo2 vs sft, ...) and against the first, on
    every benchmark's same items: the greedy difference with its sign test (`paired`), from the bench-*.jsonl
    records."""
    def solved(model: str, bench: str) -> list[dict]:
        lines = (out / f"bench-{model}-{bench}.jsonl").read_text().splitlines()
        return [{"correct": json.loads(line)["n_correct"] > 0} for line in lines]

    pairs = [(b, a) for a, b in zip(models, models[1:])] + [(b, models[0]) for b in models[2:]]
    return {f"{a}_vs_{b}": {bench: paired(solved(a, bench), solved(b, bench)) for bench in sets} for a, b in pairs}


def score_benchmarks(engine: PhiforgeEngine, sets: dict, style: str, recipe: Recipe, out: Path, name: str) -> dict:
    """Real benchmarks, greedy and zero-shot, in the model's own prompt style; samples in bench-<model>-<task>.jsonl."""
    result = {}
    for bench_name, bench in sets.items():
        summary, records = benchmarks.evaluate(engine, bench, style=style, max_new_tokens=recipe.eval.max_new_tokens,
                                               batch_size=recipe.eval.batch_size)
        p, n = summary["pass@1"], summary["n_items"]
        result[bench_name] = {"pass@1": p, "n_items": n, "stderr": math.sqrt(p * (1 - p) / max(1, n))}
        atomic_write_text(out / f"bench-{name}-{bench_name}.jsonl", "".join(_jsonl(r) for r in records))
    print(f"bench {name:>9}: " + "  ".join(f"{b} {r['pass@1']:.1%}" for b, r in result.items()))
    return result


def score_reference(recipe: Recipe, sets: dict, out: Path) -> dict:
    """`eval.reference` on the benchmarks, as a base model, its replies kept per machine (bench-reference-*.jsonl):
    {"name", "prompt_style", "results", "replies"}, or {"name", "skipped": why} where it is not installed."""
    name = recipe.eval.reference
    if not name or name == recipe.sft.init:  # none, or already scored as "init"
        return {}
    if name == gemma.NAME and (why := gemma.unavailable()):
        return {"name": name, "skipped": why}
    folder = gemma.resolve(name)
    model, tok = hf.load(folder, "bf16")
    engine = CachedEngine.for_folder(PhiforgeEngine(model.to(device()), tok), folder)
    results = score_benchmarks(engine, sets, "completion", recipe, out, "reference")
    return {"name": name, "prompt_style": "completion", "results": results,
            "replies": engine.replies}


def score_amc(engine, items: list, info: dict, style: str, cfg, path: Path) -> dict:
    """The AMC contest in every mode of phiforge.eval.choice, the two that need a solution sharing one greedy pass on
    the bare question (these models never saw an option list), with `cfg`'s (an EvalConfig) generation and
    blank settings. Each wrong pick is named by its option's slip; every record lands in `path`."""
    texts = choice.solve(engine, items, style=style, show_options=False, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.batch_size, stops=MATH_STOPS)
    result, lines = {}, []
    for mode in choice.MODES:
        summary, records = choice.run(engine, items, style=style, mode=mode, normalize=cfg.amc_normalize,
                                      blank_below=cfg.amc_blank_below, batch_size=cfg.batch_size, texts=texts)
        slips = Counter()
        for r in records:
            r["domain"] = info["domains"][r["id"]]
            r["slip"] = info["mistakes"][r["id"]][r["chosen_index"]] if r["chosen_index"] is not None else None
            slips.update([r["slip"]] if r["slip"] else [])
        summary["slips"] = dict(slips.most_common())
        result[mode] = summary
        lines += [_jsonl(r) for r in records]
    atomic_write_text(path, "".join(lines))
    print(f"{path.stem:>13}: " + "  ".join(f"{m} {r['per_150']:.1f}/150 ({r['correct']} right, {r['blank']} blank)"
                                          for m, r in result.items()))
    return result


def _jsonl(record: dict) -> str:
    return json.dumps(record) + "\n"


def outputs(run: RunDir) -> list[Path]:
    return [run.stage_dir("eval")]
