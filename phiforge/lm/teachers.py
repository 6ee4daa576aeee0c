"""The teachers a recipe can name (`make_teacher`): where a synthetic-data workflow or a judge gets its text.

- `HTTPTeacher` (phiforge/lm/http_teacher.py): any OpenAI-compatible chat-completions server (phiforge serve, vLLM,
  llama.cpp, Ollama, a hosted API), with bounded concurrency, retries and a disk cache.
- `LocalTeacher`: a phiforge checkpoint or a transformers model folder (e.g. Gemma 3 270M) on this machine, decoded
  by the one decode loop (phiforge/lm/generate.py).

Both answer the batch interface of phiforge/lm/completions.py (`Teacher`: `ChatRequest`s in, `Completion`s out),
The exact problem generators (phiforge/data/problems.py) are not a
teacher: they make problems with exact answers, they do not answer free text.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from phiforge.config import TeacherConfig
from phiforge.lm.completions import ChatRequest, Completion, Teacher, TeacherError
from phiforge.lm.engine import TextStream, default_name, load_chat_model
from phiforge.lm.generate import stream
from phiforge.lm.http_teacher import HTTPTeacher


class LocalTeacher:
    """A model folder on this machine answering chats: a phiforge checkpoint (model or run folder) or any
    transformers causal-LM folder with a chat template (Gemma 3 270M), both through `generate.stream`.

    The prompt is the folder's own chat format with the assistant's header appended; replies end at the
    tokenizer's stop tokens or a stop string, exactly as `phiforge serve` does it, so the same checkpoint gives the
    same greedy replies here and over HTTP. Greedy requests share batches (greedy decoding does not depend on the
    batch). A seeded sampled request decodes alone with its own generator, so its sample depends on nothing but the
    request; with `batch_sampled=True` seeded requests of one temperature share batches instead, each batch seeded
    from its members' seeds: many times the throughput on a CPU, and still reproducible for the same list of
    requests, but a sample then depends on its batch mates (so such replies must not go in a shared cache).
    """

    def __init__(self, model_dir: Path | str, *, batch_size: int = 32, device: str | None = None,
                 name: str | None = None, batch_sampled: bool = False):
        self.model, self.tok, self.model_dir = load_chat_model(model_dir)
        if device is not None:
            self.model.to(device)
        self.batch_size, self.batch_sampled = batch_size, batch_sampled
        self.name = name or f"local:{default_name(self.model_dir)}"
        self.stats = {"requests": 0, "batches": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def use_chat_template(self, template: str, stop_tokens: Sequence[str] = ()) -> None:
        """Chat through `template` (Jinja, as in tokenizer_config.json) on a transformers folder that has none, e.g.
        a base model; each of `stop_tokens` (one vocabulary token each) then also ends a reply."""
        hf = getattr(self.tok, "tok", None)
        if not hasattr(hf, "apply_chat_template"):
            raise TeacherError(f"{self.model_dir}: a chat template can only be given to a transformers model folder")
        ids = []
        for t in stop_tokens:
            i = hf.convert_tokens_to_ids(t)
            if not isinstance(i, int) or i == hf.unk_token_id:
                raise TeacherError(f"stop token {t!r} is not one token of {self.model_dir}'s vocabulary")
            ids.append(i)
        hf.chat_template = template
        self.tok.stop_ids = sorted(set(self.tok.stop_ids) | set(ids))

    def _decode(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                seed: int | None) -> list[list[int]]:
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
        outs: list[list[int]] = [[] for _ in prompts]
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            self.stats["batches"] += 1
            for step in stream(self.model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                        pad_id=self.tok.pad_id, stop_ids=self.tok.stop_ids, temperature=temperature,
                                        seed=seed):
                for row, token in step:
                    outs[idx[row]].append(token)
        return outs

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        tok, max_len = self.tok, self.model.cfg.max_seq_len
        prompts = []
        for i, r in enumerate(requests):
            prompt = tok.encode_chat(list(r.messages), add_generation_prompt=True)[0]
            if len(prompt) + r.max_tokens > max_len:
                raise TeacherError(f"request {i}: the prompt ({len(prompt)} tokens) plus max_tokens ({r.max_tokens}) "
                                   f"exceeds the context of {self.model_dir} ({max_len} tokens)")
            prompts.append(prompt)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = () if r.temperature == 0 else ("t", r.temperature) if r.seed is None or self.batch_sampled \
                else ("seed", i)
            groups.setdefault(key, []).append(i)
        results: list[Completion | None] = [None] * len(requests)
        for key, idx in groups.items():
            seeds = [requests[i].seed for i in idx]
            seed = seeds[0] if len(idx) == 1 or None in seeds else \
                int.from_bytes(hashlib.sha256(repr(seeds).encode()).digest()[:4], "big")
            outs = self._decode([prompts[i] for i in idx], max(requests[i].max_tokens for i in idx),
                                requests[idx[0]].temperature, seed)
            for i, out in zip(idx, outs):
                limit = requests[i].max_tokens
                text = TextStream(tok, requests[i].stop)  # the group decodes to its longest budget; keep our own
                n = text.extend(out[:limit])
                reason = "stop" if text.stopped or len(out) < limit else "length"
                results[i] = Completion(text.text, reason, len(prompts[i]), n)
                self.stats["prompt_tokens"] += len(prompts[i])
                self.stats["completion_tokens"] += n
        self.stats["requests"] += len(requests)
        return results


def make_teacher(cfg: TeacherConfig, key: str, cache_dir: Path | str | None = None) -> Teacher:
    """The chat teacher a recipe's `TeacherConfig` at `key` (synth.teacher, organic.teacher, dpo2.judge) names; the
    programmatic one is not a chat model, so asking for it here is an error that says so."""
    if cfg.kind == "http":
        api_key = None
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise TeacherError(f"{key}.api_key_env names {cfg.api_key_env!r}, which is not set in the environment")
        return HTTPTeacher(cfg.url, cfg.model, api_key, concurrency=cfg.concurrency, max_retries=cfg.retries,
                           timeout_s=cfg.timeout_s, cache_dir=cache_dir)
    if cfg.kind == "local":
        # Sampled requests share batches: a local CPU teacher decoding each alone would be several times slower.
        teacher = LocalTeacher(cfg.model, batch_size=cfg.batch_size, batch_sampled=True)
        if cfg.chat_template:
            teacher.use_chat_template(cfg.chat_template, cfg.stop_tokens)
        return teacher
    raise TeacherError(f"{key}.kind {cfg.kind!r} is not a chat teacher (use http or local)")
