"""Two run folders side by side: which stage's outputs first differ, and what differed in recipe, inputs or machine.

A stage whose recipe slice and inputs are equal in both runs but whose outputs differ was made differently by the
machine (kernels, thread count, library versions), which the manifests' `machine` entries show; every stage after
it then differs through its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from phiforge.rundir import RunDir
from phiforge.stages import STAGES

# Outputs that log wall-clock figures (seconds, tokens/s, MFU) beside the losses: two runs that trained the same
# model still write different bytes there, so a difference confined to them is not a divergence.
LOGS = ("history.json",)


@dataclass(frozen=True)
class StageDiff:
    stage: str
    state: str  # same | differs | missing
    why: str = ""  # for differs: recipe, inputs, or machine (same recipe and inputs); for same: logs that differ
    files: tuple[str, ...] = ()  # output files whose bytes differ (or exist in one run only)
    machine: tuple[str, ...] = ()  # machine facts that differ, "key: a | b"


def _machine_diff(a: dict, b: dict) -> tuple[str, ...]:
    keys = sorted(set(a) | set(b))
    return tuple(f"{k}: {a.get(k)} | {b.get(k)}" for k in keys if a.get(k) != b.get(k))


def compare(a: RunDir, b: RunDir) -> list[StageDiff]:
    out = []
    for stage in STAGES:
        ma, mb = a.manifest(stage.name), b.manifest(stage.name)
        if ma is None or mb is None:
            out.append(StageDiff(stage.name, "missing", "in " + " and ".join(
                str(r.root) for r, m in ((a, ma), (b, mb)) if m is None)))
            continue
        if ma["outputs_digest"] == mb["outputs_digest"]:
            out.append(StageDiff(stage.name, "same"))
            continue
        fa, fb = ma.get("output_files", {}), mb.get("output_files", {})
        files = tuple(sorted(f for f in set(fa) | set(fb) if fa.get(f) != fb.get(f)))
        if all(f.rsplit("/", 1)[-1] in LOGS for f in files):
            out.append(StageDiff(stage.name, "same", "only " + ", ".join(files) + " (wall-clock figures)", files))
            continue
        if ma.get("config_hash") != mb.get("config_hash"):
            why = "recipe"
        elif ma.get("input_hashes") != mb.get("input_hashes"):
            why = "inputs"
        else:
            why = "machine"
        out.append(StageDiff(stage.name, "differs", why, files,
                             _machine_diff(ma.get("machine", {}), mb.get("machine", {}))))
    return out


def first_divergence(diffs: list[StageDiff]) -> StageDiff | None:
    return next((d for d in diffs if d.state == "differs"), None)


def format_table(diffs: list[StageDiff], max_files: int = 3) -> str:
    lines = [f"{'stage':<10} {'outputs':<8} why"]
    for d in diffs:
        why = {"same": d.why, "missing": d.why}.get(d.state, f"{d.why}; {len(d.files)} file(s) differ: "
                                                + ", ".join(d.files[:max_files]) + (" ..." if len(d.files) > max_files else ""))
        lines.append(f"{d.stage:<10} {d.state:<8} {why}".rstrip())
    first = first_divergence(diffs)
    if first is None:
        lines.append("every completed stage made the same bytes in both runs")
    else:
        lines.append(f"first divergence: {first.stage} ({first.why})")
        lines += [f"  machine {m}" for m in first.machine]
    return "\n".join(lines)
