"""The one decode loop, for phiforge's own model and transformers models alike: batched, left-padded, KV-cached
decoding for greedy and nucleus sampling.

- `decode`: the loop. It samples from the last logits, hands out each row's token, retires rows that stopped (or
  whose `alive` turned False) and asks the model kind for the next logits.
- `stream`: one step at a time, rows leaving the batch at once, so a cancelled request stops costing compute
  (serving, terminal chat, local teachers).
- `generate`: every prompt's new tokens, in batches (eval, benchmarks, PTS solutions, judge-guided DPO responses).
- `sample_from_prefix`: n continuations of one prompt (PTS rollouts).

A model kind only brings its prefill and its two per-step operations (`advance`: the next logits; `select`: keep
some rows): `begin` here for phiforge's `Phi3` on its `KVCache`, `hf.begin` for a transformers model on its
`DynamicCache` (phiforge/lm/hf.py). So a decode speed-up lands once, for every consumer and both model kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from phiforge.lm import hf
from phiforge.lm.model import DecodeLinears, KVCache

# `generate` drops finished rows of phiforge's model once they are a quarter of the batch: each drop copies the
# whole fixed-size KV cache, so it is only done when it saves a real share of the work. Transformers models drop
# them at once, as they always have (their seeded samples stay those of earlier runs); so does `stream`.
DROP_AT = 0.25


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

    Ours instead of torch.multinomial, which on CPU draws a random number per vocabulary entry: one uniform per row
    against the float64 running sum (bench/README.md has the timings). u lies in (0, total], so the first index
    whose running sum reaches u always has a positive weight.
    """
    cdf = weights.double().cumsum(dim=-1)
    u = torch.rand((weights.shape[0], 1), generator=generator, dtype=torch.float64, device=weights.device)
    u = (1.0 - u) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


def decode(
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
    keep_stop: bool = False,
    drop_at: float = 0.0,
) -> Iterator[list[tuple[int, int]]]:
    """The decode loop: sample from `logits` [B, V] and yield [(row, token)] for every row still decoding, step by
    step. A row ends at its first stop token (yielded only with keep_stop), after max_new_tokens, or when
    `alive(row)`, asked after each step is handed out, turns False. Ended rows leave the batch through
    `select(kept batch rows)` once they are at least `drop_at` of it (0: at once); until then they are decoded
    and ignored. `advance(tokens of the batch's rows, step)` gives the next logits."""
    stop = frozenset(stop_ids)
    rows = list(range(logits.shape[0]))  # prompt index of each row still in the batch
    done = [False] * len(rows)
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)
        out = []
        for i, t in enumerate(tok.tolist()):
            if done[i]:
                continue
            if t in stop:
                done[i] = True
                if not keep_stop:
                    continue
            out.append((rows[i], t))
        yield out
        if alive is not None:
            done = [d or not alive(r) for d, r in zip(done, rows)]
        n_done = sum(done)
        if n_done == len(rows) or step == max_new_tokens - 1:
            return
        if n_done and n_done >= drop_at * len(rows):
            keep = [i for i, d in enumerate(done) if not d]
            idx = torch.tensor(keep, dtype=torch.long, device=tok.device)
            rows, done, tok = [rows[i] for i in keep], [False] * len(keep), tok[idx]
            select(idx)
        logits = advance(tok, step)


def _check(temperature: float, top_p: float, prompts: Sequence[Sequence[int]]) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; generation needs at least one token (e.g. BOS) to start from")


def _device(model) -> torch.device:
    theirs = hf.transformers_model(model)
    return next((model if theirs is None else theirs).parameters()).device


def _generator(model, seed: int | None, temperature: float) -> torch.Generator | None:
    if seed is None or temperature <= 0:
        return None
    generator = torch.Generator(device=_device(model))
    generator.manual_seed(seed)
    return generator


