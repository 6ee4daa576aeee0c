"""Stage `organic`: the real-text side of Phi-4's mixture (Table 5), from pages to Parquet shards per source.

    ingest (feeds, local folders) -> clean + drop corrupt text -> exact + near dedup across sources
    -> educational-value labels from a teacher -> a hashed n-gram classifier -> keep the top web pages
    -> rewrite the best of them into textbook passages -> organic/<source>-*.parquet

Sources are Table 5's: `web` (filtered pages), `web_rewrite`, `code` and `acquired` (book-like text). Every row
carries its provenance (feed, URI, parent page for rewrites, classifier score); every page left out is listed in
`organic/removed.jsonl` with the reason, so a filter's decisions can be read, not only counted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from phiforge.config import OrganicConfig, Recipe
from phiforge.data import dedup, eduscore, ingest, rewrite, textfilter
from phiforge.data.corpus import ORGANIC_SOURCES as SOURCES
from phiforge.data.corpus import stable_fraction
from phiforge.lm import teachers
from phiforge.rundir import RunDir, atomic_path, atomic_write_text

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("domain", pa.string()),
                    ("style", pa.string()), ("teacher", pa.string()), ("seed", pa.int64()), ("verified", pa.bool_()),
                    ("verifier", pa.string()), ("provenance", pa.string())])


def labeller(cfg: OrganicConfig, cache: Path):
    """The labeller's and rewriter's teacher: an LLM (server or checkpoint) when configured, else None (heuristic
    rater, and the deterministic restructuring for rewrites)."""
    if cfg.teacher.kind == "programmatic":
        return None
    return teachers.make_teacher(cfg.teacher, "organic.teacher", cache_dir=cache)


def collect(cfg: OrganicConfig) -> list[ingest.Page]:
    feeds = [ingest.FEEDS[name](cap) for name, cap in cfg.feeds.items()]
    feeds += [ingest.local_folder(loc.path, loc.source, loc.text_field, loc.max_bytes) for loc in cfg.local]
    pages = []
    with tqdm(desc="organic: ingest", unit="page", dynamic_ncols=True) as bar:
        for feed in feeds:
            for p in feed:
                pages.append(p)
                bar.update(1)
    return pages


def clean(pages: list[ingest.Page], cfg: OrganicConfig) -> tuple[list[ingest.Page], list[dict]]:
    """Pages that pass the corrupt-text tests (boilerplate lines removed), and one record per page that did not."""
    kept, removed = [], []
    for p in tqdm(pages, desc="organic: filter", unit="page", dynamic_ncols=True):
        reason, text = textfilter.check(p.text, "code" if p.source == "code" else "prose")
        if reason:
            removed.append({"id": p.id, "feed": p.feed, "uri": p.uri, "reason": reason})
        else:
            kept.append(ingest.Page(p.id, text, p.source, p.feed, p.uri))
    by_feed = defaultdict(list)
    for i, p in enumerate(kept):
        by_feed[p.feed].append(i)
    out = set()
    for idx in by_feed.values():
        flags = textfilter.compression_outliers([kept[i].text for i in idx], cfg.compression_z)
        out.update(i for i, f in zip(idx, flags) if f)
    removed += [{"id": kept[i].id, "feed": kept[i].feed, "uri": kept[i].uri, "reason": "compression_outlier"}
                for i in sorted(out)]
    return [p for i, p in enumerate(kept) if i not in out], removed


def classify(pages: list[ingest.Page], cfg: OrganicConfig, teacher) -> tuple[np.ndarray, dict]:
    """Every prose page's educational-value probability, and the classifier's held-out report. The labelled sample
    and its train/held-out split are fixed by hashes of the page ids."""
    prose = [p for p in pages if p.source != "code"]
    order = sorted(prose, key=lambda p: stable_fraction(f"label:{cfg.seed}:{p.id}"))[: cfg.max_labels]
    rater = teacher or eduscore.HeuristicRater()
    scores, labels = eduscore.label(rater, [p.text for p in order], cfg.edu_threshold)
    rows = [(p, y) for p, y in zip(order, labels) if y is not None]
    held = [(p, y) for p, y in rows if stable_fraction(f"held:{cfg.seed}:{p.id}") < cfg.held_out]
    train = [(p, y) for p, y in rows if stable_fraction(f"held:{cfg.seed}:{p.id}") >= cfg.held_out]
    clf = eduscore.EduClassifier.fit([p.text for p, _ in train], [y for _, y in train])
    report = {"teacher": rater.name, "labelled": len(order), "unparsed": len(order) - len(rows),
              "train": len(train), "held_out": len(held),
              "positive_rate": round(float(np.mean([y for _, y in rows])), 4),
              "score_histogram": {str(k): v for k, v in sorted(Counter(s for s in scores if s is not None).items())},
              **(eduscore.evaluate(clf, [p.text for p, _ in held], [y for _, y in held]) if held else {})}
    prob = np.zeros(len(pages))
    ix = [i for i, p in enumerate(pages) if p.source != "code"]
    if ix:
        prob[ix] = clf.predict_proba([pages[i].text for i in ix])
    return prob, report


def row(pid: str, text: str, source: str, feed: str, style: str, teacher: str, seed: int, prov: dict,
        verifier: dict) -> dict:
    return {"id": pid, "text": text, "source": source, "domain": feed, "style": style, "teacher": teacher,
            "seed": seed, "verified": True, "verifier": json.dumps(verifier), "provenance": json.dumps(prov)}


def execute(recipe: Recipe, run: RunDir) -> dict:
    cfg = recipe.organic
    out = run.stage_dir("organic")
    for old in out.glob("*.parquet"):
        old.unlink()  # a rerun with fewer shards must not leave stale ones behind
    teacher = labeller(cfg, out / "teacher-cache")
    pages = collect(cfg)
    ingested = Counter(p.feed for p in pages)
    ingested_bytes = Counter()
    for p in pages:
        ingested_bytes[p.feed] += len(p.text.encode("utf-8"))
    good, removed = clean(pages, cfg)
    # Preference inside a duplicate group: acquired and code before web, then the feed order of the recipe.
    rank = {"acquired": 0, "code": 1, "web": 2}
    good.sort(key=lambda p: (rank[p.source], p.feed, p.id))
    d = dedup.deduplicate([p.text for p in good], cfg.dedup_threshold, cfg.num_perm, cfg.seed)
    for p, keep, of in zip(good, d.keep, d.duplicate_of):
        if not keep:
            kind = "exact_duplicate" if dedup.exact_key(p.text) == dedup.exact_key(good[of].text) else "near_duplicate"
            removed.append({"id": p.id, "feed": p.feed, "uri": p.uri, "reason": kind, "duplicate_of": good[of].id})
    unique = [p for p, k in zip(good, d.keep) if k]
    prob, clf_report = classify(unique, cfg, teacher)

    web = sorted((i for i, p in enumerate(unique) if p.source == "web"), key=lambda i: (-prob[i], unique[i].id))
    n_keep = round(cfg.web_keep * len(web))
    kept_web, low = web[:n_keep], web[n_keep:]
    removed += [{"id": unique[i].id, "feed": unique[i].feed, "uri": unique[i].uri, "reason": "low_educational_value",
                 "edu_prob": round(float(prob[i]), 4)} for i in low]
    best = kept_web[: round(cfg.rewrite_share * len(kept_web))]
    rewrites = rewrite.rewrite([(unique[i].id, unique[i].uri, unique[i].text) for i in best], teacher)

    rows: dict[str, list[dict]] = {s: [] for s in SOURCES}
    label_teacher = teacher.name if teacher else eduscore.HeuristicRater.name
    keep_ix = set(kept_web) | {i for i, p in enumerate(unique) if p.source != "web"}
    for i, p in enumerate(unique):
        if i in keep_ix:
            prov = {"workflow": ["ingest", "clean", "dedup", "edu-score"], "feed": p.feed, "uri": p.uri}
            ver = {"name": "organic-filters", "edu_prob": round(float(prob[i]), 4) if p.source != "code" else None,
                   "labeller": label_teacher}
            rows[p.source].append(row(p.id, p.text, p.source, p.feed, "code" if p.source == "code" else "page",
                                      "none", cfg.seed, prov, ver))
    parents = {unique[i].id: unique[i] for i in best}
    for r in rewrites:
        parent = parents[r["parent"]]
        prov = {"workflow": ["ingest", "clean", "dedup", "edu-score", f"rewrite:{r['method']}"],
                "parent": r["parent"], "feed": parent.feed, "uri": r["uri"]}
        rows["web_rewrite"].append(row(f"rewrite-{r['parent']}", r["text"], "web_rewrite", parent.feed, "textbook",
                                       r["method"], cfg.seed, prov, {"name": "rewrite", "method": r["method"]}))
    for source, rs in rows.items():
        for k, start in enumerate(range(0, max(1, len(rs)), cfg.shard_size)):
            table = pa.Table.from_pylist(rs[start:start + cfg.shard_size], schema=SCHEMA)
            with atomic_path(out / f"{source}-{k:05d}.parquet") as tmp:
                pq.write_table(table, tmp, compression="zstd")
    atomic_write_text(out / "removed.jsonl", "".join(json.dumps(r) + "\n" for r in removed))

    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in removed:
        reasons[r["feed"]][r["reason"]] += 1
    return {
        "feeds": {f: {"pages": ingested[f], "bytes": ingested_bytes[f], "removed": dict(reasons[f]),
                      "kept": ingested[f] - sum(reasons[f].values())} for f in ingested},
        "dedup": {"threshold": cfg.dedup_threshold, "num_perm": cfg.num_perm, "pages": len(good),
                  "exact": d.exact, "near": d.near},
        "classifier": clf_report,
        "web": {"pages": len(web), "kept": len(kept_web), "rewritten": len(best), "rewrites": len(rewrites)},
        "sources": {s: {"docs": len(rs), "chars": sum(len(r["text"]) for r in rs)} for s, rs in rows.items()},
    }


def outputs(run: RunDir) -> list[Path]:
    out = run.stage_dir("organic")
    return sorted(out.glob("*.parquet")) + [out / "removed.jsonl"]
