"""Stage `report`: report.md and report.html in the run folder, with loss curves and the evaluation table.

The report is built once as a list of blocks and rendered twice, so the Markdown and the HTML can never disagree.
"""

from __future__ import annotations

import html
import json
import os
import platform
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from phiforge import stages  # noqa: E402
from phiforge.config import Recipe, save_recipe  # noqa: E402
from phiforge.eval import deepmind  # noqa: E402
from phiforge.rundir import RunDir, atomic_path, atomic_write_text  # noqa: E402

STAGES_SHOWN = ("synth", "organic", "decontam", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2",
                "eval")
# How the per-position table and plot name the three models midtraining compares.
POSITION_MODELS = {"pretrain": "pretrained", "pretrain_rope": "pretrained, raised RoPE base, untrained",
                   "midtrain": "midtrained"}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.system()} {cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_losses(run: RunDir, plots: Path) -> list[tuple[str, str]]:
    made = []
    pre = run.stage_dir("pretrain") / "history.json"
    if pre.is_file():
        h = json.loads(pre.read_text())
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.plot([r["step"] for r in h["train"]], [r["loss"] for r in h["train"]], label="train", lw=1)
        ax.plot([r["step"] for r in h["val"]], [r["loss"] for r in h["val"]], "o-", label="validation")
        ax.set(xlabel="step", ylabel="loss (nats/token)", title="Pretraining", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, plots / "pretrain_loss.png")
        made.append(("plots/pretrain_loss.png", "pretraining loss"))
    mid = run.stage_dir("midtrain") / "history.json"
    if mid.is_file():
        h = json.loads(mid.read_text())
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.plot([r["step"] for r in h["train"]], [r["loss"] for r in h["train"]], label="train (mixture)", lw=1)
        for key, label in (("long_loss", "held-out long documents"), ("replay_loss", "held-out replay windows")):
            ax.plot([r["step"] for r in h["val"]], [r[key] for r in h["val"]], "o-", label=label)
        ax.set(xlabel="step", ylabel="loss (nats/token)", title="Midtraining (context extension)")
        ax.grid(alpha=0.3)
        ax.legend()
        _save(fig, plots / "midtrain_loss.png")
        made.append(("plots/midtrain_loss.png", "midtraining loss"))
        if h.get("by_position", {}).get("long"):
            made.append(plot_positions(h["by_position"], plots))
    sft = run.stage_dir("sft") / "history.json"
    if sft.is_file():
        h = json.loads(sft.read_text())["train"]
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.plot([r["step"] for r in h], [r["loss"] for r in h], lw=1)
        ax.set(xlabel="step", ylabel="loss on assistant tokens", title="SFT")
        ax.grid(alpha=0.3)
        _save(fig, plots / "sft_loss.png")
        made.append(("plots/sft_loss.png", "SFT loss"))
    return made


def plot_positions(bp: dict, plots: Path) -> tuple[str, str]:
    """Loss against position for each model, long documents and replay windows side by side."""
    mids = [(a + b) / 2 for a, b in bp["buckets"]]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, kind, title in zip(axes, ("long", "replay"), ("held-out long documents", "held-out replay windows")):
        for name, label in POSITION_MODELS.items():
            if name in bp.get(kind, {}):
                theta = bp["rope_theta"][name]
                ax.plot(mids, bp[kind][name], "o-", label=f"{label} (θ={theta:g})")
        ax.axvline(bp["pretrain_seq_len"], color="grey", ls="--", lw=1)
        ax.set(xlabel="position in window", title=title, yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (nats/token)")
    axes[0].legend(fontsize=8)
    _save(fig, plots / "midtrain_positions.png")
    return ("plots/midtrain_positions.png", "loss by position before and after midtraining")


def position_tables(bp: dict) -> list[tuple]:
    """One table per data kind: a row per model, a column per position bucket."""
    cut = bp["pretrain_seq_len"]
    head = ["model", "RoPE base"] + [f"[{a}, {b})" for a, b in bp["buckets"]] + [f"≥ {cut}"]
    blocks = []
    for kind, title in (("long", "held-out long documents"), ("replay", "held-out replay windows")):
        rows = [[label, f"{bp['rope_theta'][name]:g}"] + [f"{x:.3f}" for x in bp[kind][name]]
                + [f"{bp[f'{kind}_beyond_pretrain_seq_len'][name]:.3f}"]
                for name, label in POSITION_MODELS.items() if name in bp.get(kind, {})]
        if rows:
            blocks.append(("table", [f"loss, {title} ({bp['windows'][kind]})"] + head[1:], rows))
    return blocks


def plot_eval(summary: dict, plots: Path, k: int) -> tuple[str, str]:
    names = list(summary["models"])
    greedy = [summary["models"][n]["greedy"] for n in names]
    maj = [summary["models"][n]["maj"] for n in names]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [100 * g["acc"] for g in greedy], 0.4, yerr=[100 * g["stderr"] for g in greedy], label="greedy")
    ax.bar([x + 0.2 for x in xs], [100 * m["acc"] for m in maj], 0.4, yerr=[100 * m["stderr"] for m in maj], label=f"maj@{k}")
    ax.set_xticks(list(xs), names)
    ax.set(ylabel="contest problems solved (%)", title=f"Fresh contest, {summary['contest']['n_problems']} problems")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, plots / "eval.png")
    return ("plots/eval.png", "contest accuracy")


