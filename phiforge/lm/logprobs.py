"""Log-probabilities a model gives to continuations of prompts: DPO's policy and reference terms, PTS's solution
probabilities, and the benchmark engines' multiple-choice scores, for phiforge's model and `hf.CausalLM` alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _prompts_per_row(prompt_ids, n: int) -> list[Sequence[int]]:
    if len(prompt_ids) > 0 and isinstance(prompt_ids[0], int):
        return [prompt_ids] * n
    if len(prompt_ids) != n:
        raise ValueError(f"{len(prompt_ids)} prompts for {n} completions")
    return list(prompt_ids)


# Logits held at once: a batch whose [B, T, V] logits stay under this goes through the model's forward whole (the
# phiforge default models: 32 x 300 x 1,024), a larger one as hidden states, then the head a chunk of rows at a time
# (2^26 fp32 elements is 256 MB: 256 rows of Gemma 3's 262,144-token vocabulary).
CHUNK_ELEMENTS = 1 << 26


def target_logps(head, hidden: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) [N] for hidden states [N, d] and `head` mapping them to logits.

    A chunk of rows at a time, each chunk's fp32 logits recomputed in the backward pass rather than kept, so memory
    stays at one chunk's [rows, V] however many tokens a batch of full responses holds (torch's checkpoint does
    the recompute).
    """
    def one(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return head(h).float().log_softmax(-1).gather(-1, t[:, None]).squeeze(-1)

    rows = max(1, CHUNK_ELEMENTS // vocab_size)
    keep = torch.is_grad_enabled() and hidden.requires_grad
    return torch.cat([checkpoint(one, hidden[i: i + rows], targets[i: i + rows], use_reentrant=False) if keep
                      else one(hidden[i: i + rows], targets[i: i + rows]) for i in range(0, len(hidden), rows)])


def token_logps(model: nn.Module, prompt_ids, completion_ids_batch: Sequence[Sequence[int]],
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, L] of each completion given its prompt, zero past its end, and the bool mask.

    prompt_ids is one prompt shared by every completion or one prompt per completion. Rows are right-padded, so
    causal attention keeps padding out of every real position. Only the positions that predict completion tokens
    go through the fp32 log-softmax; when the batch's whole [B, T, V] logits would be large, only they go through
    the head too (`target_logps`).
    """
    prompts = _prompts_per_row(prompt_ids, len(completion_ids_batch))
    if not completion_ids_batch:
        raise ValueError("no completions")
    rows = []
    for i, (p, c) in enumerate(zip(prompts, completion_ids_batch)):
        if len(p) == 0 or len(c) == 0:
            raise ValueError(f"row {i}: prompt and completion must both be non-empty")
        rows.append(list(p) + list(c))
    device = next(model.parameters()).device
    width = max(map(len, rows)) - 1
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    row_idx, pos_idx, col_idx, targets = [], [], [], []
    for i, (p, c, r) in enumerate(zip(prompts, completion_ids_batch, rows)):
        x[i, : len(r) - 1] = torch.tensor(r[:-1])
        row_idx += [i] * len(c)
        pos_idx += range(len(p) - 1, len(r) - 1)  # position t predicts token t + 1
        col_idx += range(len(c))
        targets += c
    row_t, pos_t, col_t, tgt_t = (torch.tensor(v, dtype=torch.long, device=device)
                                  for v in (row_idx, pos_idx, col_idx, targets))
    vocab = getattr(model, "vocab_size", None)  # a model without it (a test's toy policy) has no head to split off
    if vocab is None or x.numel() * vocab <= CHUNK_ELEMENTS:
        picked = model(x.to(device))[row_t, pos_t].float().log_softmax(-1).gather(-1, tgt_t[:, None]).squeeze(-1)
    else:
        hidden = model(x.to(device), return_hidden=True)
        picked = target_logps(model.head, hidden[row_t, pos_t], tgt_t, vocab)
    shape = (len(rows), max(map(len, completion_ids_batch)))
    logps = picked.new_zeros(shape).index_put((row_t, col_t), picked)
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[row_t, col_t] = True
    return logps, mask


def sequence_logps(model: nn.Module, prompt_ids, completion_ids_batch: Sequence[Sequence[int]],
                   pad_id: int) -> torch.Tensor:
    """Summed log-probs [B] of each completion's tokens given its prompt (prompt tokens never count)."""
    return token_logps(model, prompt_ids, completion_ids_batch, pad_id)[0].sum(-1)
