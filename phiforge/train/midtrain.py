"""Stage `midtrain`: context extension (Phi-4 §3.3), from the pretrained model to a longer sequence.

The RoPE base is raised (`midtrain.rope_theta`) and training continues at `midtrain.seq_len` with a tenth of the
pretraining peak LR, on a mix of natively long documents (`long_fraction`) and "recall" windows replayed from the
pretraining corpus. Our synthetic documents are short, so the long ones are built here from them: a *problem set*
of consecutive exercises of one domain, numbered, with their solutions, then an answer key restating each exercise
number with its final answer (predicting the key means looking hundreds of tokens back), then further exercises
left for practice. A long window is always the start of one such document, never short documents joined together:
the paper found natively long documents beat concatenated ones.

The stage reports the loss by position bucket, on held-out long documents and held-out replay windows, for the
pretrained model (with its own RoPE base and with the raised one, untrained) and for the midtrained model.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from phiforge import stages
from phiforge.config import OptimConfig, Recipe
from phiforge.data import corpus
from phiforge.data.corpus import stable_fraction
from phiforge.errors import PhiforgeError
from phiforge.lm.checkpoint import export_model, load_model
from phiforge.lm.model import Phi3
from phiforge.lm.tokenizer import ChatTokenizer
from phiforge.rundir import RunDir, atomic_write_json
from phiforge.train import distributed
from phiforge.train.optim import autocast
from phiforge.train.pretrain import PackedTokens, Windows, evaluate_loss, to_batch, tokenize_corpus, train_loop

MIN_PROBLEMS = 2  # a one-problem set has no recall across problems


# ------------------------------------------------------------------------------------------- the model


def with_rope_theta(model: Phi3, theta: float) -> Phi3:
    """The same weights under another RoPE base: a model built from the new config (its rotary tables come from
    `cfg.rope_theta`), so the new base is really used, not just recorded."""
    cfg = dataclasses.replace(model.cfg, rope_theta=float(theta))
    with torch.device("meta"):
        out = Phi3(cfg)
    out.to_empty(device=next(model.parameters()).device)  # builds the rotary tables for the new base
    out.load_state_dict(model.state_dict())
    return out


def midtrain_optim(recipe: Recipe) -> OptimConfig:
    """Pretraining's optimiser with the peak LR scaled down (Phi-4: max LR / 10) and midtraining's own warm-up."""
    mt = recipe.midtrain
    return dataclasses.replace(recipe.pretrain.optim, lr=recipe.pretrain.optim.lr * mt.lr_scale,
                               warmup_steps=mt.warmup_steps)


# -------------------------------------------------------------------------------------- long documents


# Only phrasing the corpus already has (Exercise, Solution, The answer is \boxed{...}): the tokenizer was trained on
# that corpus, so these are whole tokens the model knows, and the loss measures the context rather than new words.
def problem_entry(k: int, row: dict) -> str:
    # An exercise reads "Exercise: {question}\nSolution: {solution}"; in a set it gets its number.
    return f"Exercise {k}: {row['text'].removeprefix('Exercise: ')}\n"


def key_entry(k: int, row: dict) -> str:
    return f"The answer to Exercise {k} is \\boxed{{{row['answer']}}}.\n"


def practice_entry(k: int, row: dict) -> str:
    return f"Exercise {k}: {row['question']}\n"


def problem_set(problems: list[dict], practice: list[dict]) -> tuple[str, int, int]:
    """The document text, and where (in characters) its exercises end and its answer key ends.

    Exercises 1..n with their worked solutions, then the answer key restating each exercise number with its final
    answer, then further exercises n+1.. with no solution (practice left to the reader)."""
    n = len(problems)
    body = "".join(problem_entry(k + 1, r) for k, r in enumerate(problems))
    key = "".join(key_entry(k + 1, r) for k, r in enumerate(problems))
    tail = "".join(practice_entry(n + k + 1, r) for k, r in enumerate(practice))
    return body + key + tail, len(body), len(body) + len(key)


def exercise_rows(run: RunDir) -> list[dict]:
    """The synth pretraining documents in the exercise style that decontamination kept, in corpus order, whose
    answer fits on one line."""
    rows, drop = [], corpus.dropped(run)
    for shard in corpus.shards(run, "pretrain"):
        rows += [r for r in corpus.read_rows(shard, ["id", "text", "question", "answer", "domain", "style"], drop)
                 if r["style"] == "exercise" and r["text"].startswith("Exercise: ") and "\n" not in r["answer"]]
    return rows


def build_problem_sets(rows: list[dict], tok: ChatTokenizer, seq_len: int) -> list[dict]:
    """Problem sets of at least seq_len + 1 tokens whose answer key ends within the first seq_len + 1 tokens.

    Per domain, consecutive exercises go into a set while they and their key fit in the window; practice exercises
    follow until the document is longer than the window. Entry lengths are encoded once (the numbering changes them
    only by its digits, which are single tokens) and every document is checked by encoding it whole.
    """
    need = seq_len + 1
    pools: dict[str, list[dict]] = {}
    for r in rows:
        pools.setdefault(r["domain"], []).append(r)
    docs = []
    for domain in sorted(pools):
        pool = pools[domain]
        # token counts at number 1, plus one token per extra digit of the real number
        lp, lk, lq = (np.array([len(x) for x in tok.encode_batch([f(1, r) for r in pool])])
                      for f in (problem_entry, key_entry, practice_entry))
        extra = lambda k: len(str(k)) - 1  # noqa: E731
        i = 0
        while i < len(pool):
            k, used = 0, 0
            while i + k < len(pool) and used + lp[i + k] + lk[i + k] + 2 * extra(k + 1) <= need:
                used += lp[i + k] + lk[i + k] + 2 * extra(k + 1)
                k += 1
            if k < MIN_PROBLEMS:  # exercises too long for this window: try the set one exercise later
                i += 1
                continue
            j = i + k
            while j < len(pool) and used <= need:
                used += lq[j] + extra(j - i + 1)
                j += 1
            text, _, key_end = problem_set(pool[i : i + k], pool[i + k : j])
            ids = tok.encode(text)
            while len(ids) < need and j < len(pool):  # the estimate fell short: one more practice exercise
                j += 1
                text, _, key_end = problem_set(pool[i : i + k], pool[i + k : j])
                ids = tok.encode(text)
            if len(ids) < need:
                break  # the domain's pool is used up
            if len(tok.encode(text[:key_end])) <= need:
                docs.append({"domain": domain, "text": text, "ids": ids, "problems": pool[i : i + k],
                             "practice": pool[i + k : j]})
            i = j
    return docs


class LongDocs(Windows):
    """One window per long document: its first seq_len + 1 tokens, shuffled once per epoch."""

    def __init__(self, docs: list[dict], seq_len: int, seed: int):
        self.seq_len, self.seed, self.n = seq_len, seed, len(docs)
        self.rows = np.array([d["ids"][: seq_len + 1] for d in docs], dtype=np.int64).reshape(-1, seq_len + 1)
        self._epoch, self._order = -1, None

    def window(self, i: int) -> np.ndarray:
        return self.rows[i]


class Mixture:
    """Long-document windows at `long_fraction`, replayed pretraining windows otherwise.

    Sample p is long iff floor((p + 1) f) > floor(p f): any run of n consecutive samples holds floor(n f) or
    ceil(n f) long ones, and which sample is which is a pure function of p, so a resumed run sees the same batches.
    """

    def __init__(self, long: LongDocs | None, replay: PackedTokens, long_fraction: float):
        self.long, self.replay = long, replay
        self.frac = Fraction(long_fraction).limit_denominator(1000)
        if self.frac > 0 and (long is None or long.n == 0):
            raise PhiforgeError("midtrain.long_fraction > 0 but no long document could be built; raise "
                                "synth.n_pretrain or lower midtrain.seq_len")

    def longs_before(self, p: int) -> int:
        return p * self.frac.numerator // self.frac.denominator

    def is_long(self, p: int) -> bool:
        return self.longs_before(p + 1) > self.longs_before(p)

    def sample(self, p: int) -> np.ndarray:
        k = self.longs_before(p)
        return self.long.sample(k) if self.is_long(p) else self.replay.sample(p - k)

    def batch(self, position: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_batch([self.sample(p) for p in range(position, position + size)])


# ---------------------------------------------------------------------------------- loss by position


def answer_mask(doc: dict, tok: ChatTokenizer, seq_len: int) -> np.ndarray:
    """[seq_len] bool over a window's targets: True where the target is an answer token in the answer key, the
    tokens predicted by looking up that exercise's answer hundreds of tokens back (or by solving it again)."""
    mask = np.zeros(seq_len, dtype=bool)
    text, body_end, key_end = problem_set(doc["problems"], doc["practice"])
    at = body_end
    for k, r in enumerate(doc["problems"], 1):
        start = at + len(f"The answer to Exercise {k} is \\boxed{{")
        lo, hi = len(tok.encode(text[:start])), len(tok.encode(text[: start + len(r["answer"])]))
        mask[max(0, lo - 1) : min(seq_len, hi - 1)] = True  # token j is the target at window position j - 1
        at += len(key_entry(k, r))
    return mask


