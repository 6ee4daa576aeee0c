"""The corpus reader: how every later stage reads the documents the data stages wrote. Decontamination's drop list
is applied here and nowhere else, and the train/validation split of a document is decided here from its id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from phiforge.rundir import RunDir

SYNTH_KINDS = ("pretrain", "sft", "pts")  # the synth stage's shards: documents, conversations, PTS/DPO questions
ORGANIC_SOURCES = ("web", "web_rewrite", "code", "acquired")  # the organic stage's shards, one kind per source


def shards(run: RunDir, kind: str) -> list[Path]:
    """A kind's Parquet shards in corpus order: a synth kind, or an organic source."""
    if kind in ORGANIC_SOURCES:
        return sorted(run.stage_dir("organic").glob(f"{kind}-*.parquet"))
    if kind in SYNTH_KINDS:
        return sorted(run.stage_dir("synth").glob(f"{kind}-*.parquet"))
    raise ValueError(f"unknown corpus kind {kind!r} (synth: {SYNTH_KINDS}; organic: {ORGANIC_SOURCES})")


def dropped(run: RunDir) -> frozenset[str]:
    """Sample ids the `decontam` stage removed from training (empty before it has run)."""
    path = run.stage_dir("decontam") / "dropped.json"
    return frozenset(json.loads(path.read_text())) if path.is_file() else frozenset()


def read_rows(shard: Path, columns: Sequence[str], drop: frozenset[str] = frozenset()) -> list[dict]:
    """A shard's rows (the columns asked for; `id` among them) without those whose id is in `drop`."""
    rows = pq.read_table(shard, columns=list(columns)).to_pylist()
    return [r for r in rows if r["id"] not in drop] if drop else rows


def read_column(run: RunDir, kind: str, column: str, *, include_dropped: bool = False) -> list:
    """One column across a kind's shards, without the samples decontamination dropped unless asked for them."""
    drop = frozenset() if include_dropped else dropped(run)
    columns = [column] if not drop or column == "id" else [column, "id"]
    return [r[column] for shard in shards(run, kind) for r in read_rows(shard, columns, drop)]


def stable_fraction(key: str) -> float:
    """A document id's fixed place in [0, 1): below val_fraction it is validation, in every stage that splits."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