def begin(model, prompts: Sequence[Sequence[int]], pad_id: int, max_new_tokens: int):
    """Prefill left-padded prompts: their last logits [B, V] and the `advance` / `select` steps of `decode`, on
    phiforge's model or, through the transformers adapter, on a transformers one."""
    theirs = hf.transformers_model(model)
    if theirs is not None:
        return hf.begin(theirs, prompts, pad_id)
    model = getattr(model, "_orig_mod", model)  # decode shapes change every step; a compiled wrapper would recompile
    device = next(model.parameters()).device
    # Per call, not around the loop: a block held open across `stream`'s yield would leak into the caller.
    linears = DecodeLinears(model)

    @torch.inference_mode()
    def forward(*args, **kwargs):
        with linears:
            return model(*args, **kwargs)

    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    key_valid = torch.zeros((B, L + max_new_tokens), dtype=torch.bool)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):] = torch.tensor(list(p), dtype=torch.long)
        key_valid[r, L - len(p):L] = True
    ids, key_valid = ids.to(device), key_valid.to(device)
    # Each row counts positions from its own first real token, so padding never shifts RoPE.
    positions = (key_valid[:, :L].long().cumsum(-1) - 1).clamp_min(0)
    # Without any padding, plain causal attention and the model's own positions give the same result, minus the
    # per-step mask and RoPE computation.
    padded = any(len(p) != L for p in prompts)
    cache = KVCache(model.cfg.n_layers, L + max_new_tokens)
    logits = _prefill(forward, model.cfg.n_layers, ids, positions, key_valid[:, :L], [len(p) for p in prompts], cache)
    state = {"pos": positions[:, -1] + 1, "valid": key_valid}

    def select(idx):
        state["pos"], state["valid"] = state["pos"][idx], state["valid"][idx]
        cache.select(idx)

    def advance(tok, step):
        if not padded:
            return forward(tok[:, None], kv_cache=cache)[:, -1]
        state["valid"][:, L + step] = True
        out = forward(tok[:, None], position_ids=state["pos"][:, None], kv_cache=cache,
                      attention_mask=state["valid"][:, :L + step + 1])[:, -1]
        state["pos"] = state["pos"] + 1
        return out

    return logits, advance, select


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


def _prefill(forward, n_layers: int, ids, positions, key_valid, lengths, cache: KVCache) -> torch.Tensor:
    """Last-position logits [B, V] of left-padded prompts ids [B, L], their keys and values left in `cache`."""
    B, L = ids.shape
    groups = _prefill_groups(lengths)
    if len(groups) == 1:
        if min(lengths) == L:
            return forward(ids, kv_cache=cache, last_only=True)[:, -1]
        return forward(ids, position_ids=positions, kv_cache=cache, attention_mask=key_valid, last_only=True)[:, -1]
    logits = None
    for rows in groups:
        Lg = lengths[rows[0]]
        idx = torch.tensor(rows, device=ids.device)
        part = KVCache(n_layers, Lg)
        if all(lengths[r] == Lg for r in rows):
            out = forward(ids[idx, L - Lg:], kv_cache=part, last_only=True)
        else:
            out = forward(ids[idx, L - Lg:], position_ids=positions[idx, L - Lg:], kv_cache=part,
                          attention_mask=key_valid[idx, L - Lg:], last_only=True)
        if logits is None:
            logits = out.new_empty((B, out.shape[-1]))
        logits[idx] = out[:, -1]
        cache.place(idx, B, part, L)
    cache.length = L
    return logits


def stream(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    alive: Callable[[int], bool] | None = None,
) -> Iterator[list[tuple[int, int]]]:
    """The prompts decoded as one batch, one step at a time: yields [(prompt index, token), ...] per step.

    A row leaves the batch at its first stop token (never yielded), after max_new_tokens, or as soon as
    alive(index) turns False, so a cancelled request stops costing compute. The forward calls are generate's, so
    a prompt decoded alone greedily gives the same tokens either way. The model is used in the mode it is in.
    """
    _check(temperature, top_p, prompts)
    if max_new_tokens <= 0 or not prompts:
        return
    generator = _generator(model, seed, temperature)
    logits, advance, select = begin(model, prompts, pad_id, max_new_tokens)
    yield from decode(logits, advance, select, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                      temperature=temperature, top_p=top_p, generator=generator, alive=alive)