@torch.no_grad()
def token_losses(model: Phi3, windows: np.ndarray, batch_size: int, dtype: str, dev: torch.device) -> np.ndarray:
    """Next-token loss [N, T] of every target in windows [N, T + 1]."""
    model.eval()
    out = []
    for s in range(0, len(windows), batch_size):
        arr = torch.from_numpy(windows[s : s + batch_size].astype(np.int64)).to(dev)
        with autocast(dtype, dev):
            logits = model(arr[:, :-1])
        out.append(F.cross_entropy(logits.float().transpose(1, 2), arr[:, 1:], reduction="none").cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, windows.shape[1] - 1))


def buckets(per_position: np.ndarray, width: int) -> list[float]:
    return [round(float(per_position[a : a + width].mean()), 4) for a in range(0, len(per_position), width)]


def position_report(recipe: Recipe, run: RunDir, held_long: np.ndarray, held_replay: np.ndarray,
                    answers: np.ndarray) -> dict:
    """Loss by position bucket for the pretrained model (its own and the raised RoPE base) and the midtrained one,
    and their loss on the answer-key answers of the held-out long documents (`answers`, a mask like held_long's
    targets)."""
    mt, dev = recipe.midtrain, distributed.world().device
    pretrained, _, _ = load_model(stages.model_dir(run, "pretrain", "midtrain"))
    midtrained, _, _ = load_model(run.stage_dir("midtrain") / "model")  # the export, so its config.json is tested
    models = {"pretrain": pretrained, "pretrain_rope": with_rope_theta(pretrained, mt.rope_theta),
              "midtrain": midtrained}
    cut = recipe.pretrain.seq_len
    out = {"buckets": [[a, min(a + mt.bucket, mt.seq_len)] for a in range(0, mt.seq_len, mt.bucket)],
           "pretrain_seq_len": cut,
           "rope_theta": {name: float(m.cfg.rope_theta) for name, m in models.items()},
           "windows": {"long": len(held_long), "replay": len(held_replay)},
           "answer_key_tokens": int(answers.sum()), "answer_key_loss": {}}
    for kind, windows in (("long", held_long), ("replay", held_replay)):
        out[kind], out[f"{kind}_beyond_pretrain_seq_len"] = {}, {}
        if len(windows) == 0:
            continue
        for name, model in models.items():
            nll = token_losses(model.to(dev), windows, mt.batch_size, mt.dtype, dev)
            per = nll.mean(0)
            out[kind][name] = buckets(per, mt.bucket)
            out[f"{kind}_beyond_pretrain_seq_len"][name] = round(float(per[cut:].mean()), 4)
            if kind == "long" and answers.any():
                out["answer_key_loss"][name] = round(float(nll[answers].mean()), 4)
    return out


