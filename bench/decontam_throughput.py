"""Decontamination throughput: the numpy BenchmarkIndex against the plain-Python NaiveIndex, on real text.

Benchmark: ~2,000 generated maths word problems of 30-80 words (a tenth multiple choice with shared boilerplate).
Training corpus: the CPython standard library's .py files and pydoc_data/topics.py, cut into 1-12 KB documents,
shuffled and repeated with a seed until it reaches --mb megabytes (10**6 UTF-8 bytes), all in memory. The corpus is
clean by construction, so every flagged document is a false positive. Both run in this one process on one thread;
seconds are the median of --repeats passes (the first pass is also printed). The naive index runs on the first
--naive-mb of the corpus only, so the speed-up compares MB/s. Then: how many fresh problems from the same templates
are flagged, and how many benchmark items planted in corpus documents (verbatim or reworded) are found.

    python bench/decontam_throughput.py --mb 100      # the reported run
    python bench/decontam_throughput.py --mb 5        # a quick one
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: one core, as a per-core figure requires

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from phiforge.data.decontam import (CLEAN, CONTAMINATED_THRESHOLD, INFO_THRESHOLD, BenchmarkIndex, NaiveIndex,  # noqa: E402
                               normalize)

# Wide slot vocabularies, so that problems from the same templates share fewer 13-grams such as "spends a third of
# the money on socks and saves 124 dollars of": such a shared 13-gram is a match by definition, so the "fresh
# problems" line below measures how repetitive templated text is (7% here, 24% with 25 names and numbers < 100).
NAMES = ("Ava Ben Chloe Dev Elena Farid Grace Hiro Isla Jonas Kira Luis Mei Nadia Omar Priya Quinn Rosa Sam Tariq "
         "Uma Victor Wen Yusuf Zoe Amir Bea Carlos Dana Emeka Fatima Gus Hana Ivan Jia Kofi Lena Marco Nora Oscar "
         "Pablo Rhea Sofia Theo Ugo Vera Will Xena Yara Zane Anya Bruno Cleo Diego Esme Finn Gita Hugo Ines Jude").split()
THINGS = ("apples marbles stickers pencils cookies books stamps shells tickets cupcakes oranges bottles beads coins "
          "cards eggs flowers toys notebooks candles lemons muffins crayons puzzles kites batteries buttons ribbons "
          "jars plums peaches bricks tiles seeds nails bulbs mugs plates spoons socks").split()
PLACES = ("market bakery school library garden shop fair museum farm station harbour cinema zoo pool park gym "
          "studio workshop canteen festival orchard clinic warehouse bookshop theatre").split()
CONTAINERS = "box bag basket jar crate tray shelf packet tin carton bucket case".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
SENTENCES = (
    "{a} has {n} {t} and wants to share them equally among {m} friends.",
    "At the {p}, {a} buys {n} {t} for {d} dollars each and pays with a {b}-dollar note.",
    "{a} gives {n} of the {t} to {o}, who already had {m} {t} at home.",
    "Each {c} holds {n} {t}, and there are {m} full {c}s on the table at the {p}.",
    "On {day}, {a} collected {n} {t}, and on {day2} {a} collected {m} more than that.",
    "The price of a {c} of {t} rose from {d} dollars to {b} dollars during the {p} sale.",
    "{a} spends a third of the money on {t} and saves {n} dollars of what is left.",
    "After eating {n} of the {t}, {o} notices that only {m} remain in the {c}.",
    "A {p} sells {t} in packs of {n}, and {a} needs at least {b} of them for the party.",
    "Every week {a} earns {d} dollars for helping at the {p} and puts {n} percent of it aside.",
    "{o} is {n} years older than {a}, and in {m} years their ages will add up to {b}.",
    "The {p} is {n} kilometres away, and {a} walks there at {m} kilometres per hour.",
)
QUESTIONS = (
    "How many {t} does {a} have now?", "How much money does {a} get back?", "How many {t} are left at the end?",
    "How many {c}s are needed in total?", "What is the total cost in dollars?", "How long does the trip take?",
    "What percentage of the {t} did {o} keep?", "How old is {a} now?",
)
BOILER = "Which of the following statements must be true? (A) I only (B) II only (C) III only (D) II and III"


def make_problems(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    items = []
    for k in range(n):
        target, words = rng.randint(30, 80), []
        a, o = rng.sample(NAMES, 2)
        t, c, p = rng.choice(THINGS), rng.choice(CONTAINERS), rng.choice(PLACES)
        while len(words) < target - 8:
            slots = dict(a=a, o=o, t=t, c=c, p=p, day=rng.choice(DAYS), day2=rng.choice(DAYS), n=rng.randint(2, 999),
                         m=rng.randint(2, 500), d=rng.randint(1, 200), b=rng.randint(20, 2000))
            words += rng.choice(SENTENCES).format(**slots).split()
        question = rng.choice(QUESTIONS).format(a=a, o=o, t=t, c=c)
        if k % 10 == 0:
            question += " " + BOILER
        items.append(("mathgen", f"p{k}", " ".join(words[:target - len(question.split())] + question.split())))
    return items


def corpus_documents(rng: random.Random) -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(lib.rglob("*.py"))
             if "site-packages" not in p.parts]
    from pydoc_data.topics import topics
    texts += list(topics.values())
    docs = []
    for text in texts:  # cut at blank lines into documents of 1-12 KB, like web pages or files of a code corpus
        piece, size, target = [], 0, rng.randint(1000, 12000)
        for para in text.split("\n\n"):
            piece.append(para)
            size += len(para)
            if size >= target:
                docs.append("\n\n".join(piece))
                piece, size, target = [], 0, rng.randint(1000, 12000)
        if piece:
            docs.append("\n\n".join(piece))
    return [d for d in docs if d.strip()]


def build_corpus(mb: float, rng: random.Random) -> tuple[list[str], int]:
    base = corpus_documents(rng)
    sizes = [len(d.encode("utf-8")) for d in base]
    corpus, total = [], 0
    while total < mb * 1e6:
        order = list(range(len(base)))
        rng.shuffle(order)
        for i in order:
            corpus.append(base[i])
            total += sizes[i]
            if total >= mb * 1e6:
                break
    return corpus, total


def timed(fn, repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times[0], out


def reword(text: str, every: int, rng: random.Random) -> str:
    words = text.split()
    return " ".join(rng.choice(THINGS) if i % every == every - 1 else w for i, w in enumerate(words))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="training corpus size in MB (10**6 bytes)")
    ap.add_argument("--naive-mb", type=float, default=None, help="corpus prefix the naive index runs on "
                                                                     "(default: min(mb, 10))")
    ap.add_argument("--items", type=int, default=2000, help="benchmark problems")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--info-threshold", type=float, default=INFO_THRESHOLD)
    ap.add_argument("--contaminated-threshold", type=float, default=CONTAMINATED_THRESHOLD)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    items = make_problems(args.items, rng)
    t0 = time.perf_counter()
    thresholds = dict(info_threshold=args.info_threshold, contaminated_threshold=args.contaminated_threshold)
    fast = BenchmarkIndex(items, **thresholds)
    t_fast_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = NaiveIndex(items, **thresholds)
    t_naive_build = time.perf_counter() - t0
    lengths = [len(normalize(t)) for _, _, t in items]
    print(f"benchmark: {len(items)} problems, {min(lengths)}-{max(lengths)} words; allow-listed n-grams "
          f"{fast.allowed}; build {t_fast_build:.2f} s fast, {t_naive_build:.2f} s naive; {thresholds}")

    t0 = time.perf_counter()
    corpus, total = build_corpus(args.mb, rng)
    print(f"corpus: {len(corpus)} documents, {total / 1e6:.1f} MB, generated in {time.perf_counter() - t0:.1f} s")
    naive_mb = min(args.mb, args.naive_mb if args.naive_mb is not None else 10.0)
    subset, sub_bytes = [], 0
    for doc in corpus:
        if sub_bytes >= naive_mb * 1e6:
            break
        subset.append(doc)
        sub_bytes += len(doc.encode("utf-8"))

    rows = []
    t_naive, cold, naive_out = timed(lambda: naive.check_many(subset), args.repeats)
    rows.append(("naive (NaiveIndex)", sub_bytes, t_naive, cold))
    t_sub, cold, fast_sub = timed(lambda: fast.check_many(subset), args.repeats)
    rows.append(("fast (BenchmarkIndex)", sub_bytes, t_sub, cold))
    t_full, cold, fast_out = timed(lambda: fast.check_many(corpus), args.repeats)
    rows.append(("fast (BenchmarkIndex)", total, t_full, cold))

    naive_rate = sub_bytes / 1e6 / t_naive
    print(f"\n{'implementation':<22} {'MB':>8} {'seconds':>9} {'MB/s/core':>10} {'speed-up':>9} {'1st pass s':>11}")
    for name, size, secs, first in rows:
        rate = size / 1e6 / secs
        print(f"{name:<22} {size / 1e6:>8.1f} {secs:>9.2f} {rate:>10.2f} {rate / naive_rate:>8.1f}x {first:>11.2f}")
    print(f"\nfast == naive verdicts on the {len(subset)} shared documents: {fast_sub == naive_out}")

    flagged = [(d, v) for d, v in zip(corpus, fast_out) if v.status != CLEAN]
    print(f"false positives on the clean corpus: {len(flagged)} / {len(corpus)} documents "
          f"= {len(flagged) / len(corpus):.4%}")
    for doc, v in flagged[:3]:
        print(f"  {v.status} {v.reason} {v.item_id} ratio={v.ratio:.2f} ngram={v.ngram!r}")

    fresh = [text for _, _, text in make_problems(args.items, random.Random(args.seed + 2))]
    verdicts = fast.check_many(fresh)
    statuses = {s: sum(v.status == s for v in verdicts) for s in ("CONTAMINATED", "PARTIAL", "CLEAN")}
    print(f"flagged among {len(fresh)} fresh problems from the same templates (not benchmark items): "
          f"{len(fresh) - statuses['CLEAN']} = {1 - statuses['CLEAN'] / len(fresh):.2%} {statuses}")

    planted_rng = random.Random(args.seed + 1)
    picks = planted_rng.sample(items, min(200, len(items)))
    hosts = [d for d in corpus[:2000] if len(d) < 6000] or corpus
    for label, every in (("verbatim", 0), ("every 10th word changed", 10), ("every 8th word changed", 8)):
        docs = []
        for _, _, text in picks:
            host = planted_rng.choice(hosts)
            cut = planted_rng.randrange(len(host) + 1)
            docs.append(host[:cut] + "\n" + (reword(text, every, planted_rng) if every else text) + "\n" + host[cut:])
        verdicts = fast.check_many(docs)
        hit = sum(v.status != CLEAN and v.item_id == item_id for v, (_, item_id, _) in zip(verdicts, picks))
        statuses = {s: sum(v.status == s for v in verdicts) for s in ("CONTAMINATED", "PARTIAL", "CLEAN")}
        print(f"planted, {label}: detected {hit}/{len(picks)} {statuses}")


if __name__ == "__main__":
    main()