AMC_MODES = {"loglik": "log-likelihood, answer first", "solved_loglik": "log-likelihood after own solution",
             "generate": "generated answer"}


def plot_amc(amc: dict, plots: Path) -> tuple[str, str]:
    """Points per 25 questions for each model and mode, against what leaving all blank and guessing would score."""
    names, modes = list(amc["models"]), [m for m in AMC_MODES if m in next(iter(amc["models"].values()))]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(names))]
        rows = [amc["models"][n][mode] for n in names]
        ax.bar(xs, [r["per_150"] for r in rows], width, yerr=[r["per_150_stderr"] for r in rows],
               label=AMC_MODES[mode])
    ax.axhline(37.5, color="grey", ls="--", lw=1, label="all blank (37.5)")
    ax.axhline(30.0, color="grey", ls=":", lw=1, label="random guessing (30)")
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="points per 25 questions (max 150)", ylim=(0, 150),
           title=f"Fresh AMC-style contest, {amc['n_problems']} questions")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, plots / "amc.png")
    return ("plots/amc.png", "AMC-style contest points")


def amc_blocks(amc: dict, plots: Path) -> list[tuple]:
    d = amc["dropped"]
    blocks: list[tuple] = [("h2", "Fresh AMC-style contest"), (
        "p", f"{amc['n_problems']} five-option questions drawn after training from seed {amc['seed']} "
             f"({d['seen_in_training']} drawn questions dropped because training had seen them); the wrong options "
             f"are the answers of typical slips. AMC scoring: 6 points per right answer, 1.5 per blank, 0 per wrong "
             f"one, shown per 25 questions (max 150; all blank scores 37.5, random guessing 30). Log-likelihood "
             f"modes leave a question blank when the top option's probability is below {amc['blank_below']} "
             f"({amc['normalize']} of token log-probs); the generated answer is blank when it names no option.")]
    rows = []
    for name, modes in amc["models"].items():
        for mode, r in modes.items():
            slip = next(iter(r["slips"].items()), None)
            rows.append([name, AMC_MODES.get(mode, mode), f"{r['per_150']:.1f} ± {r['per_150_stderr']:.1f}",
                         r["correct"], r["blank"], r["wrong"], f"{slip[0]} ({slip[1]})" if slip else "-"])
    blocks.append(("table", ["model", "mode", "points / 150", "right", "blank", "wrong", "commonest slip"], rows))
    blocks.append(("img",) + plot_amc(amc, plots))
    return blocks


