"""torchrun with the gloo backend, world size 2 on CPU: DDP and FSDP2 follow the single-process loss trajectory of
the same global batch, and a distributed run killed mid-way resumes from its checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import phiforge, write_recipe

# fp32 so that the only difference between the runs is the order of the gradient all-reduce.
TOL = 1e-4


def torchrun(*args, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "phiforge.cli", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


def kill_tree(pid):
    """SIGKILL a process and all its descendants (torchrun puts its workers in sessions of their own)."""
    children = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat))
    todo, victims = [pid], []
    while todo:
        victims.append(todo.pop())
        todo += children.get(victims[-1], [])
    for v in victims:
        try:
            os.kill(v, signal.SIGKILL)
        except ProcessLookupError:
            pass


def trajectory(run_dir):
    h = json.loads((run_dir / "pretrain" / "history.json").read_text())
    return [r["loss"] for r in h["train"]], [r["loss"] for r in h["val"]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    common = {"pretrain.dtype": "fp32", "pretrain.steps": 20, "pretrain.ckpt_every": 5, "pretrain.log_every": 1,
              "pretrain.val_every": 5}
    single = write_recipe(tmp / "single.yaml", {**common, "pretrain.grad_accum": 2})
    dist = write_recipe(tmp / "dist.yaml", common)
    base = tmp / "base"
    for stage in ("synth", "organic", "decontam", "tokenizer"):
        assert phiforge(stage, single, "--out", base).returncode == 0
    ref = tmp / "ref"
    shutil.copytree(base, ref)
    r = phiforge("pretrain", single, "--out", ref)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp, base, dist, ref


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_the_same_global_batch(prepared, mode):
    tmp, base, dist, ref = prepared
    out = tmp / mode
    shutil.copytree(base, out)
    p = torchrun("pretrain", dist, "--out", out, "--set", f"pretrain.parallel={mode}")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    m = json.loads((out / "pretrain" / "manifest.json").read_text())["metrics"]
    assert m["world_size"] == 2 and m["parallel"] == mode
    train, val = trajectory(out)
    ref_train, ref_val = trajectory(ref)
    assert train == pytest.approx(ref_train, rel=TOL) and val == pytest.approx(ref_val, rel=TOL)
    assert train[-1] < 0.9 * train[0]
    # the gathered model is a plain HF folder
    assert (out / "pretrain" / "model" / "model.safetensors").is_file()


def test_distributed_run_resumes_after_kill(prepared):
    tmp, base, dist, ref = prepared
    out = tmp / "killed"
    shutil.copytree(base, out)
    p = torchrun("pretrain", dist, "--out", out)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "pretrain" / "checkpoints").glob("step-*")):
        time.sleep(0.01)
    kill_tree(p.pid)  # torchrun and both ranks, as a node failure would
    p.communicate()
    assert not (out / "pretrain" / "manifest.json").exists(), "killed too late"
    p = torchrun("pretrain", dist, "--out", out)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    m = json.loads((out / "pretrain" / "manifest.json").read_text())["metrics"]
    assert m["resumed_from"].startswith("step-")
    train, val = trajectory(out)
    ref_train, ref_val = trajectory(ref)
    assert train == pytest.approx(ref_train, rel=TOL) and val == pytest.approx(ref_val, rel=TOL)
