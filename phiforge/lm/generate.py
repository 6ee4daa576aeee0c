"""The one generation engine: batched, left-padded, KV-cached decoding for greedy and nucleus sampling."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from phiforge.lm.hf_posttrain import CausalLM
from phiforge.lm.hf_posttrain import sample as hf_sample
from phiforge.lm.model import DecodeLinears, KVCache


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]: argmax when temperature <= 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _draw(probs, generator)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Drop a token once the mass strictly before it already reaches top_p; the top token always survives.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return order.gather(-1, _draw(sorted_probs, generator)[:, None]).squeeze(-1)


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of non-negative weights [B, V], with probability proportional to its weight.

    Ours instead of torch.multinomial, which on CPU draws a random number per vocabulary entry (2.6 ms for 16 x 8192
    rows, as long as a decode step): one uniform per row against the float64 running sum takes 0.1 ms. u lies in
    (0, total], so the first index whose running sum reaches u always has a positive weight.
    """
    cdf = weights.double().cumsum(dim=-1)
    u = torch.rand((weights.shape[0], 1), generator=generator, dtype=torch.float64, device=weights.device)
    u = (1.0 - u) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


def stream_rows(
    logits: torch.Tensor,
    advance: Callable[[torch.Tensor, int], torch.Tensor],
    select: Callable[[torch.Tensor], None],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    alive: Callable[[int], bool] | None = None,
) -> Iterator[list[tuple[int, int]]]:
    """The step-wise decode loop shared by phiforge's and transformers' models: sample from `logits` [B, V], yield
    [(row, token)] for the rows that did not stop, drop the rows that stopped (or whose `alive` turned False) through
    `select(kept row indices)`, and get the next logits from `advance(tokens of the kept rows, step)`."""
    stop = set(stop_ids)
    rows = list(range(logits.shape[0]))  # prompt index of each row still in the batch
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)
        toks = tok.tolist()
        yield [(rows[i], t) for i, t in enumerate(toks) if t not in stop]
        keep = [i for i, t in enumerate(toks) if t not in stop and (alive is None or alive(rows[i]))]
        if not keep or step == max_new_tokens - 1:
            return
        if len(keep) < len(rows):
            idx = torch.tensor(keep, dtype=torch.long, device=tok.device)
            rows = [rows[i] for i in keep]
            tok = tok[idx]
            select(idx)
        logits = advance(tok, step)


