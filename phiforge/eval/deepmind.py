"""DeepMind mathematics modules (Saxton et al. 2019): sets pre-generated in an isolated environment, then loaded.

The generator (`mathematics-dataset` 1.0.1) only runs on old libraries (sympy 1.4, numpy 1.23.5: newer sympy fails
at import, newer numpy at run time), which clash with the project's own numpy. So `setup()` (run on first use by
`load()`, or as `phiforge setup benchmarks`) makes a separate virtual environment under `data/mathds-venv`, installs the generator there with exact
pins, and runs it as a child process that writes one JSONL file of (question, answer) per module under
`data/mathematics_dataset/<split>/`. The benchmark reads only those files; nothing of the old stack is imported
into phiforge's process. The files are build outputs (git-ignored `data/`), made once per machine.

Generation is seeded (Python's and numpy's generators, from the seed and the module's name), so a set is
reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from phiforge import datahome
from phiforge.errors import PhiforgeError
from phiforge.eval.items import Item
from phiforge.rundir import atomic_write_text

ROOT = datahome.ROOT
VENV = ROOT / "mathds-venv"
SETS = ROOT / "mathematics_dataset"
PINS = ("mathematics-dataset==1.0.1", "sympy==1.4", "numpy==1.23.5", "absl-py", "six")
SETUP_HINT = "run `phiforge setup benchmarks` (makes data/mathds-venv and pre-generates the sets)"
# A spread of the interpolate modules: arithmetic, algebra, numbers, comparison, calculus, polynomials, probability.
DEFAULT_MODULES = ("arithmetic__add_or_sub", "arithmetic__mul", "arithmetic__div", "arithmetic__mixed",
                   "algebra__linear_1d", "algebra__linear_2d", "numbers__gcd", "numbers__lcm", "numbers__div_remainder",
                   "numbers__is_prime", "comparison__pair", "comparison__closest", "calculus__differentiate",
                   "polynomials__evaluate", "probability__swr_p_sequence", "measurement__conversion")

# Runs inside the old-library venv: writes {"question", "answer"} lines for one module to stdout.
_GENERATOR = r"""
import json, random, sys
import numpy as np
from absl import flags
flags.FLAGS(["mathds"])
from mathematics_dataset import generate
split, module, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
generate.init_modules()
modules = generate.filtered_modules[split]
if module not in modules:
    sys.exit(f"unknown module {module!r} for split {split!r}")
random.seed(seed); np.random.seed(seed % 2**32)
for _ in range(n):
    problem, _ = generate.sample_from_module(modules[module])
    print(json.dumps({"question": str(problem.question), "answer": str(problem.answer)}))
"""


def python() -> Path:
    return VENV / "bin" / "python"


def setup(modules=DEFAULT_MODULES, per_module: int = 50, seed: int = 0, split: str = "interpolate") -> Path:
    """Make the isolated environment if missing, then write `per_module` problems of each module."""
    with datahome.lock(ROOT, "mathds"):
        _make_venv()
        return _generate(modules, per_module, seed, split)


def _make_venv() -> None:
    """The old-library environment; its marker is written only after the pins installed, so a set-up that died
    half way is redone instead of leaving a venv without the generator."""
    marker = VENV / "phiforge-pins.txt"
    if marker.is_file() and marker.read_text().split() == list(PINS):
        return
    print(f"[phiforge] making {VENV} for DeepMind's generator (sympy 1.4, numpy 1.23.5; once per machine)",
          file=sys.stderr, flush=True)
    for cmd in ([sys.executable, "-m", "venv", "--clear", str(VENV)],
                [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PhiforgeError(f"DeepMind maths set-up failed at `{' '.join(cmd[:4])} ...`: {tail}")
    atomic_write_text(marker, "\n".join(PINS) + "\n")


# The generator iterates over sets of strings, so its problems depend on Python's hash seed too: without a fixed
# PYTHONHASHSEED two set-ups of the same seed drew different problems (and scored models differently).
HASH_SEED = "0"
SETTINGS = "phiforge-sets.json"  # how the split's files were made; files made otherwise are made again


def _generate(modules, per_module: int, seed: int, split: str) -> Path:
    out = SETS / split
    settings = {"seed": seed, "per_module": per_module, "pythonhashseed": HASH_SEED, "pins": list(PINS)}
    marker = out / SETTINGS
    if not marker.is_file() or json.loads(marker.read_text()) != settings:
        for old in out.glob("*.jsonl"):
            old.unlink()
        atomic_write_text(marker, json.dumps(settings) + "\n")
    env = {**os.environ, "PYTHONHASHSEED": HASH_SEED}
    for module in modules:
        if (out / f"{module}.jsonl").is_file():  # made by an earlier set-up: generation is seeded, so it would match
            continue
        module_seed = int.from_bytes(hashlib.sha256(f"{seed}:{split}:{module}".encode()).digest()[:4], "big")
        done = subprocess.run([str(python()), "-c", _GENERATOR, split, module, str(per_module), str(module_seed)],
                              capture_output=True, text=True, timeout=600, env=env)
        if done.returncode != 0:
            raise PhiforgeError(f"mathematics_dataset module {module}: generator failed: {done.stderr[-500:]}")
        atomic_write_text(out / f"{module}.jsonl", done.stdout)
        print(f"{module}: {len(done.stdout.splitlines())} problems", file=sys.stderr)
    return out


def available(split: str = "interpolate") -> list[Path]:
    return sorted((SETS / split).glob("*.jsonl"))


ID_PREFIX = "mathds-"  # an item's id: the prefix, its module, its line in the module's file


def module_of(item_id: str) -> str:
    """The DeepMind module an item id names."""
    return item_id.removeprefix(ID_PREFIX).rsplit("-", 1)[0]


def load(split: str = "interpolate") -> list[Item]:
    """Every pre-generated problem of the split; the default modules are generated first where none were, or where
    they were made before the generation settings were recorded (those drew other problems on each machine)."""
    if not (SETS / split / SETTINGS).is_file():
        setup(split=split)
    files = available(split)
    items = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
            try:
                row = json.loads(line)
                items.append(Item(f"{ID_PREFIX}{f.stem}-{n}", row["question"], (row["answer"],), row["answer"]))
            except (json.JSONDecodeError, KeyError) as e:
                raise PhiforgeError(f"{f}:{n + 1}: not a question/answer line ({e})") from e
    return items
