"""The run folder: the only state stages share, written so that a crash never leaves a half-written file.

Every file goes to a temporary name beside its destination and is renamed into place (`os.replace` is atomic on
POSIX), and a stage counts as complete only once its manifest, written last, says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from phiforge.errors import PhiforgeError

MARKER = "phiforge-run.json"
MANIFEST = "manifest.json"
FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path (file or folder) that is renamed to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_files(files: dict[str, str]) -> str:
    """One digest over a {relative path: sha256} map: the identity of a stage's outputs."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


class RunDir:
    """A run folder: `recipe.yaml`, a marker file, and one sub-folder per stage with its manifest."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path | str) -> "RunDir":
        """Open a run folder for writing: new, empty, or one phiforge made; never someone else's folder."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise PhiforgeError(f"run folder {root} exists and is not a folder")
        if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
            raise PhiforgeError(f"{root} is not a phiforge run folder (no {MARKER}); refusing to write into it")
        run = cls(root)
        if not (root / MARKER).is_file():
            atomic_write_json(root / MARKER, {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        run._check_marker()
        return run

    @classmethod
    def open(cls, root: Path | str) -> "RunDir":
        """Open an existing run folder for reading."""
        root = Path(root)
        if not root.exists():
            raise PhiforgeError(f"run folder {root} does not exist (run `phiforge run --out {root}` first)")
        if not (root / MARKER).is_file():
            raise PhiforgeError(f"{root} is not a phiforge run folder (no {MARKER})")
        run = cls(root)
        run._check_marker()
        return run

    def _check_marker(self) -> None:
        try:
            fmt = json.loads((self.root / MARKER).read_text())["format"]
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            raise PhiforgeError(f"{self.root / MARKER} is corrupt; this is not a usable phiforge run folder") from None
        if fmt != FORMAT:
            raise PhiforgeError(f"{self.root} was written by run-folder format {fmt}; this phiforge reads {FORMAT}")

    # -- stages ---------------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / MANIFEST

    def manifest(self, stage: str) -> dict | None:
        """The stage's manifest if the stage completed, else None (a corrupt manifest counts as incomplete)."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        try:
            m = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        return m if isinstance(m, dict) and m.get("status") == "complete" else None

    def require(self, stage: str, by: str) -> dict:
        m = self.manifest(stage)
        if m is None:
            raise PhiforgeError(
                f"stage {by!r} needs stage {stage!r}, which has not completed in {self.root}; "
                f"run `phiforge {stage} --out {self.root}` or `phiforge run --out {self.root}`"
            )
        return m

    def invalidate(self, stage: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path(stage).unlink()

    def output_digest(self, stage: str) -> str:
        m = self.manifest(stage)
        return m["outputs_digest"] if m else ""

    def hash_outputs(self, paths: list[Path]) -> dict[str, str]:
        files: dict[str, str] = {}
        for p in paths:
            items = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
            for q in items:
                if q.name == MANIFEST or q.name.startswith("."):
                    continue
                files[str(q.relative_to(self.root))] = file_sha256(q)
        return files

    def outputs_intact(self, manifest: dict) -> bool:
        """Cheap check that a completed stage's outputs are still on disk with their recorded sizes."""
        for rel, size in manifest.get("output_sizes", {}).items():
            p = self.root / rel
            if not p.is_file() or p.stat().st_size != size:
                return False
        return True

    def write_manifest(self, stage: str, manifest: dict, outputs: list[Path]) -> dict:
        files = self.hash_outputs(outputs)
        manifest = dict(manifest)
        manifest["output_files"] = files
        manifest["output_sizes"] = {rel: (self.root / rel).stat().st_size for rel in files}
        manifest["outputs_digest"] = digest_files(files)
        manifest["status"] = "complete"
        atomic_write_json(self.manifest_path(stage), manifest)
        return manifest