BENCH_NOTES = {"gsm8k100": "GSM8K test items (grade-school word problems)",
               "gsm-symbolic": "one fresh variant of each GSM8K template (new names and numbers)",
               "deepmind-math": "DeepMind mathematics modules (arithmetic, algebra, numbers, calculus, ...)"}


def benchmark_blocks(bench: dict, models: dict, plots: Path, run: RunDir) -> list[tuple]:
    """Real benchmarks per model: pass@1 in % +- binomial standard error, DeepMind maths per module, and skipped sets
    with their install command. They come first in the report: data nobody here wrote is what transfer means."""
    blocks: list[tuple] = [("h2", "Real benchmarks: maths nobody here wrote")]
    rows_in, styles = dict(bench["models"]), {m: models[m]["prompt_style"] for m in bench["models"]}
    ref = bench.get("reference") or {}
    if ref.get("results"):  # a pretrained model on the same items, for scale
        rows_in["reference"], styles["reference"] = ref["results"], ref["prompt_style"]
    names = sorted({b for r in rows_in.values() for b in r}, key=lambda b: list(BENCH_NOTES).index(b)
                   if b in BENCH_NOTES else len(BENCH_NOTES))
    if rows_in:
        n = {b: next(r[b]["n_items"] for r in rows_in.values() if b in r) for b in names}
        blocks.append(("p", "Greedy, zero-shot, each model in its own prompt style (base models as an exercise to "
                            "solve, chat models as a user turn); pass@1 in % ± standard error. "
                            + " ".join(f"{b}: {n[b]} items, {BENCH_NOTES.get(b, '')}." for b in names)
                            + (f" reference: {ref['name']}, pretrained elsewhere, scored as a base model on the same "
                               "items (its replies are kept per machine)." if "reference" in rows_in else "")))
        rows = [[m, styles[m]] + [f"{100 * r[b]['pass@1']:.1f} ± {100 * r[b]['stderr']:.1f}"
                                                  if b in r else "" for b in names] for m, r in rows_in.items()]
        blocks.append(("table", ["model", "prompt"] + names, rows))
        fig, ax = plt.subplots(figsize=(6.4, 3.4))
        width = 0.8 / len(names)
        for j, b in enumerate(names):
            xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(rows_in))]
            vals = [rows_in[m].get(b, {"pass@1": 0, "stderr": 0}) for m in rows_in]
            ax.bar(xs, [100 * v["pass@1"] for v in vals], width, yerr=[100 * v["stderr"] for v in vals], label=b)
        ax.set_xticks(range(len(rows_in)), list(rows_in))
        ax.set(ylabel="pass@1 (%)", title="Real benchmarks, greedy, zero-shot")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        _save(fig, plots / "benchmarks.png")
        blocks.append(("img", "plots/benchmarks.png", "real benchmarks"))
        if bench.get("paired"):
            blocks.append(("p", "Paired on the same items: points gained by the first model over the second, and "
                                "the exact sign test on the items only one of them solves (McNemar)."))
            rows = [[k.replace("_vs_", " vs ")] + [f"{100 * t[b]['delta']:+.1f} (+{t[b]['wins']} -{t[b]['losses']}, "
                                                   f"p={t[b]['p_value']:.2g})" if b in t else "" for b in names]
                    for k, t in bench["paired"].items()]
            blocks.append(("table", ["paired"] + names, rows))
        if "deepmind-math" in names:
            blocks += per_module_blocks(run, [m for m, r in rows_in.items() if "deepmind-math" in r])
    for b, why in bench.get("skipped", {}).items():
        blocks.append(("p", f"{b} not scored: {why}"))
    if ref.get("skipped"):
        blocks.append(("p", f"Reference {ref['name']} not scored: {ref['skipped']}"))
    return blocks


