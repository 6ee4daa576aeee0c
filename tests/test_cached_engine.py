"""The per-machine replies of a model that never changes (phiforge/lm/cached_engine.py): read back only for the
same model, prompts and settings, recomputed whole otherwise, and a damaged entry is recomputed, not trusted."""

from __future__ import annotations

from phiforge.lm.cached_engine import CachedEngine, folder_digest

SETTINGS = dict(stops=("\n\n",), max_new_tokens=8, temperature=0.0, top_p=1.0, seed=3, batch_size=4)


class Counting:
    """An engine whose reply names the prompt and how many calls came before, so a recomputed reply differs."""

    tok = "the tokenizer"

    def __init__(self):
        self.calls = 0

    def complete(self, prompts, **kwargs):
        self.calls += 1
        return [f"{p}@{self.calls}" for p in prompts]


def test_same_call_is_read_back_and_any_change_recomputes(tmp_path):
    inner = Counting()
    engine = CachedEngine(inner, "model-a", tmp_path)
    first = engine.complete([[1, 2], [3]], **SETTINGS)
    assert first == ["[1, 2]@1", "[3]@1"]
    assert engine.complete([[1, 2], [3]], **SETTINGS) == first and inner.calls == 1
    assert CachedEngine(Counting(), "model-a", tmp_path).complete([[1, 2], [3]], **SETTINGS) == first  # new process
    assert (engine.hits, engine.misses) == (1, 1)
    engine.complete([[1, 2]], **SETTINGS)  # other prompts: the whole call again
    engine.complete([[1, 2], [3]], **SETTINGS | {"batch_size": 2})  # batch size decides the padding
    engine.complete([[1, 2], [3]], **SETTINGS | {"temperature": 0.7})
    CachedEngine(inner, "model-b", tmp_path).complete([[1, 2], [3]], **SETTINGS)
    assert inner.calls == 5
    assert engine.tok == "the tokenizer"  # the rest of the engine passes through


def test_greedy_ignores_the_seed_but_sampling_does_not(tmp_path):
    inner = Counting()
    engine = CachedEngine(inner, "m", tmp_path)
    engine.complete([[1]], **SETTINGS)
    engine.complete([[1]], **SETTINGS | {"seed": 4})
    assert inner.calls == 1
    engine.complete([[1]], **SETTINGS | {"temperature": 1.0})
    engine.complete([[1]], **SETTINGS | {"temperature": 1.0, "seed": 4})
    assert inner.calls == 3


def test_a_damaged_entry_is_recomputed(tmp_path):
    inner = Counting()
    CachedEngine(inner, "m", tmp_path).complete([[5]], **SETTINGS)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(entry.read_text()[:20])  # cut short, as by a full disk
    engine = CachedEngine(inner, "m", tmp_path)
    assert engine.complete([[5]], **SETTINGS) == ["[5]@2"] and engine.misses == 1
    assert CachedEngine(inner, "m", tmp_path).complete([[5]], **SETTINGS) == ["[5]@2"]  # rewritten whole


def test_folder_digest_follows_names_and_bytes(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"weights")
    (a / "config.json").write_text("{}")
    d = folder_digest(a)
    (a / "config.json").write_text("{ }")
    assert folder_digest(a) != d
    (a / "config.json").write_text("{}")
    assert folder_digest(a) == d
    (a / "config.json").rename(a / "other.json")
    assert folder_digest(a) != d
