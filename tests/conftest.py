"""Shared fixtures: a micro recipe that runs the whole pipeline in seconds on a laptop CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MICRO = {
    "name": "micro",
    "synth": {"seed": 0, "n_pretrain": 400, "n_sft": 120, "n_pts": 6, "shard_size": 150},
    # a slice of each organic feed: every filter, the classifier and the rewrites run, in a few seconds. Only feeds
    # that come with Python itself: package_pages reads whatever else is installed, so the tests' data would too.
    "organic": {"feeds": {"stdlib_code": 150000, "stdlib_docs": 200000, "pydoc_topics": 160000}, "max_labels": 400},
    "tokenizer": {"vocab_size": 300},
    "model": {"vocab_size": 320, "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ffn": 64,
              "max_seq_len": 320},
    # val_fraction: enough held-out exercises for a few held-out problem sets in midtraining
    "pretrain": {"seq_len": 64, "batch_size": 8, "steps": 40, "val_every": 20, "ckpt_every": 10, "val_batches": 2,
                 "log_every": 5, "val_fraction": 0.15, "optim": {"lr": 3e-3, "warmup_steps": 5}},
    # a problem set of two micro-tokenizer exercises and its key needs about 280 tokens
    "midtrain": {"seq_len": 320, "batch_size": 4, "steps": 10, "warmup_steps": 2, "val_every": 5, "ckpt_every": 5,
                 "val_batches": 1, "log_every": 2, "bucket": 64, "eval_windows": 8},
    "sft": {"batch_size": 8, "steps": 10, "max_len": 128, "log_every": 2, "optim": {"lr": 1e-3, "warmup_steps": 2}},
    "pts": {"n_queries": 3, "solutions_per_query": 1, "batch": 4, "max_rollouts": 8, "max_response_tokens": 24},
    "dpo": {"batch_size": 4},
    "dpo2": {"n_queries": 3, "samples_per_policy": 1, "max_response_tokens": 24, "batch_size": 4},
    "eval": {"n_problems": 8, "maj_k": 2, "max_new_tokens": 24, "batch_size": 16, "amc_n_problems": 8,
             "benchmarks": {"gsm8k100": 3}, "benchmark_models": ["base", "sft"],
             "reference": ""},  # what a run scores must not depend on whether Gemma is installed
}


def write_recipe(path: Path, overrides: dict | None = None) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(MICRO))
    for key, value in (overrides or {}).items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def micro_recipe(tmp_path) -> Path:
    return write_recipe(tmp_path / "micro.yaml")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run folder) of one whole micro pipeline run through the CLI, shared by the tests that read a
    completed run; a test that damages or resumes a run works on a copy."""
    tmp = tmp_path_factory.mktemp("micro-run")
    recipe = write_recipe(tmp / "micro.yaml")
    out = tmp / "run"
    r = phiforge("run", recipe, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return recipe, out


def phiforge(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a child process, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "phiforge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def benchmark_items(name: str) -> list:
    """The benchmark's items, set up on first use as phiforge does it (a set-up that fails fails the test)."""
    from phiforge.eval import benchmarks

    return benchmarks.get(name).load()


@pytest.fixture
def gsm8k() -> list:
    return benchmark_items("gsm8k100")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under PHIFORGE_NO_SKIPS=1 (set by .ci/run) a skipped test fails: CI installs every dataset, package and
    permission the conditional tests wait for, so a skip there means a test silently stopped running."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("PHIFORGE_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome, report.longrepr = "failed", f"skipped under PHIFORGE_NO_SKIPS=1: {reason}"
