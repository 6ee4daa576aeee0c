"""Organic data: corrupt-text filters, dedup, the educational-value classifier, rewrites and ingestion errors."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MICRO
from phiforge.data import dedup
from phiforge.data import eduscore
from phiforge.data import ingest
from phiforge.data import rewrite
from phiforge.data import textfilter
from phiforge.config import recipe_from_dict
from phiforge.errors import PhiforgeError
from phiforge.lm.completions import Completion


@pytest.fixture(scope="module")
def topics() -> list[str]:
    """Real prose: the language reference's chapters that pass the filters as they are."""
    return [p.text for p in ingest.pydoc_topics() if textfilter.check(p.text, "prose")[0] is None]


def test_sound_pages_pass_and_corrupt_pages_are_filtered(topics):
    page = topics[3]
    assert textfilter.check(page, "prose")[0] is None
    rng = random.Random(0)
    garbage = page[:1500] + bytes(rng.randrange(256) for _ in range(2000)).decode("latin-1")
    assert textfilter.check(garbage, "prose")[0] in ("bad_characters", "compression_ratio")
    assert textfilter.check(bytes(rng.randrange(256) for _ in range(3000)).decode("latin-1"), "code")[0] is not None
    repeated = "\n".join([page[:400]] + ["Buy cheap widgets now at the best price online today"] * 30)
    assert textfilter.check(repeated, "prose")[0] in ("repeated_lines", "compression_ratio")
    boiler = "\n".join(["Accept all cookies", "Privacy policy", "Terms of use", "Log in to comment",
                        "Subscribe to our newsletter", "Share this", "Follow us", "Back to top",
                        "Powered by WordPress", page[:300].replace("\n", " ")])
    assert textfilter.check(boiler, "prose")[0] == "boilerplate"
    spam = " ".join(["the best python tutorial"] * 80)
    assert textfilter.check(spam, "prose")[0] in ("compression_ratio", "top_2gram", "top_3gram", "top_4gram")


def test_boilerplate_lines_are_removed_from_a_page_that_is_kept(topics):
    page = topics[5] + "\n\nAccept all cookies\nBack to top\n"
    reason, cleaned = textfilter.check(page, "prose")
    assert reason is None and "cookies" not in cleaned and "Back to top" not in cleaned
    assert cleaned.startswith(topics[5][:200])


def test_code_is_judged_by_byte_statistics_only():
    code = (ingest.stdlib_root() / "json" / "decoder.py").read_text()
    assert textfilter.check(code, "code")[0] is None
    assert textfilter.check(code, "prose")[0] is not None  # its repeated identifiers would fail the prose n-gram rules
    assert textfilter.check(code.replace("\n", " "), "code")[0] == "long_line"


def test_compression_outliers_flag_only_the_pages_far_from_their_feed(topics):
    texts = topics[:30] + ["abc " * 2000]
    flags = textfilter.compression_outliers(texts, 4.0)
    assert flags[-1] and not any(flags[:-1])


def _edit(text: str, every: int, seed: int) -> str:
    words, rng = text.split(), random.Random(seed)
    return " ".join(rng.choice(["alpha", "beta", "gamma"]) if i % every == 0 else w for i, w in enumerate(words))


def test_near_duplicates_above_threshold_are_removed_and_distinct_pages_kept(topics):
    pages = [t for t in topics if len(t.split()) > 400][:20]
    near = [_edit(p, 150, k) for k, p in enumerate(pages[:8])]  # a word in 150 changed: 5-gram Jaccard ~0.94
    far = [_edit(p, 4, k) for k, p in enumerate(pages[8:12])]  # a word in 4 changed: Jaccard ~0.1
    exact = [pages[15].upper()]  # normalisation makes case irrelevant
    texts = pages + near + far + exact
    r = dedup.deduplicate(texts, threshold=0.8)
    assert all(r.keep[: len(pages)]), "no original page may be removed"
    assert r.keep[len(pages): len(pages) + 8] == [False] * 8
    assert r.duplicate_of[len(pages): len(pages) + 8] == list(range(8))
    assert all(r.keep[len(pages) + 8: len(pages) + 12]), "pages below the threshold are distinct"
    assert (r.exact, r.near) == (1, 8) and r.duplicate_of[-1] == 15


def test_minhash_estimates_jaccard(topics):
    a = topics[0]
    b = _edit(a, 10, 1)
    sa, sb = set(dedup.shingles(a).tolist()), set(dedup.shingles(b).tolist())
    true = len(sa & sb) / len(sa | sb)
    sig = dedup.MinHasher(num_perm=256).signatures([a, b])
    assert abs(float((sig[0] == sig[1]).mean()) - true) < 0.08


