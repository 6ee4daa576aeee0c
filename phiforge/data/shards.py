"""The synth stage's Parquet shards: their schemas, an atomic write, and the done-marker beside each shard that
lets a rerun (or another worker) keep what is complete and redo what is not. Programmatic and LLM shards alike."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phiforge.rundir import atomic_path, atomic_write_json, file_sha256

_COMMON = [
    ("id", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("source", pa.string()),
    ("domain", pa.string()),
    ("style", pa.string()),
    ("teacher", pa.string()),
    ("seed", pa.int64()),
    ("verified", pa.bool_()),
    ("verifier", pa.string()),
    ("provenance", pa.string()),
]
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PRETRAIN_SCHEMA = pa.schema([("text", pa.string()), *_COMMON])
SFT_SCHEMA = pa.schema([("messages", pa.list_(MESSAGE)), *_COMMON])


def write_shard(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_marker(out: Path, name: str, key: str) -> dict | None:
    """The summary in shard `name`'s marker if the shard is there, was made under `key` and still has the bytes the
    marker recorded, else None. Programmatic and LLM shards alike: the marker is written after the shard, so a
    marker means a complete shard, and its sha256 means a truncated or altered shard is made again, not kept."""
    try:
        summary = json.loads((out / ".done" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("key") != key or not (out / name).is_file():
        return None
    return summary if summary.get("sha256") == file_sha256(out / name) else None


def write_marker(out: Path, name: str, summary: dict) -> None:
    """Mark shard `name` (already written) done, with the sha256 of its bytes."""
    (out / ".done").mkdir(exist_ok=True)
    atomic_write_json(out / ".done" / f"{name}.json", {**summary, "sha256": file_sha256(out / name)})
