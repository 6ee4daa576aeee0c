"""The organic stage in the pipeline: its shards and provenance, decontamination of every organic source, and the
mixture realised through the pretraining loop's own window order."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import MICRO
from phiforge.eval import benchmarks
from phiforge.data import mixture
from phiforge.data import corpus
from phiforge.config import recipe_from_dict
from phiforge.pipeline import BY_NAME, prepare, run_stage
from phiforge.train.pretrain import PackedTokens, consumed_windows
from test_mixture import SHARES, _docs


def test_stage_writes_sources_with_provenance_and_decontam_checks_them(tmp_path):
    raw = {**MICRO, "organic": {"feeds": {"stdlib_code": 60000, "stdlib_docs": 150000, "pydoc_topics": 80000},
                                "max_labels": 200}, "decontam": {"benchmarks": ["humaneval"]}}
    recipe = recipe_from_dict(raw)
    run = prepare(recipe, tmp_path / "run")
    m = run_stage(recipe, run, BY_NAME["organic"])
    assert {s for s, x in m["sources"].items() if x["docs"]} == {"web", "web_rewrite", "code", "acquired"}
    rw = pq.read_table(corpus.shards(run, "web_rewrite")[0]).to_pylist()[0]
    prov = json.loads(rw["provenance"])
    web_ids = {r["id"] for s in corpus.shards(run, "web") for r in pq.read_table(s, columns=["id"]).to_pylist()}
    assert prov["parent"] in web_ids and rw["id"] == f"rewrite-{prov['parent']}"
    removed = [json.loads(x) for x in (run.stage_dir("organic") / "removed.jsonl").open()]
    assert sum(m["feeds"][f]["pages"] - m["feeds"][f]["kept"] for f in m["feeds"]) == len(removed)

    # a code page carrying a benchmark solution is dropped before the mixture reads it
    he = benchmarks.get("humaneval").load()[42]
    shard = corpus.shards(run, "code")[0]
    table = pq.read_table(shard)
    texts = table.column("text").to_pylist()
    texts[0] = texts[0][:2000] + "\n\n" + he.question + he.solution
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)), shard)
    planted = table.column("id")[0].as_py()
    run.stage_dir("synth").mkdir(exist_ok=True)
    run.write_manifest("synth", {"stage": "synth"}, [])  # decontam needs synth done; it has no shards here
    d = run_stage(recipe, run, BY_NAME["decontam"])
    assert json.loads((run.stage_dir("decontam") / "dropped.json").read_text()) == [planted]
    assert d["sources"]["organic/code"]["flagged"] == 1 and d["sources"]["organic/web"]["flagged"] == 0


def test_training_windows_realise_the_planned_shares_within_one_percent():
    docs = _docs(1)
    unique = {s: int(sum(map(len, d))) for s, d in docs.items()}
    seq_len, batch, steps = 64, 8, 600
    budget = steps * batch * seq_len
    plans = mixture.plan(SHARES, unique, budget)
    tokens, sources = mixture.build_stream(docs, plans, seed=0)
    tokens, sources = np.concatenate([tokens, [0]]), np.concatenate([sources, sources[-1:]])
    data = PackedTokens(tokens, seq_len, seed=7)
    windows = consumed_windows(data.n, steps * batch, seed=7)
    # the windows are the ones the loop's sampler draws
    assert all(np.array_equal(data.sample(p), data.window(int(windows[p]))) for p in range(0, steps * batch, 97))
    got = mixture.realised(sources, windows, seq_len, len(plans))
    for p, g in zip(plans, got):
        assert abs(g / budget - p.share) < 0.01
    # a shorter run reads a random subset of windows: still within 1% of each share
    part = mixture.realised(sources, consumed_windows(data.n, steps * batch // 2, seed=7), seq_len, len(plans))
    assert all(abs(g / part.sum() - p.share) < 0.01 for p, g in zip(plans, part))
