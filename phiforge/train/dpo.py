"""Direct Preference Optimisation (Rafailov et al. 2023) on (prompt, chosen, rejected) token pairs.

The reference model is the policy itself before training: its log-probs are computed once up front, so only one
copy of the weights is ever resident. Pairs are dicts with `prompt_ids`, `chosen_ids` and `rejected_ids`, as
`phiforge.train.pts.make_pairs` writes them; completions may be single pivotal tokens or whole responses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from phiforge import stages
from phiforge.config import OptimConfig
from phiforge.errors import PhiforgeError
from phiforge.lm.logprobs import sequence_logps
from phiforge.rundir import atomic_write_json
from phiforge.train.optim import autocast, build_optimizer, clip_and_step, device, lr_at, set_lr
from phiforge.train.sft import batches, load_policy


class DPOLoss(nn.Module):
    """-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over the batch."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def forward(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        chosen_rewards = self.beta * (policy_chosen_logps - ref_chosen_logps)
        rejected_rewards = self.beta * (policy_rejected_logps - ref_rejected_logps)
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        return loss, chosen_rewards.detach(), rejected_rewards.detach()


def _check_pairs(pairs: Sequence[dict]) -> None:
    if not pairs:
        raise PhiforgeError("no DPO pairs to train on")
    for i, pair in enumerate(pairs):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            ids = pair.get(key)
            if not isinstance(ids, (list, tuple)) or not ids or not all(isinstance(t, int) for t in ids):
                raise PhiforgeError(f"DPO pair {i}: '{key}' must be a non-empty list of token ids, got {ids!r}")


def _pair_logps(model: nn.Module, pairs: Sequence[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Chosen and rejected go through one forward pass: half the kernel launches of two.
    prompts = [p["prompt_ids"] for p in pairs] * 2
    completions = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    logps = sequence_logps(model, prompts, completions, pad_id)
    return logps[: len(pairs)], logps[len(pairs):]


def precompute_reference(model: nn.Module, pairs: Sequence[dict], *, pad_id: int, batch_size: int = 16,
                         dtype: str = "fp32") -> torch.Tensor:
    """Reference log-probs [N, 2] (chosen, rejected) of the model as it is now, before any DPO step."""
    _check_pairs(pairs)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        # no_grad rather than inference_mode: the results later enter an autograd graph as constants.
        with torch.no_grad(), autocast(dtype, device):
            for i in range(0, len(pairs), batch_size):
                chosen, rejected = _pair_logps(model, pairs[i: i + batch_size], pad_id)
                out.append(torch.stack([chosen, rejected], dim=-1).float())
    finally:
        model.train(was_training)
    return torch.cat(out).cpu()


def train_dpo(model: nn.Module, pairs: Sequence[dict], ref_logps: torch.Tensor, *, beta: float = 0.1,
              lr: float = 1e-6, steps: int, batch_size: int, pad_id: int, optim: OptimConfig | None = None,
              dtype: str = "fp32", seed: int = 0, log_every: int = 1) -> list[dict]:
    """DPO steps on `pairs` against `ref_logps` from `precompute_reference`; the history of logged steps.

    optim defaults to the shared AdamW with the linear schedule, no warm-up and no weight decay (DPO moves the
    weights very little, and decay would pull them toward zero rather than toward the reference).
    """
    _check_pairs(pairs)
    if tuple(ref_logps.shape) != (len(pairs), 2):
        raise PhiforgeError(f"reference log-probs have shape {tuple(ref_logps.shape)}, expected ({len(pairs)}, 2): "
                            "recompute them for these pairs")
    if steps < 1 or batch_size < 1:
        raise PhiforgeError(f"DPO needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    o = optim or OptimConfig(lr=lr, warmup_steps=0, weight_decay=0.0)
    device = next(model.parameters()).device
    loss_fn = DPOLoss(beta)
    torch.manual_seed(seed)
    opt = build_optimizer(model, o)
    model.train()
    history = []
    for step, idx in enumerate(batches(len(pairs), min(batch_size, len(pairs)), steps, seed)):
        rate = lr_at(step, steps, o)
        set_lr(opt, rate)
        ref = ref_logps[torch.as_tensor(idx)].to(device)
        with autocast(dtype, device):
            chosen, rejected = _pair_logps(model, [pairs[i] for i in idx], pad_id)
        loss, chosen_rewards, rejected_rewards = loss_fn(chosen, rejected, ref[:, 0], ref[:, 1])
        loss.backward()
        grad_norm = clip_and_step(model, opt, o.grad_clip)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            margin = chosen_rewards - rejected_rewards
            history.append({"step": step + 1, "loss": float(loss.detach()), "lr": rate, "grad_norm": grad_norm,
                            "reward_margin": float(margin.mean()), "accuracy": float((margin > 0).float().mean())})
    return history


def train_on_pairs(model: nn.Module, pairs: Sequence[dict], cfg, pad_id: int) -> tuple[int, list[dict]]:
    """A DPO round as a recipe section (`dpo` or `dpo2`) configures it: reference log-probs of the model as it is,
    then ceil(epochs x pairs / batch_size) steps; (steps, history), (0, []) without pairs."""
    if not pairs:
        return 0, []
    steps = math.ceil(cfg.epochs * len(pairs) / cfg.batch_size)
    ref = precompute_reference(model, pairs, pad_id=pad_id, batch_size=cfg.batch_size, dtype=cfg.dtype)
    return steps, train_dpo(model, pairs, ref, beta=cfg.beta, steps=steps, batch_size=cfg.batch_size, pad_id=pad_id,
                            optim=cfg.optim, dtype=cfg.dtype, seed=cfg.seed, log_every=cfg.log_every)


def execute(recipe, run) -> dict:
    """Stage `dpo`: DPO of the SFT model on the PTS pairs, against reference log-probs computed once up front."""
    cfg = recipe.dpo
    model, tok, save = load_policy(recipe, run, "sft", "dpo", cfg.dtype)  # phiforge's, or sft.init's transformers model
    model.to(device())
    text = stages.input_path(run, "pts", "dpo", "pairs.jsonl").read_text()
    pairs = [json.loads(line) for line in text.splitlines() if line.strip()]
    steps, history = train_on_pairs(model, pairs, cfg, tok.pad_id)
    # With no pairs the DPO model is the SFT model, said so in the metrics rather than failing the run.
    out = run.stage_dir("dpo")
    save(model, out / "model")
    atomic_write_json(out / "history.json", {"train": history})
    last = history[-1] if history else {}
    return {"pairs": len(pairs), "steps": steps, "final_loss": last.get("loss"),
            "final_reward_margin": last.get("reward_margin"), "final_pair_accuracy": last.get("accuracy")}