def _collect(steps: Iterator[list[tuple[int, int]]], n: int) -> list[list[int]]:
    outs: list[list[int]] = [[] for _ in range(n)]
    for step in steps:
        for row, token in step:
            outs[row].append(token)
    return outs


class _Evaluating:
    """The model in eval mode inside the block, back in its own mode after."""

    def __init__(self, model):
        self.module = model if isinstance(model, nn.Module) else hf.transformers_model(model)

    def __enter__(self):
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)


def generate(
    model,
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
    stop_text: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """New tokens for each prompt, without the stop token; a row ends at its first stop token, or once
    `stop_text(its tokens so far)` says so (a stop string in its text: the caller cuts the text there), so a base
    model that goes on past its answer stops costing steps.

    Greedy results do not depend on which prompts share a batch: prompts are left-padded, padding is masked
    out of attention and every row gets its own position ids. Seeded sampling is reproducible for the same
    prompts, seed and batch_size. phiforge's model decodes the longest prompts first, so each batch holds similar
    lengths and wastes little on padding; a transformers model takes the prompts in their order.
    """
    _check(temperature, top_p, prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0 or not prompts:
        return results
    theirs = hf.transformers_model(model) is not None
    order = list(range(len(prompts))) if theirs else sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    generator = _generator(model, seed, temperature)
    with _Evaluating(model), torch.inference_mode(), tqdm(total=len(prompts), desc="generate", unit="prompt",
                                                          disable=not progress) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = [prompts[i] for i in idx]
            logits, advance, select = begin(model, batch, pad_id, max_new_tokens)
            outs: list[list[int]] = [[] for _ in batch]
            steps = decode(logits, advance, select, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                           temperature=temperature, top_p=top_p, generator=generator,
                           alive=None if stop_text is None else lambda r: not stop_text(outs[r]),
                           drop_at=0.0 if theirs else DROP_AT)
            for step in steps:
                for row, token in step:
                    outs[row].append(token)
            for i, out in zip(idx, outs):
                results[i] = out
            bar.update(len(idx))
    return results


def sample_from_prefix(
    model,
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

    On phiforge's model the prompt is prefilled once and its KV cache copied to the n rows, so n rollouts cost one
    prefill instead of n; all rows share one length, so neither padding, masks nor position ids are needed. A
    transformers model decodes n copies of the prompt as one batch: n prefills, but no cache copying.
    """
    if len(prefix_ids) == 0:
        raise ValueError("prefix is empty; sampling needs at least one token to start from")
    _check(temperature, top_p, [])
    if n <= 0 or max_new_tokens <= 0:
        return [[] for _ in range(max(n, 0))]
    model = getattr(model, "_orig_mod", model)
    theirs = hf.transformers_model(model)
    with _Evaluating(model), torch.inference_mode():
        if theirs is not None:
            logits, advance, select = hf.begin(theirs, [list(prefix_ids)] * n, 0)
        else:
            logits, advance, select = _begin_shared(model, prefix_ids, n, max_new_tokens)
        steps = decode(logits, advance, select, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                       temperature=temperature, top_p=top_p, generator=generator, keep_stop=keep_stop,
                       drop_at=0.0 if theirs is not None else DROP_AT)
        return _collect(steps, n)


def _begin_shared(model: nn.Module, prefix_ids: Sequence[int], n: int, max_new_tokens: int):
    """phiforge's prefill of one prompt, its cache copied to n rows: the logits [n, V] and `decode`'s steps."""
    device = next(model.parameters()).device
    linears = DecodeLinears(model)

    def forward(*args, **kwargs):
        with linears:
            return model(*args, **kwargs)

    cache = KVCache(model.cfg.n_layers, len(prefix_ids) + max_new_tokens)
    ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
    logits = forward(ids, kv_cache=cache, last_only=True)[:, -1].expand(n, -1)
    cache.select(torch.zeros(n, dtype=torch.long, device=device))
    return logits, lambda tok, step: forward(tok[:, None], kv_cache=cache)[:, -1], cache.select