def generate(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[int]]:
    """New tokens for each prompt, without the stop token; a row ends at its first stop token.

    Greedy results do not depend on which prompts share a batch: prompts are left-padded, padding is masked
    out of attention and every row gets its own position ids. Seeded sampling is reproducible for the same
    prompts, seed and batch_size.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; generation needs at least one token (e.g. BOS) to start from")
    results: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0 or not prompts:
        return results

    model = getattr(model, "_orig_mod", model)  # decode shapes change every step; a compiled wrapper would recompile
    device = next(model.parameters()).device
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    if isinstance(model, CausalLM):  # a transformers model being post-trained: its own KV cache and decode steps
        results = [[] for _ in prompts]
        for i in range(0, len(prompts), batch_size):
            outs = hf_sample(model, prompts[i: i + batch_size], max_new_tokens=max_new_tokens, pad_id=pad_id,
                             stop_ids=stop_ids, temperature=temperature, top_p=top_p, generator=generator)
            results[i: i + batch_size] = outs
        return results
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device) if stop_ids else None

    # Longest first, so each batch holds similar lengths and wastes little on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), DecodeLinears(model):
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(prompts), desc="generate", unit="prompt")
            for idx in batches:
                outs = _generate_batch(
                    model, [prompts[i] for i in idx], max_new_tokens, pad_id, stop, temperature, top_p, generator
                )
                for i, out in zip(idx, outs):
                    results[i] = out
                if bar is not None:
                    bar.update(len(idx))
            if bar is not None:
                bar.close()
    finally:
        model.train(was_training)
    return results


def _generate_batch(model, prompts, max_new_tokens, pad_id, stop, temperature, top_p, generator) -> list[list[int]]:
    device = next(model.parameters()).device
    B, L = len(prompts), max(len(p) for p in prompts)
    total = L + max_new_tokens
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    key_valid = torch.zeros((B, total), dtype=torch.bool)
    for r, p in enumerate(prompts):
        ids[r, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        key_valid[r, L - len(p) : L] = True
    ids, key_valid = ids.to(device), key_valid.to(device)
    # Each row counts positions from its own first real token, so padding never shifts RoPE.
    positions = (key_valid[:, :L].long().cumsum(-1) - 1).clamp_min(0)
    # Without any padding, plain causal attention and the model's own positions give the same result, minus the
    # per-step mask and RoPE computation.
    padded = any(len(p) != L for p in prompts)

    cache = KVCache(model.cfg.n_layers, total)
    logits = _prefill(model, ids, positions, key_valid[:, :L], [len(p) for p in prompts], cache)
    next_pos = positions[:, -1] + 1

    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    n_out = torch.full((B,), max_new_tokens, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)  # batch row of each still-decoded row
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)
        out[rows, step] = tok
        if stop is not None:
            hit = torch.isin(tok, stop) & ~done
            n_out[rows[hit]] = step
            done |= hit
        if step == max_new_tokens - 1:
            break
        n_done = int(done.sum())
        if n_done == len(rows):
            break
        if 4 * n_done >= len(rows):
            # Shrinking the batch copies the cache once, so only do it when it saves a real share of the work.
            keep = (~done).nonzero().squeeze(-1)
            rows, tok, next_pos, done = rows[keep], tok[keep], next_pos[keep], done[keep]
            key_valid = key_valid[keep]
            cache.select(keep)
        if padded:
            key_valid[:, L + step] = True
            logits = model(
                tok[:, None], position_ids=next_pos[:, None], kv_cache=cache, attention_mask=key_valid[:, : L + step + 1]
            )[:, -1]
            next_pos = next_pos + 1
        else:
            logits = model(tok[:, None], kv_cache=cache)[:, -1]

    out_list, n_list = out.tolist(), n_out.tolist()
    return [row[:n] for row, n in zip(out_list, n_list)]


def _prefill_groups(lengths: list[int]) -> list[list[int]]:
    """Rows grouped by length (longest first) so that padding stays under a quarter of each group's tokens.

    Prefill costs rows x longest prompt, so one left-padded batch of mixed lengths spends much of it on padding.
    """
    groups: list[list[int]] = []
    for r in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        if groups and 4 * lengths[r] >= 3 * lengths[groups[-1][0]]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _prefill(model, ids, positions, key_valid, lengths, cache: KVCache) -> torch.Tensor:
    """Last-position logits [B, V] of left-padded prompts ids [B, L], their keys and values left in `cache`."""
    B, L = ids.shape
    groups = _prefill_groups(lengths)
    if len(groups) == 1:
        if min(lengths) == L:
            return model(ids, kv_cache=cache, last_only=True)[:, -1]
        return model(ids, position_ids=positions, kv_cache=cache, attention_mask=key_valid, last_only=True)[:, -1]
    logits = None
    for rows in groups:
        Lg = lengths[rows[0]]
        idx = torch.tensor(rows, device=ids.device)
        part = KVCache(model.cfg.n_layers, Lg)
        if all(lengths[r] == Lg for r in rows):
            out = model(ids[idx, L - Lg :], kv_cache=part, last_only=True)
        else:
            out = model(ids[idx, L - Lg :], position_ids=positions[idx, L - Lg :], kv_cache=part,
                        attention_mask=key_valid[idx, L - Lg :], last_only=True)
        if logits is None:
            logits = out.new_empty((B, out.shape[-1]))
        logits[idx] = out[:, -1]
        cache.place(idx, B, part, L)
    cache.length = L
    return logits


def sample_from_prefix(
    model: nn.Module,
    prefix_ids: Sequence[int],
    n: int,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    keep_stop: bool = False,
) -> list[list[int]]:
    """n continuations of one prompt; a row ends at its first stop token, which is kept only with keep_stop.

    The prompt is prefilled once and its KV cache copied to the n rows, so n rollouts cost one prefill instead of
    n. All rows share one length, so neither padding, masks nor position ids are needed.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if len(prefix_ids) == 0:
        raise ValueError("prefix is empty; sampling needs at least one token to start from")
    if n <= 0 or max_new_tokens <= 0:
        return [[] for _ in range(max(n, 0))]

    model = getattr(model, "_orig_mod", model)
    if isinstance(model, CausalLM):  # n copies of the prefix in one batch: n prefills, but no cache copying
        return hf_sample(model, [list(prefix_ids)] * n, max_new_tokens=max_new_tokens, pad_id=0, stop_ids=stop_ids,
                         temperature=temperature, top_p=top_p, generator=generator, keep_stop=keep_stop)
    device = next(model.parameters()).device
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device) if stop_ids else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), DecodeLinears(model):
            cache = KVCache(model.cfg.n_layers, len(prefix_ids) + max_new_tokens)
            ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
            logits = model(ids, kv_cache=cache, last_only=True)[:, -1].expand(n, -1)
            cache.select(torch.zeros(n, dtype=torch.long, device=device))

            out = torch.zeros((n, max_new_tokens), dtype=torch.long, device=device)
            n_out = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)
            rows = torch.arange(n, device=device)
            done = torch.zeros(n, dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                tok = sample_next(logits, temperature, top_p, generator)
                out[rows, step] = tok
                if stop is not None:
                    hit = torch.isin(tok, stop) & ~done
                    n_out[rows[hit]] = step + 1 if keep_stop else step
                    done |= hit
                if step == max_new_tokens - 1 or bool(done.all()):
                    break
                if 4 * int(done.sum()) >= len(rows):
                    keep = (~done).nonzero().squeeze(-1)
                    rows, tok, done = rows[keep], tok[keep], done[keep]
                    cache.select(keep)
                logits = model(tok[:, None], kv_cache=cache)[:, -1]
    finally:
        model.train(was_training)
    return [row[:k] for row, k in zip(out.tolist(), n_out.tolist())]