def per_module_blocks(run: RunDir, models: list[str]) -> list[tuple]:
    """DeepMind maths by module, then by number length: items solved of those scored, per model, from the eval stage's
    records (read once for both tables)."""
    records = {m: [json.loads(line) for line in stages.input_path(
        run, "eval", "report", f"bench-{m}-deepmind-math.jsonl").read_text().splitlines()] for m in models}
    yes_no: dict[str, set] = {}
    for r in (r for rs in records.values() for r in rs):
        if str(r.get("answers", [""])[0]).lower() in ("true", "false"):
            yes_no.setdefault(deepmind.module_of(r["id"]), set()).add(r["id"])
    note = ("; ".join(f"{len(ids)} of {module}'s items" for module, ids in sorted(yes_no.items()))
            + " are yes/no questions, of which a constant answer gets about half") if yes_no else ""
    by_module = _solved_table(records, lambda r: deepmind.module_of(r["id"]))
    by_length = _solved_table(records, lambda r: _length_bin(longest_number(r["question"])))
    rows = [[f"{lo}-{hi}" if hi < 99 else f"{lo}+", *cells] for (lo, hi), *cells in by_length]
    # numbers longer than any the generator writes (12 digits in the default curriculum) get a row of their own
    return [("p", "DeepMind maths by module (greedy, solved / scored)" + (f". {note}:" if note else ":")),
            ("table", ["module"] + models, by_module),
            ("p", "DeepMind maths by the digits of the longest number in the question (solved / scored):"),
            ("table", ["digits"] + models, rows)]


LENGTH_BINS = ((1, 3), (4, 6), (7, 9), (10, 12), (13, 99))


def longest_number(question: str) -> int:
    """Digits of the longest number in a question (a decimal's digits on both sides of the point count)."""
    return max((len(n.replace(".", "")) for n in re.findall(r"\d+(?:\.\d+)?", question)), default=0)


def _length_bin(n: int) -> tuple | None:
    return next((b for b in LENGTH_BINS if b[0] <= n <= b[1]), None)


def _solved_table(records: dict[str, list[dict]], key) -> list[list]:
    """Rows of [key, "solved/scored" per model], sorted by key; records whose key is None are left out."""
    solved: dict = {}
    for model, rs in records.items():
        for r in rs:
            k = key(r)
            if k is not None:
                counts = solved.setdefault(k, {}).setdefault(model, [0, 0])
                counts[0] += r["n_correct"] > 0
                counts[1] += 1
    return [[k] + [f"{c[0]}/{c[1]}" if (c := per.get(m)) else "" for m in records] for k, per in sorted(solved.items())]


def flagged_examples(run: RunDir, n: int = 5) -> list[tuple]:
    """The first flagged samples, each beside the benchmark item it shares n-grams with."""
    path = run.stage_dir("decontam") / "flagged.jsonl"
    lines = path.read_text().splitlines()[:n] if path.is_file() else []
    if not lines:
        return []
    rows = [[f["source"], f["id"], f["benchmark"], f["item_id"], f["status"], f"`{f['ngram']}`"]
            for f in map(json.loads, lines)]
    return [("table", ["source", "sample", "benchmark", "item", "verdict", "shared n-gram"], rows)]


def pct(a: dict) -> str:
    return f"{100 * a['acc']:.1f} ± {100 * a['stderr']:.1f}"


