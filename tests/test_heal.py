"""Runs that heal: damaged outputs, shards and checkpoints are found by their sha256 and redone or passed over; a
full disk, a read-only folder and a forbidden one are one line naming the path; a complete read-only run can still
be read. One micro run is made for the module and copied for each test that damages it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import phiforge, write_recipe
from phiforge.pipeline import STAGES

STAGE_NAMES = [s.name for s in STAGES]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def healthy(micro_run):
    return micro_run[1]


@pytest.fixture
def run_copy(healthy, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(healthy, out)
    return out


def one_line_error(r) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("phiforge: error: ") and r.stderr.count("phiforge: error:") == 1, r.stderr
    return last


def flip_bytes(path: Path, at: int, n: int = 8) -> None:
    """Same size, different bytes: a size check cannot see it."""
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


def skipped(stderr: str) -> set[str]:
    return {s for s in STAGE_NAMES if f"{s}: unchanged, skipped" in stderr}


# ---------------------------------------------------------------------------------------------- damaged outputs


def test_a_truncated_synth_shard_is_remade_not_kept_by_its_marker(healthy, run_copy):
    shard = run_copy / "synth" / "pretrain-00000.parquet"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    r = phiforge("run", "--out", run_copy)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "synth: synth/pretrain-00000.parquet damaged or missing" in r.stderr
    assert shard.read_bytes() == good  # the marker did not vouch for the truncated shard
    # the remade synth outputs are those every later stage read, so nothing after synth reruns
    assert skipped(r.stderr) == set(STAGE_NAMES) - {"synth"}
    again = phiforge("run", "--out", run_copy)
    assert skipped(again.stderr) == set(STAGE_NAMES) and "every stage is current" in again.stderr


def test_same_size_damage_is_found_by_its_sha256(healthy, run_copy):
    vocab = run_copy / "tokenizer" / "tokenizer.json"
    good = vocab.read_bytes()
    flip_bytes(vocab, len(good) // 2)
    assert vocab.stat().st_size == len(good)
    r = phiforge("run", "--out", run_copy)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tokenizer: tokenizer/tokenizer.json damaged or missing" in r.stderr
    assert vocab.read_bytes() == good
    assert skipped(r.stderr) == set(STAGE_NAMES) - {"tokenizer"}


def test_a_stage_alone_names_its_damaged_input_instead_of_a_pyarrow_traceback(run_copy):
    shard = run_copy / "synth" / "sft-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    line = one_line_error(phiforge("decontam", "--out", run_copy, "--force", "decontam"))
    assert "synth/sft-00000.parquet is damaged" in line and f"phiforge run --out {run_copy}" in line


def test_force_removes_shard_markers_and_checkpoints(run_copy):
    assert list((run_copy / "pretrain" / "checkpoints").iterdir())
    r = phiforge("pretrain", "--out", run_copy, "--force", "pretrain")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run_copy / "pretrain" / "manifest.json").read_text())["metrics"]["resumed_from"] is None

    markers = {p: p.stat().st_mtime_ns for p in (run_copy / "synth" / ".done").iterdir()}
    r = phiforge("synth", "--out", run_copy, "--force", "synth")
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(p.stat().st_mtime_ns != t for p, t in markers.items()), "a forced synth remade every shard"
    assert not (run_copy / "pretrain" / "checkpoints").exists()  # forcing synth forces pretraining afresh too


# ---------------------------------------------------------------------------------------------- checkpoints


def losses(run_dir: Path) -> dict:
    h = json.loads((run_dir / "pretrain" / "history.json").read_text())
    return {k: [{f: r[f] for f in ("step", "loss", "lr", "grad_norm") if f in r} for r in v] for k, v in h.items()}


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(healthy, run_copy):
    """Weights with a few bytes flipped load without complaint in safetensors: only their recorded sha256 tells.
    (A damaged optimizer.pt in every checkpoint: tests/test_pipeline.py.)"""
    (run_copy / "pretrain" / "manifest.json").unlink()  # as if killed after the last checkpoint
    newest, before = sorted((run_copy / "pretrain" / "checkpoints").iterdir())[-2:][::-1]
    weights = newest / "model.safetensors"
    flip_bytes(weights, weights.stat().st_size - 64)
    r = phiforge("pretrain", "--out", run_copy)
    assert r.returncode == 0, r.stderr[-3000:]
    warning = next(line for line in r.stderr.splitlines() if "warning:" in line)
    assert newest.name in warning and "model.safetensors is damaged" in warning
    m = json.loads((run_copy / "pretrain" / "manifest.json").read_text())
    assert m["metrics"]["resumed_from"] == before.name
    assert losses(run_copy) == losses(healthy)  # the same result as the uninterrupted run


# ---------------------------------------------------------------------------------------------- disks and folders


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a disk that fills at once (root only)."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_a_full_disk_is_one_line_naming_the_path(tiny_disk, tmp_path):
    recipe = write_recipe(tmp_path / "micro.yaml")
    line = one_line_error(phiforge("synth", recipe, "--out", tiny_disk / "run"))
    assert "no space left on the device" in line and str(tiny_disk / "run") in line


def test_a_checkpoint_on_a_full_disk_names_the_checkpoint_not_an_iostream_error(tiny_disk):
    import torch

    from phiforge.lm.checkpoint import save_training_state
    from phiforge.lm.model import ModelConfig, Phi3
    from phiforge.lm.tokenizer import ChatTokenizer, train_bpe

    cfg = ModelConfig(vocab_size=320, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ffn=64, max_seq_len=64)
    model = Phi3(cfg)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    tok = ChatTokenizer(train_bpe(["one two three four"] * 20, vocab_size=300, progress=False))
    with pytest.raises(OSError) as e:
        save_training_state(tiny_disk / "step-000010", model.state_dict(), opt.state_dict(), cfg, tok, {"step": 10})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tiny_disk / "step-000010")
    assert not list(tiny_disk.iterdir()), "a failed checkpoint leaves nothing behind"


def run_read_only(run: Path, logs: Path, commands: dict[str, str]) -> dict[str, tuple[int, str, str]]:
    """Each shell command with the run folder bind-mounted read-only over itself, in a private mount namespace
    (root only: as root, chmod does not stop writes). Returns name -> (exit code, stdout, stderr)."""
    if not IS_ROOT or shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs root and unshare")
    if subprocess.run(["unshare", "--mount", "true"]).returncode != 0:
        pytest.skip("unshare --mount is not allowed here")
    logs.mkdir()
    script = [f"mount --bind -o ro {run} {run} || exit 99"]
    for name, cmd in commands.items():
        script.append(f"{cmd} > {logs}/{name}.out 2> {logs}/{name}.err; echo $? > {logs}/{name}.rc")
    done = subprocess.run(["unshare", "--mount", "sh", "-c", "\n".join(script)], timeout=600)
    assert done.returncode == 0, "the read-only bind mount failed"
    return {name: (int((logs / f"{name}.rc").read_text()), (logs / f"{name}.out").read_text(),
                   (logs / f"{name}.err").read_text()) for name in commands}


def test_a_complete_run_on_a_read_only_folder_can_still_be_read(run_copy, tmp_path):
    py = f"{sys.executable} -m phiforge.cli"
    got = run_read_only(run_copy, tmp_path / "logs", {
        "rerun": f"{py} run --out {run_copy}",
        "changed": f"{py} run --out {run_copy} --set eval.n_problems=4",
        "report": f"{py} report --out {run_copy} --to {tmp_path / 'elsewhere'}",
        "chat": f"echo 'what is 2+2?' | {py} chat {run_copy} --max-tokens 4 --seed 0",
    })
    rc, _, err = got["rerun"]
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    assert skipped(err) == set(STAGE_NAMES) and "every stage is current" in err
    rc, _, err = got["changed"]
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"phiforge: error: {run_copy / 'recipe.yaml'}: cannot write, the file system is read-only; give --out a "
        "writable folder; a complete run folder can still be read (`phiforge run` finds it current, chat, serve, "
        "`phiforge report --out RUN --to DIR`)")
    rc, out, err = got["report"]
    assert rc == 0, err[-3000:]
    assert (tmp_path / "elsewhere" / "report.md").read_text().startswith("# phiforge run: micro")
    assert (tmp_path / "elsewhere" / "plots" / "pretrain_loss.png").is_file()
    rc, out, err = got["chat"]
    assert rc == 0 and "Traceback" not in err, err[-3000:]


def test_permission_denied_is_one_line_naming_the_path(run_copy):
    if IS_ROOT:
        if shutil.which("setpriv") is None:
            pytest.skip("as root, permissions bind only without CAP_DAC_OVERRIDE: needs setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    else:
        prefix = []
    os.chmod(run_copy / "eval", 0o555)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "phiforge.cli", "eval", "--out", str(run_copy), "--force",
                            "eval"], capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(run_copy / "eval", 0o755)
    line = one_line_error(r)
    assert f"{run_copy / 'eval'}" in line and "permission denied" in line


# ---------------------------------------------------------------------------------------------- smaller defects


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_files_get_the_umasks_mode_not_0600(tmp_path, umask, mode):
    from phiforge.rundir import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "# r\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == mode


def test_set_on_a_single_stage_does_not_change_the_saved_recipe(run_copy):
    saved = (run_copy / "recipe.yaml").read_text()
    r = phiforge("report", "--out", run_copy, "--set", "eval.n_problems=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_copy / "recipe.yaml").read_text() == saved
    assert "recipe.yaml left as it is" in r.stderr


def test_a_stage_alone_does_not_point_at_a_report_that_does_not_exist(tmp_path):
    recipe = write_recipe(tmp_path / "micro.yaml", {"synth.n_pretrain": 30, "synth.n_sft": 10})
    r = phiforge("synth", recipe, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report:" not in r.stderr and "finished in" in r.stderr


def test_help_names_every_stage_the_recipe_rule_and_validates_descriptions():
    from phiforge.cli import build_parser

    parser = build_parser()
    top = " ".join(parser.format_help().split())
    assert "DPO on pivotal tokens (PTS), judge-guided DPO" in top
    sub = parser._subparsers._group_actions[0].choices
    run_help = " ".join(sub["run"].format_help().split())
    assert "a bare name (no '/', no .yaml or .yml suffix) is a recipe shipped with phiforge" in run_help
    validate = " ".join(sub["validate"].format_help().split())
    assert "check every key, type and constraint" in validate and "is a recipe shipped with phiforge" in validate
    assert "--to DIR" in sub["report"].format_help()
