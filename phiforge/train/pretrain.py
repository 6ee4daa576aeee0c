"""Stage `pretrain`: next-token training on the packed corpus, resumable from its last intact checkpoint.

The data order is a pure function of (seed, epoch) and the step counter, and each checkpoint holds the model, the
optimiser, the RNG and that counter, so a resumed run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from phiforge import stages
from phiforge.config import LoopConfig, OptimConfig, Recipe
from phiforge.data import corpus, mixture
from phiforge.data.corpus import stable_fraction
from phiforge.errors import PhiforgeError
from phiforge.lm import flops
from phiforge.lm.checkpoint import (export_model, list_checkpoints, newest_intact, prune_checkpoints,
                                    save_training_state, warn)
from phiforge.lm.model import ModelConfig, Phi3
from phiforge.lm.tokenizer import ChatTokenizer
from phiforge.rundir import RunDir, atomic_write_json
from phiforge.train import distributed
from phiforge.train.optim import autocast, build_optimizer, clip_and_step, cross_entropy, lr_at, set_lr


class Windows:
    """Training windows of seq_len + 1 tokens, read in a fresh seeded permutation each epoch.

    A subclass sets `n`, `seq_len`, `seed` and `window(i)`; global sample positions then run across epochs."""

    n: int
    seq_len: int
    seed: int
    _epoch: int = -1
    _order: np.ndarray | None = None

    def window(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, p: int) -> np.ndarray:
        """Global sample `p`: window order[p mod n] of epoch p // n."""
        epoch, k = divmod(p, self.n)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self.window(int(self._order[k]))

    def batch(self, position: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `size` windows starting at global sample `position`, as (inputs, next-token targets)."""
        return to_batch([self.sample(p) for p in range(position, position + size)])


class PackedTokens(Windows):
    """Documents joined by `<|endoftext|>` and cut into windows of seq_len + 1 tokens, shuffled once per epoch."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, key: str = "pretrain.seq_len"):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise PhiforgeError(
                f"{len(tokens)} tokens cannot fill one sequence of {key}={seq_len}; "
                f"raise synth.n_pretrain or pretrain.val_fraction, or lower {key}"
            )
        self._epoch, self._order = -1, None

    def window(self, i: int) -> np.ndarray:
        return self.tokens[i * self.seq_len : (i + 1) * self.seq_len + 1]


