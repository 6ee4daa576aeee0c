"""Organic-data throughput: ingestion, corrupt-text filtering and dedup in MB/s on one core, with datasketch's MinHash
LSH as the named baseline for the dedup step.

Corpus: every page the organic feeds give on this machine (the CPython standard library's .py files, its modules'
docstring pages, the installed distributions' package pages, pydoc_data's topics), about 36 MB. To reach --mb
megabytes (10**6 UTF-8 bytes) the pages are copied again as "mirrors": each copy loses one line in 40 at random and
gains a line naming the mirror, so it is no exact duplicate but a near-duplicate (5-gram Jaccard about 0.8-0.95),
which is what the MinHash pass must find. Everything runs in this one process on one thread (BLAS threads pinned to
1 before numpy loads); each step's seconds are for the whole corpus, MB/s = corpus MB / seconds.

Steps timed:
  ingest   the feeds from disk to pages (file reads, `ast` docstring extraction, distribution metadata), on the
           unique pages only (the mirrors are made in memory);
  filter   `textfilter.check` per page (boilerplate lines, n-gram statistics, compression ratio) and the per-feed
           compression-outlier pass;
  dedup    `dedup.deduplicate`: exact hashes, numpy MinHash signatures (128 permutations, word 5-grams), LSH at 0.8.
Baseline for dedup: `datasketch` (pip install datasketch) on the first --baseline-mb of the same filtered pages, with
the same 5-gram shingles, 128 permutations and threshold: a MinHash per page (`update_batch`), `MinHashLSH.query`
then `insert`, the same exact-hash pass first. Its duplicates are compared with ours on that slice.

    python bench/organic_throughput.py --mb 100             # the reported run
    python bench/organic_throughput.py --mb 5 --baseline-mb 2   # a quick one
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: one core, as a per-core figure requires

import argparse  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from phiforge.data import dedup  # noqa: E402
from phiforge.data import ingest  # noqa: E402
from phiforge.data import textfilter  # noqa: E402


def mb(texts) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def mirror(text: str, k: int, rng: random.Random) -> str:
    lines = [ln for ln in text.split("\n") if rng.random() >= 1 / 40]
    return "\n".join(lines) + f"\nMirrored copy {k} of this page.\n"


def datasketch_dedup(texts: list[str], threshold: float, num_perm: int) -> list[bool]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen, keep = set(), []
    word = re.compile(r"\w+")
    for i, t in enumerate(texts):
        k = dedup.exact_key(t)
        if k in seen:
            keep.append(False)
            continue
        seen.add(k)
        words = word.findall(t.lower())
        grams = {" ".join(words[j:j + 5]).encode() for j in range(max(1, len(words) - 4))}
        m = MinHash(num_perm=num_perm)
        m.update_batch(list(grams))
        if lsh.query(m):
            keep.append(False)
        else:
            lsh.insert(str(i), m)
            keep.append(True)
    return keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--baseline-mb", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    pages = [p for name in ingest.FEEDS for p in ingest.FEEDS[name](0)]
    t_ingest = time.perf_counter() - t0
    unique_mb = mb(p.text for p in pages)
    print(f"ingest: {len(pages):,} pages, {unique_mb:.1f} MB in {t_ingest:.1f} s = {unique_mb / t_ingest:.1f} MB/s "
          f"({Counter(p.feed for p in pages)})")

    rng = random.Random(args.seed)
    corpus = list(pages)
    k = 0
    while mb(p.text for p in corpus) < args.mb:
        k += 1
        corpus += [ingest.Page(f"{p.id}-m{k}", mirror(p.text, k, rng), p.source, p.feed, p.uri) for p in pages]
    total = 0
    for i, p in enumerate(corpus):
        total += len(p.text.encode("utf-8"))
        if total >= args.mb * 1e6:
            corpus = corpus[: i + 1]
            break
    rng.shuffle(corpus)
    corpus_mb = mb(p.text for p in corpus)
    print(f"corpus: {len(corpus):,} pages, {corpus_mb:.1f} MB ({k} mirror rounds)")

    t0 = time.perf_counter()
    kept, reasons = [], Counter()
    for p in corpus:
        reason, text = textfilter.check(p.text, "code" if p.source == "code" else "prose")
        reasons[reason or "kept"] += 1
        if reason is None:
            kept.append((p.feed, text))
    feeds = sorted({f for f, _ in kept})
    outliers = 0
    for f in feeds:
        outliers += sum(textfilter.compression_outliers([t for g, t in kept if g == f], 4.0))
    t_filter = time.perf_counter() - t0
    print(f"filter: {t_filter:.1f} s = {corpus_mb / t_filter:.2f} MB/s; {dict(reasons.most_common())}, "
          f"{outliers} compression outliers")

    texts = [t for _, t in kept]
    texts_mb = mb(texts)
    t0 = time.perf_counter()
    r = dedup.deduplicate(texts, 0.8, 128, seed=1)
    t_dedup = time.perf_counter() - t0
    print(f"dedup (phiforge, numpy): {len(texts):,} pages, {texts_mb:.1f} MB in {t_dedup:.1f} s = "
          f"{texts_mb / t_dedup:.2f} MB/s; {r.exact} exact, {r.near} near duplicates")

    sub, size = [], 0
    for t in texts:
        if size >= args.baseline_mb * 1e6:
            break
        sub.append(t)
        size += len(t.encode("utf-8"))
    try:
        t0 = time.perf_counter()
        base = datasketch_dedup(sub, 0.8, 128)
        t_base = time.perf_counter() - t0
    except ImportError:
        print("dedup (datasketch): not installed (pip install datasketch)")
        return
    t0 = time.perf_counter()
    ours = dedup.deduplicate(sub, 0.8, 128, seed=1).keep
    t_ours = time.perf_counter() - t0
    agree = sum(a == b for a, b in zip(base, ours)) / len(sub)
    print(f"dedup on the first {size / 1e6:.1f} MB: datasketch {t_base:.1f} s = {size / 1e6 / t_base:.2f} MB/s, "
          f"phiforge {t_ours:.1f} s = {size / 1e6 / t_ours:.2f} MB/s ({t_base / t_ours:.1f}x); removed "
          f"{base.count(False)} vs {ours.count(False)}, same keep/drop decision on {100 * agree:.1f}% of pages")
    whole = unique_mb / t_ingest, corpus_mb / t_filter, texts_mb / t_dedup
    print(f"pipeline (ingest + filter + dedup, one core): "
          f"{1 / (1 / whole[0] + 1 / whole[1] + texts_mb / corpus_mb / whole[2]):.2f} MB/s of corpus")


if __name__ == "__main__":
    main()
