"""The synth stage's programmatic shards as resumable units: any split of the work writes the same bytes."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import MICRO
from phiforge.data import corpus, synth
from phiforge import cli
from phiforge.config import recipe_from_dict, save_recipe
from phiforge.errors import PhiforgeError
from phiforge.rundir import RunDir

SMALL = {**MICRO["synth"], "n_pretrain": 60, "n_sft": 30, "n_pts": 6, "shard_size": 20,
         "domains": {"arithmetic": 1.0, "fractions": 1.0, "linear_equations": 1.0}}


def recipe(**synth_overrides):
    return recipe_from_dict({**MICRO, "synth": {**SMALL, **synth_overrides}})


def digests(run: RunDir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in synth.outputs(run)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = RunDir.create(tmp_path_factory.mktemp("ref") / "run")
    metrics = synth.execute(recipe(), run)
    return run, metrics


def test_the_shard_plan_covers_every_index_once(reference):
    tasks = synth.shard_tasks(recipe().synth)
    assert [(t[0], t[2], t[3]) for t in tasks[:4]] == [("pretrain", 0, 20), ("pretrain", 20, 40),
                                                        ("pretrain", 40, 60), ("sft", 60, 80)]
    indices = [i for _, _, a, b in tasks for i in range(a, b)]
    assert indices == list(range(60 + 30 + 6))
    run, metrics = reference
    assert len(corpus.shards(run, "pretrain")) == 3 and metrics["samples"] == 96


def test_a_resumed_run_makes_only_missing_or_stale_shards_and_writes_the_same_bytes(reference, tmp_path):
    ref, metrics = reference
    run = RunDir.create(tmp_path / "run")
    cfg = recipe().synth
    synth.execute(recipe(), run)
    out = run.stage_dir("synth")
    (out / "pretrain-00001.parquet").unlink()  # as if killed before this shard
    (out / ".done" / "sft-00000.parquet.json").unlink()  # killed between the shard and its marker
    marker = out / ".done" / "pts-00000.parquet.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "key": "another config"}))
    assert synth.run_rank(recipe(), run, 0, 1) == 3
    assert synth.run_rank(recipe(), run, 0, 1) == 0
    again = synth.execute(recipe(), run)
    assert digests(run) == digests(ref) and again == metrics
    assert synth.finished(cfg, out, synth.shard_tasks(cfg)[0])["kept"] == 20


def test_ranks_split_the_shards_and_the_stage_merges_them(reference, tmp_path):
    ref, metrics = reference
    run = RunDir.create(tmp_path / "run")
    made = [synth.run_rank(recipe(), run, rank, 3) for rank in range(3)]
    assert sum(made) == len(synth.shard_tasks(recipe().synth)) and min(made) >= 1
    assert not (run.stage_dir("synth") / "rejects.jsonl").exists()  # only the merge writes it
    assert synth.execute(recipe(), run) == metrics and digests(run) == digests(ref)
    with pytest.raises(PhiforgeError, match="rank must be in"):
        synth.run_rank(recipe(), run, 3, 3)


def test_cli_synth_rank_makes_one_workers_share(reference, tmp_path, capsys):
    ref, _ = reference
    path = tmp_path / "r.yaml"
    path.write_text(save_recipe(recipe()))
    out = tmp_path / "run"
    assert [cli.main(["synth", str(path), "--out", str(out), "--rank", str(r), "--world-size", "2"]) for r in (0, 1)] \
        == [0, 0]
    assert "synth rank 1/2:" in capsys.readouterr().out
    made = sorted(p.name for p in (out / "synth").glob("*.parquet"))
    assert made == sorted(p.name for p in ref.stage_dir("synth").glob("*.parquet"))
    assert cli.main(["synth", str(path), "--out", str(out), "--rank", "2", "--world-size", "2"]) == 2
    assert "--rank R and --world-size W go together" in capsys.readouterr().err


def test_parallel_workers_write_the_same_bytes(reference, tmp_path):
    ref, metrics = reference
    run = RunDir.create(tmp_path / "run")
    assert synth.execute(recipe(workers=2), run) == metrics
    assert digests(run) == digests(ref)


def test_shards_of_a_larger_earlier_config_are_removed(reference, tmp_path):
    run = RunDir.create(tmp_path / "run")
    synth.execute(recipe(n_pretrain=80), run)
    assert len(corpus.shards(run, "pretrain")) == 4
    synth.execute(recipe(), run)
    assert len(corpus.shards(run, "pretrain")) == 3 and digests(run) == digests(reference[0])