class _Fixed:
    name = "fixed"

    def __init__(self, replies):
        self.replies = replies

    def complete(self, requests):
        assert all("<page>" in r.messages[-1]["content"] for r in requests)
        return [Completion(t, "stop", 0, 1) for t in self.replies[: len(requests)]]


def test_labels_come_through_the_teacher_interface():
    scores, labels = eduscore.label(_Fixed(["Score: 4", "I think score = 1", "no idea"]), ["a", "b", "c"], 3)
    assert scores == [4, 1, None] and labels == [1, 0, None]
    assert eduscore.HeuristicRater().complete(
        [eduscore.ChatRequest.user(eduscore.PROMPT.format(page="x"))])[0].text.startswith("Score: ")


def test_classifier_beats_trivial_baselines_on_held_out_pages():
    # Every prose page Python itself ships (package_pages would make the data depend on what else is installed),
    # cut at rating >= 4, where the two classes are about 60/40 (at >= 3 five in six pages are positive).
    pages = [p for p in itertools.chain(ingest.pydoc_topics(), ingest.stdlib_docs())
             if textfilter.check(p.text, "prose")[0] is None]
    _, labels = eduscore.label(eduscore.HeuristicRater(), [p.text for p in pages], 4)
    held = [k % 4 == 0 for k in range(len(pages))]
    train = [(p.text, y) for p, y, h in zip(pages, labels, held) if not h]
    test = [(p.text, y) for p, y, h in zip(pages, labels, held) if h]
    assert len(test) >= 40 and 0.2 < sum(y for _, y in test) / len(test) < 0.9
    clf = eduscore.EduClassifier.fit([t for t, _ in train], [y for _, y in train], dim=1 << 16)
    rep = eduscore.evaluate(clf, [t for t, _ in test], [y for _, y in test])
    assert rep["classifier"]["accuracy"] > rep["majority_class"]["accuracy"] + 0.05
    assert rep["classifier"]["f1"] > rep["keep_all"]["f1"]


def test_classifier_needs_both_classes():
    with pytest.raises(PhiforgeError, match="needs both classes"):
        eduscore.EduClassifier.fit(["a b", "c d"], [1, 1])


def test_restructured_rewrite_has_exercises_answered_from_the_page():
    page = ("Widgets\n=======\n\n.. note:: build status\n\n[![badge](https://x/y.svg)](https://x)\n\n"
            "A widget is a small reusable part of a user interface that draws itself. Every widget has a parent "
            "container.\n\nThe render method returns the pixels of the widget as a list of rows. It is called "
            "whenever the screen changes.\n\n    w = Widget()\n    w.render()\n")
    out = rewrite.restructure(page)
    assert out.startswith("# Widgets") and "https://" not in out and "badge" not in out and ".. note" not in out
    assert "## Exercises" in out and "Fill in the blank: ____ is a small reusable part" in out
    answers = out.split("## Answers")[1]
    assert "A widget" in answers and "The render method" in answers
    assert "w.render()" in out.split("## Example")[1]
    rows = rewrite.rewrite([("p1", "file:x", page)])
    assert rows[0]["parent"] == "p1" and rows[0]["method"] == "restructure"
    llm = rewrite.rewrite([("p1", "file:x", page)], _Fixed(["# Widgets\n\nA textbook section."]))
    assert llm[0]["method"] == "fixed" and llm[0]["text"].startswith("# Widgets")


def test_local_folder_reads_text_jsonl_parquet_and_names_bad_input(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    pq.write_table(pa.table({"body": ["three"]}), tmp_path / "c.parquet")
    with pytest.raises(PhiforgeError, match=r"c\.parquet: no column 'text'"):
        list(ingest.local_folder(tmp_path, "acquired"))
    (tmp_path / "c.parquet").unlink()
    pages = list(ingest.local_folder(tmp_path, "web"))
    assert [p.text for p in pages] == ["hello world", "one", "two"] and pages[2].uri.endswith("b.jsonl:3")
    assert len({p.id for p in pages}) == 3
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(PhiforgeError, match=r"d\.jsonl:2: field 'text' is missing"):
        list(ingest.local_folder(tmp_path, "web"))
    with pytest.raises(PhiforgeError, match="not a folder"):
        list(ingest.local_folder(tmp_path / "nope", "web"))


def test_recipe_errors_name_the_key():
    with pytest.raises(PhiforgeError, match="organic.feeds.wikipedia is not a feed"):
        recipe_from_dict({**MICRO, "organic": {"feeds": {"wikipedia": 0}}})
    with pytest.raises(PhiforgeError, match="mixture.shares.books is not a source"):
        recipe_from_dict({**MICRO, "mixture": {"shares": {"synthetic": 1.0, "books": 0.5}}})
