"""Midtraining (context extension): recipe checks, long problem-set documents, the long/replay mixture, the raised
RoPE base, the per-position loss after extension, and resuming like pretraining."""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml

from conftest import MICRO
from phiforge.train import midtrain
from phiforge.train import pretrain
from phiforge.lm.checkpoint import load_model
from phiforge.config import recipe_from_dict
from phiforge.errors import PhiforgeError
from phiforge.lm.model import ModelConfig, Phi3
from phiforge.pipeline import BY_NAME, is_current, prepare, run_pipeline, run_stage
from phiforge.rundir import RunDir
from phiforge.lm.tokenizer import ChatTokenizer


def micro(**overrides) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(MICRO))
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A micro run through midtraining, in process."""
    recipe = recipe_from_dict(micro())
    run = prepare(recipe, tmp_path_factory.mktemp("mid") / "run")
    for name in ("synth", "organic", "decontam", "tokenizer", "pretrain", "midtrain"):
        run_stage(recipe, run, BY_NAME[name])
    return recipe, run


@pytest.mark.parametrize("overrides, needle", [
    ({"midtrain.seq_len": 4096}, "midtrain.seq_len (4096) must be <= model.max_seq_len (320)"),
    ({"midtrain.seq_len": 64}, "midtrain.seq_len (64) must be > pretrain.seq_len (64)"),
    ({"midtrain.long_fraction": 1.5}, "midtrain.long_fraction must be in [0, 1]"),
    ({"midtrain.rope_theta": 0}, "midtrain.rope_theta must be positive"),
    ({"midtrain.warmup_steps": 10}, "midtrain.warmup_steps (10) must be >= 0 and < midtrain.steps (10)"),
    ({"midtrain.lr_scale": -1}, "midtrain.lr_scale must be positive"),
    ({"midtrain.bucket": 0}, "midtrain.bucket (0) must be in"),
    ({"midtrain.seq_lenn": 3}, "'midtrain.seq_lenn'"),
])
def test_bad_midtrain_recipes_name_the_key(overrides, needle):
    with pytest.raises(PhiforgeError) as e:
        recipe_from_dict(micro(**overrides), source="r.yaml")
    assert needle in str(e.value)


def test_stage_sits_between_pretrain_and_sft():
    assert BY_NAME["midtrain"].inputs == ("synth", "decontam", "tokenizer", "pretrain")
    assert BY_NAME["midtrain"].distributed
    assert BY_NAME["sft"].inputs == ("synth", "decontam", "midtrain")
    r = recipe_from_dict(micro())
    assert midtrain.midtrain_optim(r).lr == pytest.approx(r.pretrain.optim.lr / 10)


def test_long_documents_are_whole_problem_sets_with_a_matching_key(done):
    recipe, run = done
    tok = ChatTokenizer.load(run.stage_dir("tokenizer"))
    rows = midtrain.exercise_rows(run)
    seq = recipe.midtrain.seq_len
    docs = midtrain.build_problem_sets(rows, tok, seq)
    assert len(docs) >= 20
    order = {r["id"]: i for i, r in enumerate(rows)}
    for d in docs:
        text, probs, practice = d["text"], d["problems"], d["practice"]
        k = len(probs)
        assert k >= midtrain.MIN_PROBLEMS and len(d["ids"]) >= seq + 1
        # consecutive exercises of one domain: numbered 1..k with their solutions, then the rest for practice
        same = [r for r in rows if r["domain"] == d["domain"]]
        start = same.index(probs[0])
        assert probs + practice == same[start : start + k + len(practice)]
        assert all(order[a["id"]] < order[b["id"]] for a, b in zip(probs, probs[1:]))
        again, body_end, key_end = midtrain.problem_set(probs, practice)
        assert again == text
        body, key, rest = text[:body_end], text[body_end:key_end], text[key_end:]
        entries = re.split(r"^Exercise \d+: ", body, flags=re.M)[1:]
        assert [e.split("\nSolution: ")[0] for e in entries] == [r["question"] for r in probs]
        assert [e.rstrip("\n") for e in entries] == [r["text"].removeprefix("Exercise: ") for r in probs]
        assert all(f"\\boxed{{{r['answer']}}}" in e for e, r in zip(entries, probs))
        # the key restates every exercise number with that exercise's final answer, in order
        assert key.splitlines() == [f"The answer to Exercise {i} is \\boxed{{{r['answer']}}}." for i, r in
                                    enumerate(probs, 1)]
        assert rest.splitlines() == [f"Exercise {i}: {r['question']}" for i, r in enumerate(practice, k + 1)]
        # the whole key is inside the training window, and the window is this one document from its start
        assert len(tok.encode(text[:key_end])) <= seq + 1
        window = d["ids"][: seq + 1]
        assert tok.endoftext_id not in window and tok.decode(window) == text[: len(tok.decode(window))]
        # the answer-key answers are the targets the recall metric scores
        mask = midtrain.answer_mask(d, tok, seq)
        assert tok.decode([window[j + 1] for j in np.flatnonzero(mask)]) == "".join(r["answer"] for r in probs)


def test_mixture_fraction_holds_and_batches_depend_only_on_position():
    long_docs = midtrain.LongDocs([{"ids": list(range(1000, 1000 + 33 + i))} for i in range(7)], 32, seed=0)
    replay = pretrain.PackedTokens(np.arange(5000, dtype=np.int32) % 900, 32, seed=0)
    mix = midtrain.Mixture(long_docs, replay, 0.3)
    counts = []
    for b in range(40):
        x, y = mix.batch(b * 8, 8)
        assert x.shape == y.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])
        is_long = (x[:, 0] >= 1000).tolist()
        assert is_long == [mix.is_long(p) for p in range(b * 8, b * 8 + 8)]
        counts.append(sum(is_long))
    assert set(counts) <= {2, 3} and sum(counts) == int(0.3 * 320)
    # long windows are whole documents from their first token, each used once per epoch
    firsts = [int(mix.sample(p)[0]) for p in range(100) if mix.is_long(p)]
    assert all(f == 1000 for f in firsts)
    fresh = midtrain.Mixture(long_docs, pretrain.PackedTokens(np.arange(5000, dtype=np.int32) % 900, 32, 0), 0.3)
    assert torch.equal(fresh.batch(96, 8)[0], mix.batch(96, 8)[0])
    assert all(not midtrain.Mixture(long_docs, replay, 0.0).is_long(p) for p in range(50))
    with pytest.raises(PhiforgeError, match="no long document"):
        midtrain.Mixture(None, replay, 0.3)


def test_raised_rope_base_is_really_used():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ffn=64, max_seq_len=64)
    torch.manual_seed(0)
    model = Phi3(cfg)
    raised = midtrain.with_rope_theta(model, 40000.0)
    assert raised.cfg.rope_theta == 40000.0 and model.cfg.rope_theta == 10000.0
    hd = cfg.head_dim
    expected = 1.0 / (40000.0 ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    torch.testing.assert_close(raised.rope_inv_freq, expected)
    reference = Phi3(dataclasses.replace(cfg, rope_theta=40000.0))
    reference.load_state_dict(model.state_dict())
    x = torch.randint(0, 64, (2, 48))
    with torch.no_grad():
        assert torch.equal(raised(x), reference(x))
        assert not torch.allclose(raised(x), model(x))


def test_exported_model_carries_the_new_rope_base(done):
    recipe, run = done
    cfg = json.loads((run.stage_dir("midtrain") / "model" / "config.json").read_text())
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == recipe.midtrain.rope_theta
    model, mcfg, _ = load_model(run.stage_dir("midtrain") / "model")
    assert mcfg.rope_theta == recipe.midtrain.rope_theta != recipe.model.rope_theta
    assert load_model(run.stage_dir("pretrain") / "model")[1].rope_theta == recipe.model.rope_theta


def test_midtraining_lowers_loss_beyond_the_pretraining_context(done):
    recipe, run = done
    m = run.manifest("midtrain")["metrics"]
    bp = m["by_position"]
    assert bp["buckets"][0] == [0, 64] and bp["buckets"][-1] == [256, 320]
    assert bp["rope_theta"] == {"pretrain": 10000.0, "pretrain_rope": 40000.0, "midtrain": 40000.0}
    for kind in ("long", "replay"):
        assert set(bp[kind]) == {"pretrain", "pretrain_rope", "midtrain"}
        assert all(len(v) == 5 for v in bp[kind].values())
    assert set(bp["answer_key_loss"]) == {"pretrain", "pretrain_rope", "midtrain"} and bp["answer_key_tokens"] > 0
    beyond = bp["long_beyond_pretrain_seq_len"]
    assert beyond["midtrain"] < beyond["pretrain"] - 0.02
    assert all(a < b for a, b in zip(bp["long"]["midtrain"][1:], bp["long"]["pretrain"][1:]))
    history = json.loads((run.stage_dir("midtrain") / "history.json").read_text())
    assert history["by_position"] == bp and {"long_loss", "replay_loss"} <= set(history["val"][-1])
    assert 0 < m["long_windows_trained"] < m["steps"] * recipe.midtrain.batch_size


class Crash(Exception):
    pass


def test_resume_after_a_crash_matches_the_uninterrupted_run_and_reruns_skip(done, tmp_path, monkeypatch):
    recipe, reference = done
    root = tmp_path / "run"
    shutil.copytree(reference.root, root)
    run = RunDir.open(root)
    run.invalidate("midtrain")
    shutil.rmtree(run.stage_dir("midtrain"))
    real = pretrain.save_training_state

    def save_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(pretrain, "save_training_state", save_then_crash)
    with pytest.raises(Crash):
        run_stage(recipe, run, BY_NAME["midtrain"])
    assert run.manifest("midtrain") is None
    monkeypatch.undo()
    run_stage(recipe, run, BY_NAME["midtrain"])
    m = run.manifest("midtrain")["metrics"]
    assert m["resumed_from"] == "step-000005"

    def losses(r):
        h = json.loads((r.stage_dir("midtrain") / "history.json").read_text())
        return [{f: e[f] for f in ("step", "loss", "lr", "grad_norm", "long_loss", "replay_loss") if f in e}
                for e in h["train"] + h["val"]]

    assert losses(run) == losses(reference)
    assert is_current(recipe, run, BY_NAME["midtrain"])
    before = run.manifest_path("midtrain").stat().st_mtime_ns
    run_pipeline(recipe, root, only=["midtrain"])
    assert run.manifest_path("midtrain").stat().st_mtime_ns == before
    # a changed midtraining section reruns it, and the checkpoints of the old one are not resumed
    changed = recipe_from_dict(micro(**{"midtrain.rope_theta": 20000.0}))
    assert not is_current(changed, run, BY_NAME["midtrain"])
