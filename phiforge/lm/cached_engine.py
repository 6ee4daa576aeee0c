"""An engine whose replies are kept on disk, once per machine, for a model that never changes: the model a recipe
post-trains from (`sft.init`) is scored by every run of that recipe on the same items, and a 270M model running
every base-model reply to the token limit is minutes of each run.

A whole `complete` call is one entry, keyed by everything its texts depend on: the model's bytes, every prompt, the
generation settings (batch size too: it decides the padding each row decodes beside), torch and transformers
versions and the machine (phiforge/machine.py). Keying the call rather than each prompt is what keeps a cached
reply equal to a fresh one: a sampled row's tokens depend on the rows decoded with it, and bf16 rows can differ in
their last bits with their batch. So a changed item list is a miss, recomputed whole; the same one is read back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from phiforge import datahome, machine
from phiforge.rundir import atomic_write_json, digest_files, file_sha256

ROOT = datahome.ROOT / "replies"
FORMAT = 1  # part of every key: bump it when what a cached reply means changes


def folder_digest(folder: Path | str) -> str:
    """One digest over a model folder's files (names and bytes): what identifies the model a reply came from."""
    folder = Path(folder)
    return digest_files({p.relative_to(folder).as_posix(): file_sha256(p)
                         for p in sorted(folder.rglob("*")) if p.is_file()})


def _versions() -> dict:
    import torch

    try:
        import transformers
        tf = transformers.__version__
    except ImportError:
        tf = None
    return {"torch": torch.__version__, "transformers": tf}


class CachedEngine:
    """`engine` with its `complete` calls kept under `root` for the model `model_key` names; everything else
    (`encode`, `chat_prompt`, `logprobs`, ...) passes through. `hits` and `misses` count calls."""

    def __init__(self, engine, model_key: str, root: Path | str | None = None):
        self.engine, self.model_key, self.root = engine, model_key, Path(root or ROOT)
        self.hits = self.misses = 0

    @classmethod
    def for_folder(cls, engine, folder: Path | str) -> CachedEngine:
        """`engine` on the model folder `folder`, its replies kept under the folder's digest."""
        return cls(engine, "folder:" + folder_digest(folder))

    @property
    def replies(self) -> dict:
        return {"from_cache": self.hits, "generated": self.misses}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def key(self, prompts: Sequence[Sequence[int]], settings: dict) -> tuple[str, dict]:
        request = {"v": FORMAT, "model": self.model_key, "settings": settings, "machine": machine.describe(),
                   "versions": _versions(),
                   "prompts": hashlib.sha256(json.dumps([list(p) for p in prompts]).encode()).hexdigest()}
        text = json.dumps(request, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest(), request

    def complete(self, prompts: list[list[int]], *, stops: Sequence[str], max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, batch_size: int) -> list[str]:
        settings = {"stops": list(stops), "max_new_tokens": max_new_tokens, "temperature": float(temperature),
                    "top_p": float(top_p), "seed": seed if temperature > 0 else None, "batch_size": batch_size}
        key, request = self.key(prompts, settings)
        path = self.root / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
            if entry["request"] == request and len(entry["texts"]) == len(prompts):
                self.hits += 1
                return [str(t) for t in entry["texts"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable (a damaged entry is a miss, rewritten below)
        self.misses += 1
        texts = self.engine.complete(prompts, stops=stops, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_p=top_p, seed=seed, batch_size=batch_size)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"request": request, "texts": texts})
        return texts