def organic_blocks(run: RunDir, pre: dict) -> list[tuple]:
    """The organic stage's funnel per feed, dedup and classifier figures, and the mixture plan against the tokens
    pretraining read per source."""
    blocks: list[tuple] = []
    org = (run.manifest("organic") or {}).get("metrics", {})
    if org:
        blocks.append(("h2", "Organic data and the mixture"))
        reasons = sorted({r for f in org["feeds"].values() for r in f["removed"]})
        rows = [[f, x["pages"], f"{x['bytes'] / 1e6:.2f}"] + [x["removed"].get(r, 0) for r in reasons] + [x["kept"]]
                for f, x in org["feeds"].items()]
        blocks.append(("table", ["feed", "pages", "MB"] + [r.replace("_", " ") for r in reasons] + ["kept"], rows))
        d, c, w = org["dedup"], org["classifier"], org["web"]
        blocks.append(("p", f"Deduplication across sources: {d['exact']} exact and {d['near']} near duplicates "
                            f"(MinHash, {d['num_perm']} permutations, estimated Jaccard ≥ {d['threshold']}) among "
                            f"{d['pages']} pages that passed the corrupt-text filters. Educational value: "
                            f"{c['labelled']} pages rated 0-5 by the `{c['teacher']}` teacher "
                            f"({100 * c['positive_rate']:.0f}% educational), a hashed n-gram logistic regression "
                            f"trained on {c['train']}; on {c['held_out']} held-out pages:"))
        if "classifier" in c:
            rows = [[name, x["accuracy"], x["precision"], x["recall"], x["f1"]] for name, x in
                    (("classifier", c["classifier"]), ("majority class", c["majority_class"]),
                     ("keep everything", c["keep_all"]))]
            blocks.append(("table", ["held-out", "accuracy", "precision", "recall", "F1"], rows))
        blocks.append(("p", f"Web: {w['kept']} of {w['pages']} pages kept by classifier score, the best "
                            f"{w['rewritten']} rewritten into {w['rewrites']} textbook passages with exercises. "
                            "Documents per source: " + ", ".join(f"{s} {x['docs']:,} ({x['chars'] / 1e6:.2f} M chars)"
                                                                 for s, x in org["sources"].items()) + "."))
    mix = pre.get("mixture")
    if mix:
        budget = sum(x["planned_tokens"] for x in mix)
        rows = [[x["source"], f"{100 * x['share']:.1f}%", f"{x['unique_tokens']:,}", f"{x['epochs']:.2f}",
                 f"{x['planned_tokens']:,}", f"{x['realised_tokens']:,}",
                 f"{100 * (x['realised_tokens'] / max(1, x['planned_tokens']) - 1):+.2f}%"] for x in mix]
        blocks.append(("p", f"Pretraining mixture (Phi-4 Table 5), planned for the {budget:,} tokens pretraining "
                            "reads; realised = tokens of each source in the windows the training loop drew:"))
        blocks.append(("table", ["source", "share", "unique tokens", "epochs", "planned tokens", "realised tokens",
                                 "realised vs plan"], rows))
        blocks += [("p", f"Warning: {x['warning']}.") for x in mix if x["warning"]]
    return blocks


