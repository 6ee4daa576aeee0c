"""The whole pipeline on a micro recipe: stage skipping, forcing, resuming after kill -9, and user-facing errors."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import phiforge, write_recipe
from phiforge.pipeline import STAGES

STAGE_NAMES = [s.name for s in STAGES]


def finished_times(run_dir):
    return {s: json.loads((run_dir / s / "manifest.json").read_text())["finished"] + str(
        (run_dir / s / "manifest.json").stat().st_mtime_ns) for s in STAGE_NAMES}


@pytest.fixture
def done_run(micro_run):
    return micro_run


def test_run_writes_every_stage_and_a_report(done_run):
    _, out = done_run
    for s in STAGE_NAMES:
        m = json.loads((out / s / "manifest.json").read_text())
        assert m["status"] == "complete" and m["config_hash"] is not None
        assert m["peak_rss_gb"] > 0 and m["peak_rss_scope"] == "stage"  # each stage's own peak memory
    assert "| stage | seconds | peak memory GB | finished |" in (out / "report.md").read_text()
    assert (out / "report.md").read_text().startswith("# phiforge run: micro")
    assert "<table>" in (out / "report.html").read_text()
    for plot in ("pretrain_loss", "midtrain_loss", "midtrain_positions"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert "Midtraining (context extension)" in (out / "report.md").read_text()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["models"]) == {"untrained", "pretrain", "base", "sft", "dpo", "dpo2"}
    assert "base_vs_pretrain" in summary["paired"]
    # the real benchmarks score the listed models, every sample kept, and the report shows them
    assert set(summary["benchmarks"]["models"]) == {"base", "sft"}
    assert summary["benchmarks"]["models"]["sft"]["gsm8k100"]["n_items"] == 3
    assert len((out / "eval" / "bench-sft-gsm8k100.jsonl").read_text().splitlines()) == 3
    report = (out / "report.md").read_text()  # data nobody here wrote first, the in-distribution contest after it
    assert report.index("## Real benchmarks: maths nobody here wrote") \
        < report.index("## Fresh contest (in-distribution)")
    assert (out / "plots" / "benchmarks.png").stat().st_size > 1000
    # each benchmark paired on its items between the scored models, in the summary and the report
    solved = {m: [json.loads(line)["n_correct"] > 0 for line in
                  (out / "eval" / f"bench-{m}-gsm8k100.jsonl").read_text().splitlines()] for m in ("base", "sft")}
    pair = summary["benchmarks"]["paired"]["sft_vs_base"]["gsm8k100"]
    assert pair["wins"] == sum(a and not b for a, b in zip(solved["sft"], solved["base"]))
    assert pair["losses"] == sum(b and not a for a, b in zip(solved["sft"], solved["base"]))
    assert pair["delta"] == pytest.approx((sum(solved["sft"]) - sum(solved["base"])) / 3)
    assert "| sft vs base |" in report
    # SFT starts from the context-extended model, whose RoPE base it keeps
    sft_cfg = json.loads((out / "sft" / "model" / "config.json").read_text())
    assert sft_cfg["rope_theta"] == json.loads((out / "midtrain" / "model" / "config.json").read_text())["rope_theta"]
    record = json.loads((out / "eval" / "sft.jsonl").read_text().splitlines()[0])
    assert {"prompt", "output", "extracted", "correct", "maj_answer"} <= set(record)
    # checkpoints are transformers folders with the training state beside them
    ckpt = sorted((out / "pretrain" / "checkpoints").iterdir())[-1]
    assert {"config.json", "model.safetensors", "tokenizer.json", "optimizer.pt", "rng.pt", "state.json"} <= {
        p.name for p in ckpt.iterdir()}
    assert not list(out.rglob(".*.tmp*")), "no temporary file may survive a run"
    # the organic sources reach pretraining in the planned shares, and the report shows plan and realised tokens
    mix = json.loads((out / "pretrain" / "manifest.json").read_text())["metrics"]["mixture"]
    assert {x["source"] for x in mix} == {"synthetic", "web", "web_rewrite", "code", "acquired"}
    assert all(abs(x["realised_tokens"] - x["planned_tokens"]) <= 0.01 * x["planned_tokens"] for x in mix)
    head = "| source | share | unique tokens | epochs | planned tokens | realised tokens |"
    assert head in (out / "report.md").read_text()


def test_rerun_skips_unchanged_stages_and_force_redoes_downstream(done_run):
    recipe, out = done_run
    before = finished_times(out)
    r = phiforge("run", recipe, "--out", out)
    assert r.returncode == 0
    assert all(f"{s}: unchanged, skipped" in r.stderr for s in STAGE_NAMES)
    assert finished_times(out) == before

    r = phiforge("run", recipe, "--out", out, "--set", "eval.max_new_tokens=20")
    assert r.returncode == 0
    after = finished_times(out)
    changed = {s for s in STAGE_NAMES if after[s] != before[s]}
    assert changed == {"eval", "report"}

    r = phiforge("run", recipe, "--out", out, "--set", "eval.max_new_tokens=20", "--force", "sft")
    assert r.returncode == 0
    forced = finished_times(out)
    assert {s for s in STAGE_NAMES if forced[s] != after[s]} == {"sft", "pts", "dpo", "dpo2", "eval", "report"}


def test_resume_after_kill_9_in_pretraining_matches_an_uninterrupted_run(done_run, tmp_path):
    recipe, reference = done_run
    slow = write_recipe(tmp_path / "micro.yaml", {"pretrain.steps": 40})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "phiforge.cli", "pretrain", str(slow), "--out", str(out)]
    # the first three stages, then a pretraining run killed once its first checkpoint is on disk
    for stage in ("synth", "organic", "decontam", "tokenizer"):
        assert phiforge(stage, slow, "--out", out).returncode == 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "pretrain" / "checkpoints").glob("step-*")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "pretrain" / "manifest.json").exists(), "killed too late: the stage had already finished"

    r = phiforge("run", slow, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "pretrain" / "manifest.json").read_text())
    assert m["metrics"]["resumed_from"].startswith("step-")
    assert "synth: unchanged, skipped" in r.stderr and "tokenizer: unchanged, skipped" in r.stderr
    # same data order, optimiser state and RNG: the same losses, bit for bit
    assert losses(out) == losses(reference)


def losses(run_dir):
    """The loss trajectory without the timing fields, which differ from run to run."""
    h = json.loads((run_dir / "pretrain" / "history.json").read_text())
    return {k: [{f: r[f] for f in ("step", "loss", "lr", "grad_norm") if f in r} for r in v] for k, v in h.items()}


def one_line_error(r):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("phiforge: error: ") and r.stderr.count("phiforge: error:") == 1, r.stderr
    return last


def test_wrong_recipe_key_is_one_line(micro_recipe):
    line = one_line_error(phiforge("run", micro_recipe, "--set", "pretrain.stepz=3", "--out", "x"))
    assert "'pretrain.stepz'" in line


def test_missing_and_foreign_run_folders_are_one_line(tmp_path, micro_recipe):
    line = one_line_error(phiforge("eval", micro_recipe, "--out", tmp_path / "nowhere"))
    assert "does not exist" in line
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    line = one_line_error(phiforge("run", micro_recipe, "--out", foreign))
    assert "not a phiforge run folder" in line
    assert (foreign / "cat.jpg").read_bytes() == b"\xff\xd8" and len(list(foreign.iterdir())) == 1


def test_corrupt_models_are_one_line_and_corrupt_checkpoints_are_passed_over(done_run, tmp_path):
    import shutil

    recipe, reference = done_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for stage, reader in (("midtrain", "sft"), ("pretrain", "midtrain")):  # each stage reads the one before
        weights = out / stage / "model" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        line = one_line_error(phiforge(reader, recipe, "--out", out, "--force", reader))
        assert f"{stage}/model/model.safetensors" in line

    # damaged resume checkpoints are named, not skipped silently; with none intact, training starts afresh
    (out / "pretrain" / "manifest.json").unlink()
    ckpts = sorted((out / "pretrain" / "checkpoints").iterdir())
    for ckpt in ckpts:
        (ckpt / "optimizer.pt").write_bytes(b"not a pickle")
    r = phiforge("pretrain", recipe, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("[phiforge] warning: ")]
    assert len(warnings) == len(ckpts)
    assert all(c.name in w and "optimizer.pt" in w for c, w in zip(ckpts[::-1], warnings))
    assert json.loads((out / "pretrain" / "manifest.json").read_text())["metrics"]["resumed_from"] is None
    assert losses(out) == losses(reference)


def test_a_transformers_start_skips_the_stages_only_phiforge_models_need(tmp_path):
    """With sft.init the run post-trains a transformers folder: the tokenizer, pretraining and midtraining would
    make a model nothing reads, so `phiforge run` leaves them out; without it every stage runs."""
    from phiforge.config import recipe_from_dict
    from phiforge.pipeline import needed

    assert needed(recipe_from_dict({})) == {s.name for s in STAGES}
    (tmp_path / "config.json").write_text("{}")
    left_out = {s.name for s in STAGES} - needed(recipe_from_dict({"sft": {"init": str(tmp_path)}}))
    assert left_out == {"tokenizer", "pretrain", "midtrain"}


def test_a_stage_reads_only_the_stages_it_declares_and_only_once_they_completed(tmp_path):
    from phiforge import stages
    from phiforge.errors import PhiforgeError
    from phiforge.rundir import RunDir

    run = RunDir.create(tmp_path / "run")
    with pytest.raises(PhiforgeError, match="stage 'sft' reads 'pts', which is not among its inputs"):
        stages.input_path(run, "pts", "sft", "pairs.jsonl")
    with pytest.raises(PhiforgeError, match="stage 'dpo' needs stage 'pts', which has not completed"):
        stages.input_path(run, "pts", "dpo", "pairs.jsonl")
    for stage in stages.STAGES:  # every declared input is a stage that runs earlier
        names = [s.name for s in stages.STAGES]
        assert all(names.index(i) < names.index(stage.name) for i in stage.inputs), stage.name


def test_the_report_tables_deepmind_maths_by_module_from_the_eval_records(tmp_path):
    from phiforge.report import per_module_blocks
    from phiforge.rundir import RunDir

    run = RunDir.create(tmp_path / "run")
    records = [("algebra__linear_1d", 1, "Solve 3*x = 12 for x.", "4"),
               ("algebra__linear_1d", 0, "Solve 7*y = 0.35 for y.", "0.05"),
               ("numbers__gcd", 0, "gcd of 12345678901234 and 6?", "2"),
               ("numbers__is_prime", 1, "Is 7 prime?", "True")]
    (run.stage_dir("eval")).mkdir(parents=True)
    (run.stage_dir("eval") / "bench-sft-deepmind-math.jsonl").write_text("".join(
        json.dumps({"id": f"mathds-{m}-{i}", "n_correct": c, "question": q, "answers": [a]}) + "\n"
        for i, (m, c, q, a) in enumerate(records)))
    run.write_manifest("eval", {}, [run.stage_dir("eval")])
    (_, text), (_, head, rows), (_, _), (_, length_head, length_rows) = per_module_blocks(run, ["sft"])
    assert head == ["module", "sft"] and rows == [["algebra__linear_1d", "1/2"], ["numbers__gcd", "0/1"],
                                                  ["numbers__is_prime", "1/1"]]
    assert "1 of numbers__is_prime's items are yes/no questions" in text
    # by the longest number's digits (0.35 has 3): a 14-digit number is past the 12 the curriculum writes
    assert length_head == ["digits", "sft"] and length_rows == [["1-3", "2/3"], ["13+", "0/1"]]
