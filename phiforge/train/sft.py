"""Stage `sft`: supervised fine-tuning on ChatML conversations, loss on assistant tokens only.

Conversations are padded on the right with PAD (never EOS), and a target counts only where the loss mask from
`ChatTokenizer.encode_chat` is set: assistant content and its closing `<|im_end|>`, so the model learns to end a
turn but never learns to write the user's words. With `sft.init` set, the model is that transformers folder
instead of the run's midtrained one, rendered in the same chat format (phiforge/lm/hf.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from phiforge import stages
from phiforge.config import Recipe
from phiforge.data.corpus import read_column
from phiforge.errors import PhiforgeError
from phiforge.lm import gemma, hf
from phiforge.lm.checkpoint import export_model, load_model
from phiforge.lm.logprobs import CHUNK_ELEMENTS, target_logps
from phiforge.lm.tokenizer import ChatTokenizer
from phiforge.rundir import RunDir, atomic_write_json
from phiforge.train import lora
from phiforge.train.linear_ce import linear_cross_entropy
from phiforge.train.optim import IGNORE, autocast, build_optimizer, clip_and_step, cross_entropy, device, lr_at, set_lr


def build_example(tok: ChatTokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, targets) for one conversation; targets are IGNORE wherever the loss mask is off."""
    ids, mask = tok.encode_chat(messages)
    ids, mask = ids[: max_len + 1], mask[: max_len + 1]
    targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
    return ids[:-1], targets


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x, _ in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (ids, tgt) in enumerate(examples):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(tgt)] = torch.tensor(tgt)
    return x, y


def batches(n: int, batch_size: int, steps: int, seed: int, lengths=None, group: int = 0):
    """Index batches for each step: one permutation per epoch, seeded, so a rerun trains identically.

    With `lengths` and `group` > 0, each window of `group` batches of the permutation is sorted by length before it
    is cut into batches, which are then shuffled within the window: a batch pads to the length of examples like its
    own, not to the longest of a random draw (conversations here range from 40 to 380 tokens, and padding was most
    of the compute), while every example is still seen once per epoch and the window keeps the order random. A set
    smaller than one window is batched plainly: sorting several epochs of it together would fill a batch with copies
    of one example."""
    grouped = lengths is not None and group > 1 and n >= group * batch_size
    order, epoch = np.array([], dtype=np.int64), 0
    pos, ready = 0, []
    rng = np.random.default_rng([seed, 1 << 20])
    for _ in range(steps):
        if not ready:
            take = batch_size * (group if grouped else 1)
            if pos + take > len(order):
                order = np.concatenate([order[pos:], np.random.default_rng([seed, epoch]).permutation(n)])
                pos, epoch = 0, epoch + 1
            window = order[pos : pos + take]
            pos += take
            if grouped:
                window = window[np.argsort([lengths[i] for i in window], kind="stable")]
                cuts = [window[i : i + batch_size] for i in range(0, take, batch_size)]
                ready = [cuts[i] for i in rng.permutation(len(cuts))]
            else:
                ready = [window]
        yield ready.pop(0)


