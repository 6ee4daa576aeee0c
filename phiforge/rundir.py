"""The run folder: the only state stages share, written so that a crash never leaves a half-written file.

Every file goes to a temporary name beside its destination and is renamed into place (`os.replace` is atomic on
POSIX), and a stage counts as complete only once its manifest, written last, says so. The manifest records each
output's sha256, and a rerun checks them, so a file damaged after the fact (a truncated copy, a flipped byte) is
found and its stage redone instead of being read.

A write that fails for a reason outside phiforge (a full disk, a read-only or forbidden folder) raises an OSError
naming the destination, not the temporary file, which the CLI turns into one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from phiforge.errors import PhiforgeError

MARKER = "phiforge-run.json"
MANIFEST = "manifest.json"
FORMAT = 1


# Errors that say the file system refused a write, not that phiforge is wrong: errno -> (cause, what to do), reported
# as one line naming the path.
_OWN = "check the owner and permissions of the folder, or give --out a folder you can write"
DISK_ERRNOS = {
    errno.ENOSPC: ("cannot write, no space left on the device",
                   "free some space (or give --out a folder on another disk) and run the same command again; "
                   "completed stages and checkpoints are kept"),
    errno.EDQUOT: ("cannot write, disk quota exceeded", "free some space and run the same command again"),
    errno.EFBIG: ("cannot write, file too large for the file system", "give --out a folder on another disk"),
    errno.EROFS: ("cannot write, the file system is read-only",
                  "give --out a writable folder; a complete run folder can still be read (`phiforge run` finds "
                  "it current, chat, serve, `phiforge report --out RUN --to DIR`)"),
    errno.EACCES: ("permission denied", _OWN),
    errno.EPERM: ("operation not permitted", _OWN),
    errno.EIO: ("input/output error (a failing disk?)", "check the disk and run the same command again"),
}


def disk_error(e: BaseException, path: Path | str | None = None) -> OSError | None:
    """`e` as an OSError naming `path` if it is one of DISK_ERRNOS, else None. Libraries that write from native code
    raise their own types with the errno only in the text (safetensors: `... (os error 28)`, pyarrow:
    `[errno 28] ...`), so the text is read too."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        found = re.search(r"os error (\d+)|\[errno (\d+)\]", str(e), re.IGNORECASE)
        code = int(found.group(1) or found.group(2)) if found else None
    if code not in DISK_ERRNOS:
        return None
    name = path if path is not None else getattr(e, "filename", None)
    return OSError(code, os.strerror(code), None if name is None else str(name))


def describe_disk_error(e: OSError) -> str:
    """One line for a DISK_ERRNOS error: the path, the cause, and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    cause, todo = DISK_ERRNOS.get(e.errno, (e.strerror or str(e), "check the disk and run the same command again"))
    return f"{where}{cause}; {todo}"


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Re-raise a DISK_ERRNOS failure inside the block as an OSError naming `path` (the destination, where the
    error would name a temporary file or nothing)."""
    try:
        yield
    except Exception as e:
        err = disk_error(e, path)
        if err is None:
            raise
        raise err from e


def _umask() -> int:
    """The process's umask, read without setting it where Linux allows (setting it races other threads' creates)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            # mkstemp makes the file 0600; the file it becomes is an ordinary one, readable as the umask allows
            os.fchmod(fd, 0o666 & ~_umask())
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
    with naming(path):
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
            with contextlib.suppress(OSError):  # on a read-only or full disk the cleanup must not hide the cause
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
        # stage -> outputs digest of the manifest whose files this process hashed (or wrote) and found intact, so
        # a stage's outputs are hashed once per command however many later stages read them
        self._intact: dict[str, str] = {}

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

    def damaged_outputs(self, manifest: dict) -> list[str]:
        """The outputs of a completed stage that are missing or whose bytes no longer match the sha256 its manifest
        recorded (sizes first: a changed size needs no hashing)."""
        sizes = manifest.get("output_sizes", {})
        bad = []
        for rel, sha in sorted(manifest.get("output_files", {}).items()):
            p = self.root / rel
            if not p.is_file() or p.stat().st_size != sizes.get(rel, p.stat().st_size) or file_sha256(p) != sha:
                bad.append(rel)
        return bad

    def outputs_intact(self, manifest: dict) -> bool:
        return not self.damaged_outputs(manifest)

    def check_outputs(self, stage: str) -> list[str]:
        """damaged_outputs of a completed stage (none for a stage not complete), hashed once per process."""
        m = self.manifest(stage)
        if m is None or self._intact.get(stage) == m.get("outputs_digest"):
            return []
        bad = self.damaged_outputs(m)
        if not bad:
            self._intact[stage] = m.get("outputs_digest")
        return bad

    def forget_checks(self) -> None:
        self._intact.clear()

    def write_manifest(self, stage: str, manifest: dict, outputs: list[Path]) -> dict:
        files = self.hash_outputs(outputs)
        manifest = dict(manifest)
        manifest["output_files"] = files
        manifest["output_sizes"] = {rel: (self.root / rel).stat().st_size for rel in files}
        manifest["outputs_digest"] = digest_files(files)
        manifest["status"] = "complete"
        atomic_write_json(self.manifest_path(stage), manifest)
        self._intact[stage] = manifest["outputs_digest"]
        return manifest