# -------------------------------------------------------------------------------------------- the stage


def split_rows(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """Pretraining's own split (by a hash of the document id), so held-out long documents are built only from
    exercises neither the pretrained nor the midtrained model trained on."""
    train, held = [], []
    for r in rows:
        (held if stable_fraction(r["id"]) < val_fraction else train).append(r)
    return train, held


def execute(recipe: Recipe, run: RunDir) -> dict:
    cfg, pre = recipe.midtrain, recipe.pretrain
    stage = run.stage_dir("midtrain")
    mcfg = dataclasses.replace(recipe.model, rope_theta=cfg.rope_theta)
    optim = midtrain_optim(recipe)
    fingerprint = stages.fingerprint(recipe, run, "midtrain")
    tok = ChatTokenizer.load(stages.input_path(run, "tokenizer", "midtrain"))
    train_tokens, val_tokens, _ = tokenize_corpus(run, tok, pre.val_fraction)
    train_rows, held_rows = split_rows(exercise_rows(run), pre.val_fraction)
    train_docs = build_problem_sets(train_rows, tok, cfg.seq_len)
    held_docs = build_problem_sets(held_rows, tok, cfg.seq_len)
    if not held_docs:
        raise PhiforgeError(
            f"midtrain: the held-out exercises ({len(held_rows)}, pretrain.val_fraction={pre.val_fraction}) make no "
            f"problem set of midtrain.seq_len={cfg.seq_len} tokens; raise synth.n_pretrain or pretrain.val_fraction"
        )
    long = LongDocs(train_docs, cfg.seq_len, cfg.seed)
    replay = PackedTokens(train_tokens, cfg.seq_len, cfg.seed, key="midtrain.seq_len")
    data = Mixture(long, replay, cfg.long_fraction)
    held_long = LongDocs(held_docs, cfg.seq_len, cfg.seed)
    held_replay = PackedTokens(val_tokens, cfg.seq_len, cfg.seed, key="midtrain.seq_len")
    dev = distributed.world().device

    def validate(model: torch.nn.Module) -> dict:
        args = (cfg.val_batches, cfg.batch_size, cfg.dtype, dev)
        return {"long_loss": evaluate_loss(model, held_long, *args),
                "replay_loss": evaluate_loss(model, held_replay, *args)}

    def build() -> Phi3:
        model, _, _ = load_model(stages.model_dir(run, "pretrain", "midtrain"))
        return with_rope_theta(model, cfg.rope_theta)

    t = train_loop("midtrain", cfg, optim, mcfg, tok, build, data, validate, stage / "checkpoints", fingerprint,
                   lr_key="midtrain.lr_scale")
    w = distributed.world()
    metrics: dict = {}
    if w.main:
        export_model(None, mcfg, tok, stage / "model", state_dict=t.model_sd)
        n_eval = cfg.eval_windows
        held_windows = np.stack([held_replay.window(i) for i in range(min(n_eval, held_replay.n))])
        answers = np.stack([answer_mask(d, tok, cfg.seq_len) for d in held_docs[:n_eval]])
        by_position = position_report(recipe, run, held_long.rows[:n_eval], held_windows, answers)
        atomic_write_json(stage / "history.json", {**t.history, "by_position": by_position})
        n_long = data.longs_before(cfg.steps * cfg.batch_size * cfg.grad_accum * w.size)
        metrics = {
            "seq_len": cfg.seq_len,
            "rope_theta": {"before": float(recipe.model.rope_theta), "after": float(cfg.rope_theta)},
            "peak_lr": optim.lr,
            "long_docs": long.n,
            "held_out_long_docs": held_long.n,
            "problems_per_doc": round(float(np.mean([len(d["problems"]) for d in train_docs])), 2) if train_docs else 0,
            "long_windows_trained": int(n_long),
            "long_fraction": cfg.long_fraction,
            "replay_windows": replay.n,
            "params": t.params,
            "world_size": w.size,
            "steps": cfg.steps,
            "tokens_per_step": t.tokens_per_step,
            "tokens_trained": cfg.steps * t.tokens_per_step,
            "final_train_loss": t.history["train"][-1]["loss"],
            "final_val_long_loss": t.history["val"][-1]["long_loss"],
            "final_val_replay_loss": t.history["val"][-1]["replay_loss"],
            "by_position": by_position,
            "resumed_from": t.resumed_from,
            "tokens_per_s": t.tokens_per_s,
            "mfu": t.mfu,
        }
    distributed.barrier()
    return metrics


def outputs(run: RunDir) -> list[Path]:
    """The extended model and loss history; checkpoints are scaffolding for resuming, not results."""
    stage = run.stage_dir("midtrain")
    return [stage / "model", stage / "history.json"]