def loss_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the targets of ids `x` that are not IGNORE in `y`, and how many there were.

    A batch whose [B, T, V] logits are small (phiforge's own models: 16 x 384 x 1,024) goes through the model's
    forward whole. A large one (Gemma 3: a 262,144-token head) stops at the hidden states and sends only the target
    positions through the head, a chunk at a time, fused with the loss (`linear_cross_entropy`; `target_logps` for a
    model that cannot hand out its head's weight): the prompt and padding positions, often most of a batch, never get
    logits, and memory holds one chunk's [rows, V] instead of the batch's.
    """
    vocab = getattr(model, "vocab_size", None)
    if vocab is None or x.numel() * vocab <= CHUNK_ELEMENTS:
        with autocast(dtype, x.device):
            logits = model(x)
        return cross_entropy(logits, y)  # fp32 outside autocast
    keep = y != IGNORE
    with autocast(dtype, x.device):
        hidden = model(x, return_hidden=True)[keep]
        if not hasattr(model, "head_weight"):
            return -target_logps(model.head, hidden, y[keep], vocab).sum(), int(keep.sum())
        weight, rows, cap = model.head_weight()
        rows = None if rows is None else torch.tensor(rows, device=x.device)
        return linear_cross_entropy(hidden, weight, y[keep], rows, cap), int(keep.sum())


def train(model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], pad_id: int, cfg) -> list[dict]:
    """`cfg.steps` SFT steps (an `SFTConfig`) on examples from `build_example`; the history of logged steps.

    Any model that maps ids [B, T] to logits [B, T, V] trains here: phiforge's `Phi3` or a transformers model
    behind `hf.CausalLM`.
    """
    dev = next(model.parameters()).device
    model.train()
    torch.manual_seed(cfg.seed)
    opt = build_optimizer(model, cfg.optim)
    history: list[dict] = []
    bar = tqdm(total=cfg.steps, desc="sft", unit="step", dynamic_ncols=True)
    lengths = [len(x) for x, _ in examples]
    for step, idx in enumerate(batches(len(examples), cfg.batch_size, cfg.steps, cfg.seed, lengths, cfg.length_group)):
        lr = lr_at(step, cfg.steps, cfg.optim)
        set_lr(opt, lr)
        x, y = collate([examples[i] for i in idx], pad_id)
        x, y = x.to(dev), y.to(dev)
        loss, count = loss_sum(model, x, y, cfg.dtype)
        (loss / max(1, count)).backward()
        clip_and_step(model, opt, cfg.optim.grad_clip)
        value = float(loss.detach()) / max(1, count)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": value, "lr": lr})
        bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}", refresh=False)
        bar.update(1)
    bar.close()
    return history


def _load(directory, transformers_folder: bool, dtype: str, train: bool = True):
    """A model, its tokenizer, and how to save a further-trained copy the same way: a phiforge checkpoint, or a
    transformers folder (phiforge/lm/hf.py, saved in `dtype`; its weights in bf16 unless it is to `train`)."""
    if not transformers_folder:
        model, mcfg, tok = load_model(directory)
        return model, tok, lambda m, out: export_model(m, mcfg, tok, out)
    model, tok = hf.load(directory, "fp32" if train else "bf16")
    return model, tok, lambda m, out: hf.save(m, tok, out, dtype)


def load_start(cfg, run: RunDir):
    """The model SFT starts from, its tokenizer, and how to save the result: the run's midtrained model (the base
    model, context-extended), or the transformers folder `sft.init` names."""
    if not cfg.init:
        return _load(stages.model_dir(run, "midtrain", "sft"), False, cfg.dtype)
    model, tok, save = _load(gemma.resolve(cfg.init), True, cfg.dtype)
    if cfg.max_len > model.max_seq_len:
        raise PhiforgeError(f"sft.max_len ({cfg.max_len}) exceeds the context of sft.init {cfg.init} "
                            f"({model.max_seq_len} positions)")
    return model, tok, save


def load_policy(recipe: Recipe, run: RunDir, stage: str, by: str, dtype: str = "bf16", train: bool = True):
    """What load_start gives, for the model a post-training stage (`sft`, `dpo`, `dpo2`) wrote, for stage `by` to
    read: a transformers folder when `sft.init` is set (bf16 weights unless `by` will `train` it), else a phiforge
    checkpoint."""
    return _load(stages.model_dir(run, stage, by), bool(recipe.sft.init), dtype, train)


def execute(recipe: Recipe, run: RunDir) -> dict:
    cfg = recipe.sft
    model, tok, save = load_start(cfg, run)
    if cfg.lora.r:
        save = lora.attach(model, tok, cfg.lora, save, cfg.dtype)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.to(device())
    conversations = read_column(run, "sft", "messages")
    examples = [build_example(tok, c, cfg.max_len) for c in conversations]
    n_targets = sum(sum(t != IGNORE for t in y) for _, y in examples)

    t0 = time.perf_counter()
    history = train(model, examples, tok.pad_id, cfg)
    out = run.stage_dir("sft")
    save(model, out / "model")
    atomic_write_json(out / "history.json", {"train": history})
    return {
        "init": cfg.init or "midtrain",
        "lora_rank": cfg.lora.r,
        "trainable_params": trainable,
        "conversations": len(examples),
        "assistant_tokens": int(n_targets),
        "steps": cfg.steps,
        "epochs": round(cfg.steps * cfg.batch_size / len(examples), 3),
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def outputs(run: RunDir) -> list[Path]:
    return [run.stage_dir("sft") / "model", run.stage_dir("sft") / "history.json"]
