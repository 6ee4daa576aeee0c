"""Where phiforge keeps what it sets up once per machine and never commits: benchmark data read from registry
wheels, the DeepMind generator's environment and sets, the Gemma reference model.

`data/` beside the package (git-ignored) unless PHIFORGE_DATA names another folder, e.g. for an install that is not
editable, whose package folder should not be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

ROOT = Path(os.environ.get("PHIFORGE_DATA") or Path(__file__).resolve().parents[1] / "data")


@contextlib.contextmanager
def lock(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock while setting `name` up, so two processes (two DDP ranks, two test workers) that
    need it at once make it once; the second finds it made."""
    folder = Path(root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