def to_batch(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    arr = torch.from_numpy(np.stack(rows).astype(np.int64))
    return arr[:, :-1], arr[:, 1:]


def tokenize_corpus(run: RunDir, tok: ChatTokenizer, val_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every synthetic pretraining document decontamination kept, tokenised; a hash of its id sends it to train or
    validation."""
    drop = corpus.dropped(run)
    train, val = [], []
    n_docs = n_val = 0
    eot = tok.endoftext_id
    for shard in tqdm(corpus.shards(run, "pretrain"), desc="tokenize", unit="shard", leave=False):
        rows = corpus.read_rows(shard, ["id", "text"], drop)
        for doc_id, enc in zip([r["id"] for r in rows], tok.encode_batch([r["text"] for r in rows])):
            to_val = (stable_fraction(doc_id) < val_fraction)
            (val if to_val else train).append(np.asarray(enc + [eot], dtype=np.int32))
            n_docs += 1
            n_val += to_val
    dtype = np.uint16 if tok.vocab_size < 2**16 else np.int32
    cat = lambda xs: np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)  # noqa: E731
    t, v = cat(train), cat(val)
    return t, v, {"docs": n_docs, "val_docs": n_val, "train_tokens": int(len(t)), "val_tokens": int(len(v))}


@dataclass
class Corpus:
    """The pretraining stream of the mixture: tokens, which source each token came from, and the plan behind it."""

    train: np.ndarray
    train_sources: np.ndarray  # index into `plans` per token
    val: np.ndarray
    plans: list
    stats: dict


def source_documents(run: RunDir, tok: ChatTokenizer, val_fraction: float) -> dict[str, tuple[list, list]]:
    """Every mixture source's documents that decontamination kept, tokenised and ended by `<|endoftext|>`, as
    (train, validation) lists; a hash of the id splits them, the same way in every stage that splits."""
    drop, eot = corpus.dropped(run), tok.endoftext_id
    kinds = {"synthetic": "pretrain", **{s: s for s in corpus.ORGANIC_SOURCES}}
    out: dict[str, tuple[list, list]] = {}
    for source, kind in kinds.items():
        train, val = [], []
        for shard in tqdm(corpus.shards(run, kind), desc=f"tokenize {source}", unit="shard", leave=False):
            rows = [(r["id"], r["text"]) for r in corpus.read_rows(shard, ["id", "text"], drop)]
            for (doc_id, _), enc in zip(rows, tok.encode_batch([t for _, t in rows])):
                (val if stable_fraction(doc_id) < val_fraction else train).append(np.asarray(enc + [eot], np.int32))
        out[source] = (train, val)
    return out


def mixed_corpus(recipe: Recipe, run: RunDir, tok: ChatTokenizer, budget: int) -> Corpus:
    """Exactly `budget` training tokens in the shares of `mixture.shares` (phiforge/data/mixture.py), and a validation
    stream in the same shares, cut from each source's held-out documents without repeating any."""
    mx = recipe.mixture
    docs = source_documents(run, tok, recipe.pretrain.val_fraction)
    for source, cap in mx.unique_tokens.items():
        train, val = docs[source]
        ends = np.cumsum([len(d) for d in train])
        docs[source] = (train[: max(1, int(np.searchsorted(ends, cap, side="right")))], val)
    unique = {s: int(sum(map(len, tr))) for s, (tr, _) in docs.items()}
    plans = mixture.plan(mx.shares, unique, budget, mx.max_epochs)
    if distributed.world().main:
        print("[phiforge] " + mixture.plan_table(plans, budget).replace("\n", "\n[phiforge] "), file=sys.stderr,
              flush=True)
    train, sources = mixture.build_stream({p.source: docs[p.source][0] for p in plans}, plans, mx.seed)
    # one token more than the budget, so the packed windows (seq_len + 1 tokens each) cover it exactly
    train = np.concatenate([train, [tok.endoftext_id]])
    sources = np.concatenate([sources, sources[-1:]])
    val_tokens = {p.source: int(sum(map(len, docs[p.source][1]))) for p in plans}
    held = [p for p in plans if val_tokens[p.source]]
    scale = min(val_tokens[p.source] / p.share for p in held) if held else 0
    val = [np.concatenate(docs[p.source][1])[: int(p.share * scale)] for p in held]
    dtype = np.uint16 if tok.vocab_size < 2**16 else np.int32
    val = np.concatenate(val).astype(dtype) if val else np.zeros(0, dtype)
    stats = {"docs": sum(len(tr) + len(va) for tr, va in docs.values()),
             "val_docs": sum(len(va) for _, va in docs.values()),
             "train_tokens": int(len(train)), "val_tokens": int(len(val)),
             "unique_train_tokens": unique, "val_tokens_by_source": {p.source: int(p.share * scale) for p in held}}
    return Corpus(train.astype(dtype), sources, val, plans, stats)


def consumed_windows(n: int, samples: int, seed: int) -> np.ndarray:
    """The window index of each of the first `samples` global sample positions of `PackedTokens.sample`."""
    out, p = [], 0
    for epoch in range(samples // n + 1):
        take = min(n, samples - p)
        if take <= 0:
            break
        out.append(np.random.default_rng([seed, epoch]).permutation(n)[:take])
        p += take
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@torch.no_grad()
def evaluate_loss(model: Phi3, data: Windows, batches: int, batch_size: int, dtype: str, dev: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    n = min(batches * batch_size, data.n)
    for start in range(0, n, batch_size):
        rows = [data.window(i) for i in range(start, min(n, start + batch_size))]
        arr = torch.from_numpy(np.stack(rows).astype(np.int64)).to(dev)
        with autocast(dtype):
            logits = model(arr[:, :-1])
        loss, cnt = cross_entropy(logits, arr[:, 1:])
        total, count = total + float(loss), count + cnt
    model.train()
    return total / max(1, count)


@dataclass
class Trained:
    """What `train_loop` hands back: the loss history and the full weights (gathered for rank 0 to export)."""

    history: dict
    model_sd: dict
    params: int
    resumed_from: str | None
    tokens_per_step: int
    tokens_per_s: int
    mfu: float
    peak_flops: float


def train_loop(name: str, cfg: LoopConfig, optim: OptimConfig, mcfg: ModelConfig, tok: ChatTokenizer,
               build: Callable[[], Phi3], data, validate: Callable[[torch.nn.Module], dict], ckpt_root: Path,
               fingerprint: str, lr_key: str = "pretrain.optim.lr") -> Trained:
    """The resumable training loop every next-token stage shares (pretrain, midtrain).

    `cfg` is the stage's section (the `LoopConfig` fields); `fingerprint` is `stages.fingerprint` of the stage, which
    a checkpoint must have been made under to be resumed; `build` makes the starting model and runs after the seed is set;
    `data.batch(position, size)` gives the micro-batch at a global sample position, so a resumed run sees exactly the
    batches of an uninterrupted one; `validate(model)` returns the fields of one `history["val"]` entry; `lr_key`
    is the recipe key a diverging loss asks the user to lower.
    """
    w = distributed.world()
    dev = w.device
    torch.manual_seed(cfg.seed)
    model = build().to(dev)
    params = model.num_params()
    model = distributed.parallelize(model, cfg.parallel, w)
    opt = build_optimizer(model, optim)
    step, history = 0, {"train": [], "val": []}
    resumed_from = None
    found = newest_intact(ckpt_root, fingerprint, warn if w.main else lambda _: None)
    if found is not None:
        model_sd, optim_sd, state, resumed_from = found
        distributed.load_full_state(model, opt, model_sd, optim_sd)
        step, history = state["step"], state["history"]
    elif list_checkpoints(ckpt_root) and w.main:  # of another recipe or other data, or all damaged: of no use here
        shutil.rmtree(ckpt_root, ignore_errors=True)

    # One optimiser step consumes grad_accum x world micro-batches; rank r takes every world-th of them, so the
    # union over ranks is exactly the single-process step with grad_accum x world micro-batches.
    micro_per_step = cfg.grad_accum * w.size
    tokens_per_step = cfg.batch_size * micro_per_step * cfg.seq_len
    flops_per_token = flops.train_flops_per_token(mcfg, cfg.seq_len)
    peak = flops.peak_flops(dev, cfg.dtype) * w.size
    bar = tqdm(total=cfg.steps, initial=step, desc=name, unit="step", dynamic_ncols=True, disable=not w.main)
    t0, tokens_seen = time.perf_counter(), 0
    model.train()
    while step < cfg.steps:
        lr = lr_at(step, cfg.steps, optim)
        set_lr(opt, lr)
        step_loss, step_count = 0.0, 0
        mine = range(step * micro_per_step + w.rank, (step + 1) * micro_per_step, w.size)
        micro = [data.batch(m * cfg.batch_size, cfg.batch_size) for m in mine]
        n_targets = sum(int(y.numel()) for _, y in micro)
        for i, (x, y) in enumerate(micro):
            x, y = x.to(dev), y.to(dev)
            distributed.set_grad_sync(model, i == len(micro) - 1)
            with autocast(cfg.dtype, dev):
                logits = model(x)
            loss, cnt = cross_entropy(logits, y)
            (loss / n_targets).backward()
            step_loss, step_count = step_loss + float(loss.detach()), step_count + cnt
        gnorm = clip_and_step(model, opt, optim.grad_clip)
        step_loss, step_count = distributed.all_sum([step_loss, step_count], dev)
        step += 1
        tokens_seen += tokens_per_step
        train_loss = step_loss / step_count
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{name} loss is {train_loss} at step {step}; lower {lr_key}")
        elapsed = max(1e-9, time.perf_counter() - t0)
        rate = tokens_seen / elapsed
        mfu = rate * flops_per_token / peak
        if step % cfg.log_every == 0 or step == cfg.steps:
            history["train"].append({"step": step, "loss": train_loss, "lr": lr, "grad_norm": gnorm,
                                     "tokens_per_s": round(rate), "mfu": round(mfu, 4)})
        if step % cfg.val_every == 0 or step == cfg.steps:
            history["val"].append({"step": step, **validate(model)})
        bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", mfu=f"{mfu:.0%}", refresh=False)
        bar.update(1)
        if step % cfg.ckpt_every == 0 and step < cfg.steps:
            model_sd, optim_sd = distributed.full_state(model, opt)
            if w.main:
                state = {"step": step, "position": step * micro_per_step * cfg.batch_size,
                         "fingerprint": fingerprint, "world_size": w.size, "history": history}
                save_training_state(ckpt_root / f"step-{step:06d}", model_sd, optim_sd, mcfg, tok, state)
                prune_checkpoints(ckpt_root, cfg.keep_checkpoints)
            distributed.barrier()
    bar.close()
    elapsed = time.perf_counter() - t0
    model_sd, _ = distributed.full_state(model, opt)
    rate = tokens_seen / max(1e-9, elapsed)
    return Trained(history, model_sd, params, resumed_from, tokens_per_step, round(rate),
                   round(rate * flops_per_token / peak, 4), peak)


def execute(recipe: Recipe, run: RunDir) -> dict:
    cfg, mcfg = recipe.pretrain, recipe.model
    stage = run.stage_dir("pretrain")
    # Checkpoints only resume a run with the same recipe slice and the same inputs.
    fingerprint = stages.fingerprint(recipe, run, "pretrain")
    tok = ChatTokenizer.load(stages.input_path(run, "tokenizer", "pretrain"))
    w = distributed.world()
    # the tokens the training loop will read: the mixture is planned for exactly this budget
    samples = cfg.steps * cfg.grad_accum * w.size * cfg.batch_size
    corpus = mixed_corpus(recipe, run, tok, samples * cfg.seq_len)
    train_tokens, data_stats = corpus.train, corpus.stats
    train = PackedTokens(train_tokens, cfg.seq_len, cfg.seed)
    val = PackedTokens(corpus.val, cfg.seq_len, cfg.seed)
    dev = w.device

    def validate(model: torch.nn.Module) -> dict:
        return {"loss": evaluate_loss(model, val, cfg.val_batches, cfg.batch_size, cfg.dtype, dev)}

    t = train_loop("pretrain", cfg, cfg.optim, mcfg, tok, lambda: Phi3(mcfg), train, validate,
                   stage / "checkpoints", fingerprint)
    if w.main:
        export_model(None, mcfg, tok, stage / "model", state_dict=t.model_sd)
        atomic_write_json(stage / "history.json", t.history)
    distributed.barrier()

    # what training read, counted from the windows the loop drew, against what the plan asked for
    got = mixture.realised(corpus.train_sources, consumed_windows(train.n, samples, cfg.seed), cfg.seq_len,
                           len(corpus.plans))
    read = max(1, int(got.sum()))
    mix = [{**p, "realised_tokens": int(g), "realised_share": round(int(g) / read, 5)}
           for p, g in zip(mixture.plan_json(corpus.plans), got)]
    return {
        **data_stats,
        "mixture": mix,
        "params": t.params,
        "world_size": w.size,
        "parallel": cfg.parallel if w.size > 1 else "none",
        "steps": cfg.steps,
        "tokens_per_step": t.tokens_per_step,
        "tokens_trained": cfg.steps * t.tokens_per_step,
        "epochs": round(cfg.steps * t.tokens_per_step / max(1, len(train_tokens)), 3),
        "final_train_loss": t.history["train"][-1]["loss"],
        "final_val_loss": t.history["val"][-1]["loss"],
        "resumed_from": t.resumed_from,
        "tokens_per_s": t.tokens_per_s,
        "mfu": t.mfu,
        "peak_flops": t.peak_flops,
    }


def outputs(run: RunDir) -> list[Path]:
    """The model and loss history; checkpoints are scaffolding for resuming, not results."""
    stage = run.stage_dir("pretrain")
    return [stage / "model", stage / "history.json"]
