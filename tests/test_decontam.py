"""Decontamination (Phi-4 App. B.1): normalisation, planted benchmark items, the allow-list, and the fast index
giving the same verdicts as the plain-Python definition."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MICRO
from phiforge.eval import benchmarks
from phiforge.data import decontam
from phiforge.eval import contamination
from phiforge.data import corpus
from phiforge.config import DecontamConfig, recipe_from_dict
from phiforge.data.decontam import (CLEAN, CONTAMINATED, PARTIAL, BenchmarkIndex, NaiveIndex, Verdict, _encode,
                               decontaminate, normalize)
from phiforge.errors import PhiforgeError
from phiforge.pipeline import BY_NAME, entry, prepare, run_stage
from phiforge.rundir import RunDir

ORCHARD = ("An orchard has 14 rows of pear trees with 23 trees in each row. In autumn every tree gives 37 pears, "
           "but the farmer keeps 120 pears for his family and packs the rest into crates that hold 48 pears each. "
           "How many full crates does he pack, and how many pears are left over after the last full crate?")
ITEMS = [
    ("mathbench", "orchard", ORCHARD),
    ("mathbench", "train", "A train leaves the station at 9:15 and travels at 84 kilometres per hour for two and a "
                           "half hours, then stops for 20 minutes and continues at 66 kilometres per hour until it "
                           "has covered 390 kilometres in total. At what time does the train arrive?"),
    ("mathbench", "paint", "Maya needs to paint the four walls of a room that is 5 metres long, 4 metres wide and 3 "
                           "metres high. One litre of paint covers 9 square metres, and the door and window take up "
                           "6 square metres that need no paint. How many litres must she buy?"),
    ("science", "circuit", "Two resistors of 6 ohms and 3 ohms are connected in parallel, and this pair is then "
                           "connected in series with a resistor of 4 ohms across a 12 volt battery. What current "
                           "flows from the battery, and what is the voltage across the 4 ohm resistor?"),
]
PROSE = ("The history of agriculture is long and varied. Early farmers grew grains along river valleys, and over "
         "many centuries they learned to store seed, to rotate fields and to trade their surplus with neighbours. ")
SAME_TOPIC = ("Pear trees grow well in orchards with rich soil. A farmer who plants rows of trees must think about "
              "spacing, and in autumn the harvest is sorted and packed so that the fruit reaches the market in "
              "crates without bruising. Counting crates and leftover fruit is part of the work.")


@pytest.fixture(scope="module")
def index() -> BenchmarkIndex:
    return BenchmarkIndex(ITEMS)


def test_normalize_maps_variants_to_the_same_words():
    want = ["the", "quick", "brown", "fox", "ate", "12", "pears"]
    for text in ["The quick brown fox ate 12 pears.", "THE QUICK, BROWN FOX ATE 12 PEARS!!!",
                 "  the\tquick\n\nbrown   fox -- ate (12) pears...", "Ｔｈｅ ｑｕｉｃｋ ｂｒｏｗｎ ｆｏｘ ａｔｅ １２ ｐｅａｒｓ",
                 "the\u00a0quick\u2003brown\u200afox \u201cate\u201d 12 pears\u2026", "the_quick/brown|fox;ate:12,pears"]:
        assert normalize(text) == want, text
    assert normalize("ﬁnd the Straße") == normalize("FIND THE STRASSE") == ["find", "the", "strasse"]
    assert normalize("Café") == normalize("cafe\u0301".upper()) == ["café"]  # composed and decomposed é agree
    assert normalize("x² + 3.5 = 1,000") == ["x2", "3", "5", "1", "000"]
    assert normalize("she has 12 apples") != normalize("she has 13 apples")  # numbers are kept
    assert normalize("") == normalize(" ,.!? ") == []


def test_fast_encoding_gives_exactly_the_words_of_normalize():
    rng = random.Random(0)
    texts = ["".join(chr(rng.randrange(128)) for _ in range(300)) for _ in range(50)]  # the ASCII shortcut
    texts += ["".join(chr(rng.randrange(0x3000)) for _ in range(100)) for _ in range(20)]
    texts += ["snake_case and CamelCase, 3.14!", "tabs\tand\x0bvertical\x1cseparators", ORCHARD, "Ｘ² Straße"]
    for text in texts:
        assert [w.decode() for w in _encode(text).split()] == normalize(text)


def test_verbatim_item_inside_a_longer_document_is_contaminated(index):
    v = index.check(PROSE * 3 + ORCHARD + " " + PROSE * 2)
    assert (v.status, v.reason, v.benchmark, v.item_id) == (CONTAMINATED, "13gram", "mathbench", "orchard")
    assert v.ngram == " ".join(normalize(ORCHARD)[:13]) and v.ratio == 1.0


def test_reworded_item_breaks_13grams_but_7gram_overlap_flags_it(index):
    words = ORCHARD.split()
    reworded = " ".join("zebra" if i % 10 == 9 else w for i, w in enumerate(words))  # every 10th word changed
    v = index.check(PROSE + reworded + " " + PROSE)
    assert v.reason == "7gram" and v.item_id == "orchard"
    assert index.info_threshold < v.ratio < 0.5
    assert v.status == (CONTAMINATED if v.ratio >= index.contaminated_threshold else PARTIAL) == PARTIAL
    assert set(v.ngram.split()) <= set(normalize(ORCHARD))
    fewer = " ".join("zebra" if i % 13 == 12 else w for i, w in enumerate(words))  # 12 kept words: no 13-gram
    v = index.check(fewer)
    assert v.reason == "7gram" and v.status in (PARTIAL, CONTAMINATED) and v.ratio > 0.4


def test_case_whitespace_and_punctuation_changes_do_not_hide_an_item(index):
    text = ITEMS[3][2].upper().replace(" ", " \n\t ").replace(",", ";").replace(".", " ...")
    v = index.check("Homework:\n" + text)
    assert (v.status, v.reason, v.benchmark, v.item_id) == (CONTAMINATED, "13gram", "science", "circuit")


def test_text_on_the_same_topic_is_clean(index):
    v = index.check(PROSE + SAME_TOPIC)
    assert v.status == CLEAN and v.ratio <= index.info_threshold


BOILER = "Which of these statements is true? (A) I only (B) II only (C) III only (D) II and III"


def _mcq_items(n: int) -> list[tuple[str, str, str]]:
    rng = random.Random(1)
    vocab = "alpha beta gamma delta epsilon zeta theta iota kappa lambda sigma omega".split()
    return [("mcq", f"q{k}", " ".join(rng.choices(vocab, k=15)) + f" {k}. " + BOILER) for k in range(n)]


def test_boilerplate_shared_by_many_items_does_not_flag_a_document_by_itself():
    items = _mcq_items(12)
    fast, naive = BenchmarkIndex(items), NaiveIndex(items)  # 12 items >= ALLOW_MIN_ITEMS = 10
    doc = PROSE + BOILER + " " + SAME_TOPIC
    assert fast.check(doc) == naive.check(doc) == Verdict(CLEAN)
    assert fast.allowed[13] == len(normalize(BOILER)) - 12
    copied = PROSE + items[5][2]  # the item's own words still flag it
    assert fast.check(copied).item_id == naive.check(copied).item_id == "q5"
    strict = BenchmarkIndex(items, allow_min_items=None)
    assert strict.check(doc).status == CONTAMINATED  # so it was the allow-list


def test_user_allow_list_and_train_derived_allow_list():
    items = _mcq_items(3)  # too few items for the automatic allow-list
    doc = PROSE + BOILER
    assert BenchmarkIndex(items).check(doc).status == CONTAMINATED
    for cls in (BenchmarkIndex, NaiveIndex):
        assert cls(items, allow_list=[BOILER]).check(doc) == Verdict(CLEAN)
        learned = cls(items)
        learned.allow_common_train_ngrams([PROSE + BOILER, BOILER + " " + SAME_TOPIC, "intro " + BOILER], min_docs=3)
        assert learned.check(doc) == Verdict(CLEAN)
        unlearned = cls(items)
        unlearned.allow_common_train_ngrams([PROSE + BOILER, SAME_TOPIC], min_docs=3)
        assert unlearned.check(doc).status == CONTAMINATED
    with pytest.raises(PhiforgeError, match="words"):
        BenchmarkIndex(items, allow_list=["too short a phrase"])
    with pytest.raises(PhiforgeError, match="min_docs"):
        BenchmarkIndex(items).allow_common_train_ngrams([doc], min_docs=1)


def _random_corpus(seed: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(12)] + ["the", "of", "7", "42", "Pear", "PEAR", "ｐｅａｒ", "Straße", "STRASSE"]
    items = [(rng.choice(["b1", "b2"]), f"i{k}", " ".join(rng.choices(vocab, k=rng.randint(3, 40))))
             for k in range(60)]
    docs = []
    for _ in range(300):
        words = rng.choices(vocab, k=rng.randint(0, 60))
        for _ in range(rng.randint(0, 2)):  # plant a fragment of an item, sometimes edited
            src = rng.choice(items)[2].split()
            a = rng.randrange(len(src))
            frag = src[a:a + rng.randint(5, 30)]
            frag = [rng.choice(vocab) if rng.random() < 0.08 else w for w in frag]
            at = rng.randint(0, len(words))
            words[at:at] = frag
        docs.append(rng.choice([" ", "  ", ", ", ".\n"]).join(words))
    return items, docs  # a small vocabulary, so n-grams overlap by chance too; some words need NFKC or casefold


@pytest.mark.parametrize("seed,allow_min_items", [(0, 10), (1, 3), (2, None)])
def test_fast_index_gives_the_naive_verdicts_on_random_documents(seed, allow_min_items, monkeypatch):
    chunks = decontam._chunks
    monkeypatch.setattr(decontam, "_chunks", lambda texts: chunks(texts, max_docs=37))  # many batches
    items, docs = _random_corpus(seed)
    fast = BenchmarkIndex(items, allow_min_items=allow_min_items, info_threshold=0.1, contaminated_threshold=0.4)
    naive = NaiveIndex(items, allow_min_items=allow_min_items, info_threshold=0.1, contaminated_threshold=0.4)
    assert fast.check_many(docs) == naive.check_many(docs)
    statuses = {v.status for v in naive.check_many(docs)}
    assert statuses == {CLEAN, PARTIAL, CONTAMINATED}  # the comparison covered every branch
    fast.allow_common_train_ngrams(docs, min_docs=4)
    naive.allow_common_train_ngrams(docs, min_docs=4)
    assert fast.check_many(docs) == naive.check_many(docs)
    assert [fast.check(d) for d in docs[:50]] == fast.check_many(docs[:50])  # batching changes nothing
    assert fast.undetectable == [(b, i) for b, i, text in items if len(normalize(text)) < 7]


def test_save_load_round_trip(tmp_path):
    items, docs = _random_corpus(3)
    fast = BenchmarkIndex(items, info_threshold=0.15, contaminated_threshold=0.45, allow_list=[BOILER])
    path = tmp_path / "sub" / "index.npz"
    fast.save(path)
    fast.save(path)  # overwriting is fine
    assert [p.name for p in path.parent.iterdir()] == ["index.npz"]  # no temporary file left behind
    loaded = BenchmarkIndex.load(path)
    assert (loaded.info_threshold, loaded.contaminated_threshold) == (0.15, 0.45)
    assert loaded.benchmarks == fast.benchmarks and loaded.item_ids == fast.item_ids
    assert loaded.allowed == fast.allowed
    assert loaded.check_many(docs) == fast.check_many(docs)
    with pytest.raises(PhiforgeError, match="does not exist"):
        BenchmarkIndex.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not an index")
    with pytest.raises(PhiforgeError, match="not a phiforge decontamination index"):
        BenchmarkIndex.load(tmp_path / "junk.npz")


def test_decontaminate_splits_counts_and_shards(index):
    docs = [{"text": PROSE, "id": 0}, {"text": PROSE + ORCHARD, "id": 1}, {"text": SAME_TOPIC, "id": 2},
            {"text": ITEMS[3][2], "id": 3}, {"text": "short", "id": 4}]
    kept, flagged, stats = decontaminate(iter(docs), index)
    assert [d["id"] for d in kept] == [0, 2, 4] and [d["id"] for d, _ in flagged] == [1, 3]
    assert stats["docs"] == 5 and stats["status"] == {CLEAN: 3, PARTIAL: 0, CONTAMINATED: 2}
    assert stats["benchmark"] == {"mathbench": {PARTIAL: 0, CONTAMINATED: 1}, "science": {PARTIAL: 0, CONTAMINATED: 1}}
    seen = []
    for rank in range(3):
        kept, flagged, _ = decontaminate(docs, index, rank=rank, world_size=3)
        seen += [d["id"] for d in kept] + [d["id"] for d, _ in flagged]
        assert all(i % 3 == rank for i in seen[-len(kept) - len(flagged):])
    assert sorted(seen) == [0, 1, 2, 3, 4]
    with pytest.raises(PhiforgeError, match="'body'"):
        decontaminate(docs, index, text_key="body")
    with pytest.raises(PhiforgeError, match="rank"):
        decontaminate(docs, index, rank=2, world_size=2)


def test_bad_benchmark_items_are_user_errors():
    with pytest.raises(PhiforgeError, match="triple"):
        BenchmarkIndex([("b", "1")])
    with pytest.raises(PhiforgeError, match="appears 2 times"):
        BenchmarkIndex([("b", "1", "x y z"), ("b", "1", "u v w")])
    with pytest.raises(PhiforgeError, match="no benchmark items"):
        NaiveIndex([])
    with pytest.raises(PhiforgeError, match="threshold"):
        BenchmarkIndex(ITEMS, info_threshold=0.6, contaminated_threshold=0.5)


# -- the pipeline stage -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    recipe = recipe_from_dict(MICRO)
    run = prepare(recipe, tmp_path_factory.mktemp("dc") / "run")
    run_stage(recipe, run, BY_NAME["synth"])
    run_stage(recipe, run, BY_NAME["organic"])
    return recipe, run


def _plant(shard, row: int, column: str, value) -> str:
    table = pq.read_table(shard)
    values = table.column(column).to_pylist()
    values[row] = value
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))
    pq.write_table(table, shard)
    _record(RunDir(Path(shard).parents[1]), Path(shard).parent.name)
    return table.column("id")[row].as_py()


def _record(run: RunDir, stage: str) -> None:
    """Record a planted shard in its stage's manifest, as if the stage had written it: later stages refuse inputs
    whose bytes differ from the manifest."""
    outputs = entry(BY_NAME[stage], "outputs")
    run.write_manifest(stage, run.manifest(stage), outputs(run) if outputs else [run.stage_dir(stage)])


def test_stage_drops_planted_benchmark_items_from_every_training_reader(synth_run, tmp_path, gsm8k):
    recipe, clean = synth_run
    metrics = run_stage(recipe, clean, BY_NAME["decontam"])
    assert metrics["dropped"] == 0 and json.loads((clean.stage_dir("decontam") / "dropped.json").read_text()) == []
    assert metrics["sources"]["pretrain"]["docs"] == len(corpus.read_column(clean, "pretrain", "id"))
    assert {k: v["items"] for k, v in metrics["benchmarks"].items()} == {"gsm8k100": 100, "gsm-symbolic": 99,
                                                                         "deepmind-math": 800, "champ": 270,
                                                                         "humaneval": 164}

    shutil.copytree(clean.root, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    gsm = benchmarks.get("gsm8k100").load()[7]
    he = benchmarks.get("humaneval").load()[42]
    texts = corpus.read_column(run, "pretrain", "text")
    planted_doc = f"Exercise 1: {gsm.question}\nSolution: {gsm.solution}"
    pre_id = _plant(corpus.shards(run, "pretrain")[1], 3, "text", planted_doc)
    sft_shard = corpus.shards(run, "sft")[0]
    messages = pq.read_table(sft_shard).column("messages")[5].as_py()
    messages[-1]["content"] = "Here is the function:\n" + he.question + he.solution
    sft_id = _plant(sft_shard, 5, "messages", messages)

    metrics = run_stage(recipe, run, BY_NAME["decontam"])
    assert sorted(json.loads((run.stage_dir("decontam") / "dropped.json").read_text())) == sorted([pre_id, sft_id])
    flagged = {f["id"]: f for f in map(json.loads, (run.stage_dir("decontam") / "flagged.jsonl").open())}
    assert (flagged[pre_id]["benchmark"], flagged[pre_id]["item_id"]) == ("gsm8k100", gsm.id)
    assert (flagged[sft_id]["benchmark"], flagged[sft_id]["item_id"]) == ("humaneval", he.id)
    assert flagged[pre_id]["status"] == flagged[sft_id]["status"] == CONTAMINATED
    assert metrics["sources"]["pretrain"]["flagged"] == metrics["sources"]["sft"]["flagged"] == 1
    # the readers every training stage uses leave the dropped samples out, and only them
    kept = corpus.read_column(run, "pretrain", "text")
    assert planted_doc not in kept and len(kept) == len(texts) - 1
    assert len(corpus.read_column(run, "pretrain", "text", include_dropped=True)) == len(texts)
    assert sft_id not in corpus.read_column(run, "sft", "id") and pre_id not in corpus.read_column(run, "pretrain", "id")


def test_stage_allow_lists_benchmark_phrasing_common_in_training(synth_run, tmp_path, gsm8k):
    """A question template that training uses in many documents is common phrasing, not a leak, once
    decontam.allow_min_train_docs is on; a rarer copy of the same words still flags."""
    recipe, clean = synth_run
    shutil.copytree(clean.root, tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    stem = " ".join(benchmarks.get("gsm8k100").load()[3].question.split()[:9])
    ids = [_plant(corpus.shards(run, "pretrain")[0], row, "text", f"{stem} {row + 11}?") for row in range(4)]
    recipe = dataclasses.replace(recipe, decontam=dataclasses.replace(recipe.decontam, benchmarks=["gsm8k100"]))
    flags = lambda: json.loads((run.stage_dir("decontam") / "dropped.json").read_text())  # noqa: E731
    run_stage(recipe, run, BY_NAME["decontam"])
    assert sorted(flags()) == sorted(ids)
    for min_docs, dropped, allowed in ((4, [], 3), (5, ids, 0)):  # the 9-word stem holds three 7-grams
        recipe = dataclasses.replace(recipe, decontam=dataclasses.replace(recipe.decontam,
                                                                          allow_min_train_docs=min_docs))
        metrics = run_stage(recipe, run, BY_NAME["decontam"])
        assert sorted(flags()) == sorted(dropped) and metrics["allow_listed_ngrams"]["7"] == allowed, min_docs


@pytest.mark.parametrize("overrides, needle", [
    ({"allow_min_train_docs": 1}, "decontam.allow_min_train_docs must be 0 (off) or >= 2"),
    ({"benchmarks": ["mmlu"]}, "decontam.benchmarks 'mmlu' is not a benchmark"),
    ({"info_threshold": 0.7}, "decontam.info_threshold (0.7) must be in (0, decontam.contaminated_threshold (0.5)]"),
    ({"allow_min_items": 1}, "decontam.allow_min_items must be >= 2"),
    ({"if_missing": "maybe"}, "decontam.if_missing"),
])
def test_bad_decontam_recipes_name_the_key(overrides, needle):

    with pytest.raises(PhiforgeError) as e:
        recipe_from_dict({"decontam": overrides}, source="r.yaml")
    assert needle in str(e.value)


def test_missing_benchmark_package_is_skipped_or_an_error(monkeypatch, gsm8k):
    def missing():
        raise PhiforgeError("benchmark data package 'champ_dataset' is not installed; install it with: pip install x")

    monkeypatch.setitem(benchmarks.BENCHMARKS, "champ", dataclasses.replace(benchmarks.BENCHMARKS["champ"], load=missing))
    index, status = contamination.build_harness_index(DecontamConfig(benchmarks=["gsm8k100", "champ"]))
    assert status["gsm8k100"] == {"items": 100} and "pip install x" in status["champ"]["skipped"]
    with pytest.raises(PhiforgeError, match="decontam.benchmarks: benchmark data package 'champ_dataset'"):
        contamination.build_harness_index(DecontamConfig(benchmarks=["gsm8k100", "champ"], if_missing="error"))
    with pytest.raises(PhiforgeError, match="none of decontam.benchmarks"):
        contamination.build_harness_index(DecontamConfig(benchmarks=["champ"]))

