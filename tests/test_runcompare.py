"""phiforge.runcompare: the first stage whose outputs differ between two runs, and whether recipe, inputs or the
machine made the difference."""

from __future__ import annotations

from phiforge import machine, runcompare
from phiforge.pipeline import STAGES
from phiforge.rundir import RunDir


def fake_run(root, outputs: dict[str, str], machines: dict[str, dict] = {}, configs: dict[str, str] = {}):
    """A completed run whose stage `s` wrote one file with digest outputs.get(s, "same")."""
    run = RunDir.create(root)
    prev = ""
    for stage in STAGES:
        digest = outputs.get(stage.name, "same")
        (run.stage_dir(stage.name)).mkdir(parents=True, exist_ok=True)
        path = run.stage_dir(stage.name) / "out.bin"
        path.write_text(digest)
        run.write_manifest(stage.name, {"config_hash": configs.get(stage.name, "c"), "input_hashes": {"prev": prev},
                                        "machine": machines.get(stage.name, {"cpu": "X"})}, [path])
        prev = run.output_digest(stage.name)
    return run


def test_identical_runs_have_no_divergence(tmp_path):
    diffs = runcompare.compare(fake_run(tmp_path / "a", {}), fake_run(tmp_path / "b", {}))
    assert {d.state for d in diffs} == {"same"} and runcompare.first_divergence(diffs) is None
    assert "every completed stage made the same bytes" in runcompare.format_table(diffs)


def test_machine_made_divergence_is_told_from_what_follows_it(tmp_path):
    a = fake_run(tmp_path / "a", {}, {"pretrain": {"cpu": "AMD EPYC", "aten_capability": "AVX512"}})
    b = fake_run(tmp_path / "b", {"pretrain": "other bits"},
                 {"pretrain": {"cpu": "Intel Xeon", "aten_capability": "AVX512"}})
    diffs = {d.stage: d for d in runcompare.compare(a, b)}
    assert [s.name for s in STAGES if diffs[s.name].state == "differs"] == ["pretrain"]
    first = runcompare.first_divergence(list(diffs.values()))
    assert (first.stage, first.why, first.files) == ("pretrain", "machine", ("pretrain/out.bin",))
    assert first.machine == ("cpu: AMD EPYC | Intel Xeon",)
    assert diffs["midtrain"].state == "same"  # same bytes written, though its input digest differs
    table = runcompare.format_table(list(diffs.values()))
    assert "first divergence: pretrain (machine)" in table and "machine cpu: AMD EPYC | Intel Xeon" in table


def test_recipe_and_input_differences_are_named(tmp_path):
    a = fake_run(tmp_path / "a", {})
    b = fake_run(tmp_path / "b", {"synth": "x", "organic": "y"}, configs={"synth": "other"})
    diffs = {d.stage: d for d in runcompare.compare(a, b)}
    assert (diffs["synth"].why, diffs["organic"].why) == ("recipe", "inputs")
    assert diffs["decontam"].state == "same"


def test_an_incomplete_stage_is_missing(tmp_path):
    a, b = fake_run(tmp_path / "a", {}), fake_run(tmp_path / "b", {})
    b.invalidate("eval")
    diffs = {d.stage: d for d in runcompare.compare(a, b)}
    assert diffs["eval"].state == "missing" and str(b.root) in diffs["eval"].why


def test_machine_description_names_the_kernel_choices():
    info = machine.describe()
    assert info["cpu"] and info["threads"] >= 1 and info["aten_capability"] and info["torch"]
    assert set(info["cpu_flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_cli_compare_prints_the_first_divergence(tmp_path, capsys):
    from phiforge.cli import main

    a = fake_run(tmp_path / "a", {})
    b = fake_run(tmp_path / "b", {"sft": "z"})
    assert main(["compare", str(a.root), str(b.root)]) == 0
    out = capsys.readouterr().out
    assert "first divergence: sft (machine)" in out and "sft/out.bin" in out
    assert main(["compare", str(a.root), str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_stage_manifest_records_the_machine(tmp_path):
    from conftest import MICRO
    from phiforge.config import recipe_from_dict
    from phiforge.pipeline import BY_NAME, prepare, run_stage

    recipe = recipe_from_dict(MICRO)
    run = prepare(recipe, tmp_path / "run")
    run_stage(recipe, run, BY_NAME["synth"])
    assert run.manifest("synth")["machine"] == machine.describe()


def test_a_difference_only_in_logged_timings_is_not_a_divergence(tmp_path):
    a, b = fake_run(tmp_path / "a", {}), fake_run(tmp_path / "b", {})
    for run, seconds in ((a, 1.0), (b, 2.0)):  # the same model, trained at another speed
        (run.stage_dir("pretrain") / "history.json").write_text(f'{{"train": [], "seconds": {seconds}}}')
        m = run.manifest("pretrain")
        run.write_manifest("pretrain", m, [run.stage_dir("pretrain") / "out.bin",
                                           run.stage_dir("pretrain") / "history.json"])
    diffs = {d.stage: d for d in runcompare.compare(a, b)}
    assert diffs["pretrain"].state == "same" and "pretrain/history.json" in diffs["pretrain"].why
    assert runcompare.first_divergence(list(diffs.values())) is None


def test_peak_memory_restarts_per_stage():
    """A stage's recorded peak is its own: after a reset, memory a previous stage held does not count."""
    from phiforge import machine

    big = bytearray(300_000_000)
    big[::4096] = b"\1" * len(big[::4096])  # touch every page, so it is resident
    before = machine.peak_rss_gb()
    del big
    assert machine.reset_peak_rss()
    assert machine.peak_rss_gb() < before - 0.25
