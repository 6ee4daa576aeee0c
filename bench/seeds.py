"""The default run over seeds: README's results table as mean +- standard error, reproducible by one command.

    python bench/seeds.py                      # phiforge run tiny with every stage's seed set to 0, 1, 2
    python bench/seeds.py --seeds 0 1 2 3 4    # more seeds
    python bench/seeds.py --no-run             # only the table, from run folders made earlier

Every seed a stage reads (synthetic problems, organic sampling, the mixture's order, initialisation, midtraining,
SFT, DPO) is set to the seed; the contests' seeds stay, so every run answers the same questions and models can be
compared item by item. Seed 0 is the default recipe itself. Runs go to runs/seeds/s<seed> and are skipped when
complete, as any `phiforge run` is.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

SEED_KEYS = ("synth.seed", "organic.seed", "mixture.seed", "pretrain.seed", "midtrain.seed", "sft.seed", "dpo.seed")
MODELS = ("pretrain", "base", "sft", "dpo", "dpo2")
LABELS = {"pretrain": "pretrained", "base": "base (midtrained)", "sft": "SFT", "dpo": "SFT + PTS-DPO",
          "dpo2": "+ judge-DPO"}


def run_seed(recipe: str, seed: int, out: Path) -> None:
    sets = [a for k in SEED_KEYS for a in ("--set", f"{k}={seed}")] if seed else []
    cmd = [sys.executable, "-m", "phiforge.cli", "run", recipe, "--out", str(out), *sets]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def mean_se(xs: list[float]) -> str:
    if not xs:
        return "-"
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.1f} ± {se:.1f}"


def measures(summary: dict) -> dict[str, dict[str, float]]:
    """Per model: contest greedy and maj@k (%), AMC points / 150 after its own solution, and each real benchmark."""
    out: dict[str, dict[str, float]] = {}
    for name in MODELS:
        m = summary["models"].get(name)
        if m is None:
            continue
        row = {"greedy": 100 * m["greedy"]["acc"], "maj": 100 * m["maj"]["acc"]}
        if name in summary.get("amc", {}).get("models", {}):
            row["amc"] = summary["amc"]["models"][name]["solved_loglik"]["per_150"]
        for bench, r in summary.get("benchmarks", {}).get("models", {}).get(name, {}).items():
            row[bench] = 100 * r["pass@1"]
        out[name] = row
    return out


def correct(folder: Path, model: str) -> list[bool]:
    rows = [json.loads(x) for x in (folder / "eval" / f"{model}.jsonl").read_text().splitlines()]
    return [bool(r["correct"]) for r in rows]  # the greedy answer's verdict


def table(folders: dict[int, Path]) -> str:
    per_seed = {s: measures(json.loads((f / "eval" / "summary.json").read_text())) for s, f in folders.items()}
    order = ("greedy", "maj", "amc", "gsm8k100", "gsm-symbolic", "deepmind-math")
    columns = sorted({c for rows in per_seed.values() for row in rows.values() for c in row},
                     key=lambda c: (order.index(c) if c in order else len(order), c))
    names = {"greedy": "contest greedy %", "maj": "contest maj %", "amc": "AMC / 150", "gsm8k100": "GSM8K-100 %",
             "gsm-symbolic": "GSM-Symbolic %",
             "deepmind-math": "DeepMind maths %"}
    lines = [f"{len(folders)} seeds ({', '.join(map(str, folders))}); mean ± s.e. over seeds", "",
             "| model | " + " | ".join(names.get(c, c) for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in MODELS:
        cells = [mean_se([per_seed[s][name][c] for s in folders if c in per_seed[s].get(name, {})]) for c in columns]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | " + " | ".join(LABELS[m] for m in MODELS) + " (contest greedy %) |",
              "|---|" + "---|" * len(MODELS)]
    for s in folders:
        lines.append(f"| {s} | " + " | ".join(f"{per_seed[s][m]['greedy']:.1f}" if m in per_seed[s] else "-"
                                              for m in MODELS) + " |")
    lines.append("")
    for a, b in (("dpo", "sft"), ("dpo2", "dpo")):
        diffs, won, lost = [], 0, 0
        for f in folders.values():
            ca, cb = correct(f, a), correct(f, b)
            diffs.append(100 * (sum(ca) - sum(cb)) / len(ca))
            won += sum(x and not y for x, y in zip(ca, cb))
            lost += sum(y and not x for x, y in zip(ca, cb))
        lines.append(f"{LABELS[a]} vs {LABELS[b]}: {mean_se(diffs)} points (paired per seed); "
                     f"{won} problems won, {lost} lost over all seeds")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=Path("runs/seeds"))
    ap.add_argument("--no-run", action="store_true", help="only print the table from existing run folders")
    args = ap.parse_args()
    folders = {s: args.root / f"s{s}" for s in args.seeds}
    if not args.no_run:
        for s, f in folders.items():
            run_seed(args.recipe, s, f)
    print(table(folders))


if __name__ == "__main__":
    main()