def build_blocks(recipe: Recipe, run: RunDir, dest: Path | None = None) -> list[tuple]:
    """The report's blocks; its plots are written to `dest`/plots (default: the run folder)."""
    plots = Path(dest if dest is not None else run.root) / "plots"
    m = {s: run.manifest(s) or {} for s in STAGES_SHOWN}
    blocks: list[tuple] = [("h1", f"phiforge run: {recipe.name}")]
    total = sum(x.get("seconds", 0) for x in m.values())
    blocks.append(("p", f"Run folder `{run.root}`. Machine: {machine()}. Stage wall time: {total / 60:.1f} min."))

    ev = run.stage_dir("eval") / "summary.json"
    if ev.is_file():
        summary = json.loads(ev.read_text())
        c = summary["contest"]
        k = c["maj_k"]
        if summary.get("benchmarks"):
            blocks += benchmark_blocks(summary["benchmarks"], summary["models"], plots, run)
        blocks.append(("h2", "Fresh contest (in-distribution)"))
        blocks.append(("p", "The training generator's own problem types and phrasings with fresh numbers: it measures "
                            "what the model learnt of its training distribution, not transfer. "
                            f"{c['n_problems']} problems drawn after training from seed {c['seed']}; "
                            f"{c['dropped_seen_in_training']} drawn problems were dropped because training had seen "
                            f"their question. Accuracy in % ± standard error; maj@{k} samples at T={c['temperature']}."))
        rows = [[n, r["prompt_style"], pct(r["greedy"]), pct(r["maj"]), f"{100 * r['answered']:.0f}%"]
                for n, r in summary["models"].items()]
        blocks.append(("table", ["model", "prompt", "greedy", f"maj@{k}", "answered"], rows))
        rows = [[k.replace("_vs_", " vs "), f"{100 * v['delta']:+.1f}", v["wins"], v["losses"], f"{v['p_value']:.2g}"]
                for k, v in summary.get("paired", {}).items()]
        blocks.append(("table", ["greedy, paired", "Δ points", "only first solves", "only second solves",
                                 "sign-test p"], rows))
        domains = sorted({d for r in summary["models"].values() for d in r["by_domain"]})
        rows = [[n] + [pct(r["by_domain"][d]) if d in r["by_domain"] else "" for d in domains]
                for n, r in summary["models"].items()]
        counts = next(iter(summary["models"].values()))["by_domain"]
        blocks.append(("table", ["model (greedy)"] + [f"{d} (n={counts[d]['n']})" for d in domains], rows))
        blocks.append(("img",) + plot_eval(summary, plots, k))
        if summary.get("amc"):
            blocks += amc_blocks(summary["amc"], plots)

    blocks.append(("h2", "Training"))
    pre, sft = m["pretrain"].get("metrics", {}), m["sft"].get("metrics", {})
    if pre:
        blocks.append(("p", f"Model: {pre['params']:,} parameters. Pretraining: {pre['steps']} steps × "
                            f"{pre['tokens_per_step']:,} tokens = {pre['tokens_trained']:,} tokens "
                            f"({pre['epochs']} epochs); final train loss {pre['final_train_loss']:.3f}, "
                            f"validation {pre['final_val_loss']:.3f}."))
    mid = m["midtrain"].get("metrics", {})
    if mid:
        bp = mid["by_position"]
        blocks.append(("p", f"Midtraining (context extension): sequence {bp['pretrain_seq_len']} → "
                            f"{mid['seq_len']}, RoPE base "
                            f"{mid['rope_theta']['before']:g} → {mid['rope_theta']['after']:g}, peak LR "
                            f"{mid['peak_lr']:.2g}; {mid['steps']} steps × {mid['tokens_per_step']:,} tokens, "
                            f"{100 * mid['long_fraction']:.0f}% of windows whole long documents ({mid['long_docs']:,} "
                            f"problem sets of {mid['problems_per_doc']} exercises on average, each followed by its "
                            f"answer key), the rest replayed pretraining text; final train loss "
                            f"{mid['final_train_loss']:.3f}. Loss by position on held-out data, where positions "
                            f"≥ {bp['pretrain_seq_len']} are beyond the pretraining context:"))
        blocks += position_tables(bp)
        long_beyond = bp.get("long_beyond_pretrain_seq_len", {})
        if {"pretrain", "midtrain"} <= set(long_beyond):
            blocks.append(("p", f"Held-out long documents, positions ≥ {bp['pretrain_seq_len']}: "
                                f"{long_beyond['pretrain']:.3f} before midtraining, {long_beyond['midtrain']:.3f} "
                                f"after ({long_beyond['midtrain'] - long_beyond['pretrain']:+.3f} nats/token)."))
        key = bp.get("answer_key_loss", {})
        if {"pretrain", "midtrain"} <= set(key):
            blocks.append(("p", f"Answer-key answers ({bp['answer_key_tokens']} tokens predicted by "
                                f"looking up that exercise's answer hundreds of tokens back): {key['pretrain']:.3f} "
                                f"before midtraining, {key['midtrain']:.3f} after (nats/token)."))
    if sft:
        blocks.append(("p", f"SFT: {sft['conversations']:,} conversations, {sft['steps']} steps "
                            f"({sft['epochs']} epochs); loss {sft['first_loss']:.3f} → {sft['final_loss']:.3f}."))
    pts, dpo = m["pts"].get("metrics", {}), m["dpo"].get("metrics", {})
    if pts:
        per = pts["rollouts_per_pivotal_token"]
        blocks.append(("p", f"Pivotal Token Search ({pts['mode']}): {pts['queries']} questions held out of SFT, "
                            f"{pts['searched']} inside the 0.2-0.8 success gate, {pts['pivotal_tokens']} pivotal tokens, "
                            f"{pts['pairs']} single-token DPO pairs, {pts['rollouts']:,} rollouts "
                            f"({per if per is not None else '-'} per pivotal token)."))
    if dpo:
        tail = (f"; final loss {dpo['final_loss']:.3f}, reward margin {dpo['final_reward_margin']:.3f}"
                if dpo["final_loss"] is not None else "; no pairs, so the DPO model is the SFT model")
        blocks.append(("p", f"DPO on the PTS pairs: {dpo['pairs']} pairs, {dpo['steps']} steps{tail}."))
    dpo2 = m["dpo2"].get("metrics", {})
    if dpo2:
        tail = (f"; loss {dpo2['first_loss']:.3f} → {dpo2['final_loss']:.3f}, reward margin "
                f"{dpo2['final_reward_margin']:.3f}" if dpo2["final_loss"] is not None else "; no pairs, so the model "
                "is the PTS-DPO model")
        blocks.append(("p", f"Judge-guided DPO ({dpo2['judge']} judge): {dpo2['questions']} held-out questions, "
                            f"{dpo2['responses']} responses judged ({dpo2['unscored']} unscored), {dpo2['pairs']} "
                            f"full-response pairs, {dpo2['steps']} steps{tail}. Chosen side by policy: "
                            + ", ".join(f"{p} {n}" for p, n in sorted(dpo2["chosen_by_policy"].items())) + "."))
        rows = [[p, x["accuracy"], x["style"], x["detail"]] for p, x in dpo2["mean_scores"].items()]
        blocks.append(("table", ["policy", "mean accuracy", "mean style", "mean detail"], rows))
    for path, alt in plot_losses(run, plots):
        blocks.append(("img", path, alt))

    syn, tok = m["synth"].get("metrics", {}), m["tokenizer"].get("metrics", {})
    if syn:
        blocks.append(("h2", "Data"))
        blocks.append(("p", f"Programmatic teacher: {syn['samples']:,} samples, {syn['kept']:,} kept after "
                            f"verification (accept rate {100 * syn['accept_rate']:.1f}%), {syn['rejected']} rejected."))
        domains = sorted(set(syn["pretrain_by_domain"]) | set(syn["sft_by_domain"]))
        rows = [[d, syn["pretrain_by_domain"].get(d, 0), syn["sft_by_domain"].get(d, 0)] for d in domains]
        blocks.append(("table", ["domain", "pretraining docs", "SFT conversations"], rows))
        blocks.append(("table", ["style", "samples"], [[s, n] for s, n in syn["by_style"].items()]))
        card = syn.get("data_card", [])
        if card:
            # Tokens of the kept text in the run's own tokenizer, estimated from its characters per token.
            cpt = tok.get("chars_per_token")
            blocks.append(("p", "Data card: every workflow and teacher that made samples. Teacher tokens are those "
                                "read and written by fresh requests (cache hits cost none)."))
            rows = [[c["workflow"], c["teacher"], c["seeds"], c["candidates"], c["kept"],
                     f"{100 * c['accept_rate']:.1f}%", f"{c['chars']:,}",
                     f"{round(c['chars'] / cpt):,}" if cpt else "-",
                     f"{c['teacher_prompt_tokens']:,} / {c['teacher_completion_tokens']:,}",
                     "; ".join(f"{r} ({n})" for r, n in list(c["reasons"].items())[:2]) or "-"] for c in card]
            blocks.append(("table", ["workflow", "teacher", "seeds", "candidates", "kept", "accept rate",
                                     "characters", "≈ tokens", "teacher tokens in / out", "main reject reasons"], rows))
        if pre:
            blocks.append(("p", f"Pretraining corpus: {pre['train_tokens']:,} train tokens, {pre['val_tokens']:,} "
                                f"validation tokens from {pre['docs']:,} documents."))
    blocks += organic_blocks(run, m["pretrain"].get("metrics", {}))
    dc = m["decontam"].get("metrics", {})
    if dc:
        used = {b: x["items"] for b, x in dc["benchmarks"].items() if x["items"]}
        skipped = [b for b, x in dc["benchmarks"].items() if not x["items"]]
        blocks.append(("p", "Decontamination (hybrid 13-gram / 7-gram test, Phi-4 App. B; 7-gram ratio thresholds "
                            f"{dc['thresholds']['info']} partial, {dc['thresholds']['contaminated']} contaminated) "
                            "against " + ", ".join(f"{b} ({n} items)" for b, n in used.items())
                            + (f"; not installed, so not checked: {', '.join(skipped)}" if skipped else "")
                            + f". {dc['dropped']} training samples dropped."))
        rows = [[src, x["docs"], x["status"]["PARTIAL"], x["status"]["CONTAMINATED"], x["kept"]]
                for src, x in dc["sources"].items()]
        blocks.append(("table", ["source", "samples", "partial", "contaminated", "kept"], rows))
        by_bench = {}
        for x in dc["sources"].values():
            for b, v in x.get("benchmark", {}).items():
                by_bench[b] = by_bench.get(b, 0) + v["PARTIAL"] + v["CONTAMINATED"]
        blocks.append(("p", "Flagged per benchmark: " + ", ".join(f"{b} {by_bench.get(b, 0)}" for b in used)
                            + ". Each flagged sample, with the benchmark item it matched, is in "
                            "`decontam/flagged.jsonl`."))
        blocks += flagged_examples(run)
    if tok:
        blocks.append(("p", f"Tokenizer: byte-level BPE, {tok['vocab_size']} tokens, {tok['chars_per_token']} "
                            f"characters per token; PAD id {tok['pad_id']}, EOS `<|im_end|>` id {tok['im_end_id']}."))

    blocks.append(("h2", "Stages"))
    rows = [[s, f"{x.get('seconds', 0):.1f}", f"{x['peak_rss_gb']:.2f}" if "peak_rss_gb" in x else "",
             x.get("finished", "")] for s, x in m.items() if x]
    blocks.append(("table", ["stage", "seconds", "peak memory GB", "finished"], rows))
    blocks.append(("h2", "Recipe"))
    blocks.append(("pre", save_recipe(recipe)))
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(("#" if kind == "h1" else "##") + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("\n".join(["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
                                 + ["| " + " | ".join(map(str, r)) + " |" for r in rows]))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "pre":
            out.append("```yaml\n" + b[1].rstrip() + "\n```")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
           "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
           "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem}"
           "th{background:#f3f3f3}pre{background:#f6f6f6;padding:1rem;overflow:auto}img{max-width:100%}"
           "</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                       + "</table>")
        elif kind == "img":
            out.append(f"<img src='{e(b[1])}' alt='{e(b[2])}'>")
        elif kind == "pre":
            out.append(f"<pre>{e(b[1])}</pre>")
    return "\n".join(out) + "</body></html>\n"


def render(recipe: Recipe, run: RunDir, dest: Path) -> dict:
    """Write report.md, report.html and plots/ of the run into `dest`, which may be outside the run folder (`phiforge
    report --to DIR`: a read-only run folder can still be reported on)."""
    blocks = build_blocks(recipe, run, dest)
    atomic_write_text(dest / "report.md", to_markdown(blocks))
    atomic_write_text(dest / "report.html", to_html(blocks, f"phiforge run: {recipe.name}"))
    return {"report": str(dest / "report.md"), "plots": len(list((dest / "plots").glob("*.png")))}


def execute(recipe: Recipe, run: RunDir) -> dict:
    return render(recipe, run, run.root)


def outputs(run: RunDir) -> list[Path]:
    return [run.root / "report.md", run.root / "report.html", run.root / "plots"]
