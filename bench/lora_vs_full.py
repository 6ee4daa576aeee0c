"""Full fine-tuning against LoRA on Gemma 3 270M after the same SFT wall time, then the same external benchmarks.

    python bench/lora_vs_full.py                                  # LoRA 100 steps, full 57 (same time on 2 cores)
    python bench/lora_vs_full.py --lora-steps 300 --full-steps 171 --root /tmp/lvf-long

The `gemma-math` recipe's data (synth, organic, decontam) is made once under ROOT/base and copied to one run folder
per arm; each arm runs only the `sft` stage (LoRA: the recipe's rank 16 at lr 2e-4; full: `sft.lora.r=0` at lr 2e-5,
the usual full fine-tuning rate), timed with its peak RSS, then `phiforge benchmark` scores its saved folder on
DeepMind maths (16 x 50) and GSM8K-100, greedy and zero-shot. Full fine-tuning's steps are LoRA's scaled by the
two arms' seconds per step on this machine (bench/posttrain_vs_trl.py measures them), so both get the same time.

Prints the table, with the paired sign test on the same items (overall, computed answers and yes/no items apart).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing


def phiforge(*args: str, log: Path | None = None) -> tuple[float, float]:
    """`phiforge ARGS` in a child process of its own: (seconds, the child's own peak RSS in GB)."""
    t0 = time.perf_counter()
    with open(log or "/dev/null", "w") as out:
        subprocess.run([sys.executable, __file__, "--child", *args], check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**os.environ, "LVF_RSS": f"{log}.rss"} if log else None)
    peak = float(Path(str(log) + ".rss").read_text()) if log else float("nan")
    return time.perf_counter() - t0, peak


def child(args: list[str], rss_file: str | None) -> None:
    from phiforge.cli import main as cli

    try:
        rc = cli(args)
    finally:
        if rss_file:
            Path(rss_file).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6))
    sys.exit(rc)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:], os.environ.get("LVF_RSS"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/lora-vs-full")
    ap.add_argument("--lora-steps", type=int, default=100)
    ap.add_argument("--full-steps", type=int, default=57)
    ap.add_argument("--full-lr", default="2e-5")
    args = ap.parse_args()
    from phiforge.eval.contest import paired

    root = Path(args.root)
    base = root / "base"
    if not (base / "decontam" / "manifest.json").is_file():
        for stage in ("synth", "organic", "decontam"):
            phiforge(stage, "gemma-math", "--out", str(base))
    arms = {"lora": ["--set", f"sft.steps={args.lora_steps}"],
            "full": ["--set", f"sft.steps={args.full_steps}", "--set", "sft.lora.r=0",
                     "--set", f"sft.optim.lr={args.full_lr}"]}
    rows, records = {}, {}
    for arm, sets in arms.items():
        run = root / arm
        if not run.exists():
            shutil.copytree(base, run, symlinks=True)
        seconds, rss = phiforge("sft", "--out", str(run), *sets, log=run / "sft.log")
        metrics = json.loads((run / "sft" / "manifest.json").read_text())["metrics"]
        phiforge("benchmark", str(run / "sft" / "model"), "--tasks", "deepmind-math,gsm8k100", "--max-tokens",
                 "192", "--batch-size", "64", "--out", str(run / "bench"), log=run / "bench.log")
        records[arm] = {b: [json.loads(line) for line in (run / "bench" / f"{b}.jsonl").read_text().splitlines()]
                        for b in ("deepmind-math", "gsm8k100")}
        rows[arm] = (metrics, seconds, rss)
        print(f"{arm}: {metrics['steps']} steps in {metrics['seconds']:.0f} s", flush=True)

    def solved(arm, bench, keep=lambda r: True):
        return [{"correct": r["n_correct"] > 0} for r in records[arm][bench] if keep(r)]

    def yes_no(r):
        return str(r["answers"][0]).lower() in ("true", "false")

    print("\n| arm | steps | SFT training s | stage s | peak RSS GB | trainable | final loss | DeepMind | computed "
          "| yes/no | GSM8K-100 |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for arm, (m, seconds, rss) in rows.items():
        dm, gsm = solved(arm, "deepmind-math"), solved(arm, "gsm8k100")
        print(f"| {arm} | {m['steps']} | {m['seconds']:.0f} | {seconds:.0f} | {rss:.2f} | {m['trainable_params']:,} | "
              f"{m['final_loss']:.3f} | {100 * sum(r['correct'] for r in dm) / len(dm):.1f} % | "
              f"{sum(r['correct'] for r in solved(arm, 'deepmind-math', lambda r: not yes_no(r)))} | "
              f"{sum(r['correct'] for r in solved(arm, 'deepmind-math', yes_no))} | "
              f"{100 * sum(r['correct'] for r in gsm) / len(gsm):.0f} % |")
    for name, keep in (("DeepMind, all", lambda r: True), ("DeepMind, computed answers", lambda r: not yes_no(r)),
                       ("DeepMind, yes/no", yes_no)):
        t = paired(solved("full", "deepmind-math", keep), solved("lora", "deepmind-math", keep))
        print(f"{name}: full vs LoRA {100 * t['delta']:+.1f} points (+{t['wins']} -{t['losses']}, "
              f"p = {t['p_value']:.2g})")


if __name__ == "__main__":
    main()
