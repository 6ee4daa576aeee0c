"""The one engine interface: how every consumer finds a model, loads it and gets text out of it.

- `load_chat_model`: a run folder's best model, a phiforge checkpoint, or any transformers causal-LM folder (through
  the transformers adapter, phiforge/lm/hf.py), as (model, tokenizer, folder). Tokens come out of the model through
  the one decode loop (phiforge/lm/generate.py: `generate`, `stream`, `sample_from_prefix`), whichever kind it is.
- `TextStream`: token ids in, text out as it becomes final (stop strings and split characters held back).
- Engines, for the benchmarks and the eval stage: `PhiforgeEngine` (a phiforge checkpoint), `HFEngine` (a
  transformers folder) and `OpenAIEngine` (a model behind an OpenAI-compatible server) share one surface,
  `encode`, `chat_prompt`, `complete` (prompts to texts cut at stop strings), and, where the model itself is here,
  `encode_continuation` and `logprobs`. `load_engine` picks one for a path or URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from phiforge.errors import PhiforgeError
from phiforge.lm.checkpoint import load_model
from phiforge.lm.completions import ChatRequest
from phiforge.lm.generate import generate
from phiforge.lm.hf import HFChatModel, is_hf_folder
from phiforge.lm.http_teacher import HTTPTeacher
from phiforge.lm.logprobs import token_logps
from phiforge.lm.tokenizer import ChatTokenizer
from phiforge.rundir import MARKER, RunDir

# The most-trained model first: judge-guided DPO refines PTS-DPO, which refines SFT, which refines the base
# (midtrained, then pretrained).
STAGE_PREFERENCE = ("dpo2", "dpo", "sft", "midtrain", "pretrain")


def resolve_model_dir(path: Path | str) -> Path:
    """A model folder as given, or a run folder's best completed model (dpo2 > dpo > sft > midtrain > pretrain)."""
    path = Path(path)
    if not path.exists():
        raise PhiforgeError(f"{path} does not exist (expected a run folder or a model folder with config.json)")
    if (path / "config.json").is_file():
        return path
    if (path / MARKER).is_file():
        run = RunDir.open(path)
        for stage in STAGE_PREFERENCE:
            # A stage whose manifest is gone was invalidated (e.g. by --force on an earlier stage): its model is stale.
            model_dir = run.stage_dir(stage) / "model"
            if run.manifest(stage) is not None and (model_dir / "config.json").is_file():
                return model_dir
        raise PhiforgeError(f"run folder {path} has no finished model yet (none of {', '.join(STAGE_PREFERENCE)} "
                            f"has completed); run `phiforge run --out {path}` first")
    raise PhiforgeError(f"{path} is neither a model folder (no config.json) nor a phiforge run folder (no {MARKER})")


def load_chat_model(path: Path | str) -> tuple[nn.Module | HFChatModel, ChatTokenizer, Path]:
    """A phiforge checkpoint on phiforge's model, any other transformers causal-LM folder through `HFChatModel`."""
    model_dir = resolve_model_dir(path)
    if is_hf_folder(model_dir):
        hf = HFChatModel(model_dir)
        return hf, hf.tok, model_dir
    model, _, tok = load_model(model_dir)
    return model.eval(), tok, model_dir


def default_name(model_dir: Path) -> str:
    """runs/tiny/sft/model -> 'tiny-sft'; any other folder -> its own name."""
    parts = model_dir.resolve().parts
    return f"{parts[-3]}-{parts[-2]}" if parts[-1] == "model" and len(parts) >= 3 else parts[-1]


class TextStream:
    """Token ids in, text deltas out, never showing text that a later token could still change.

    Byte-level BPE can split one character over several tokens (decoded meanwhile as U+FFFD), and the tail of the
    text may be the start of a stop string; both are held back until resolved. `text` is everything before the
    first stop string, `stopped` says whether one was found.
    """

    def __init__(self, tok: ChatTokenizer, stop: Sequence[str] = ()):
        self.tok, self.stop = tok, [s for s in stop if s]
        self.ids: list[int] = []
        self.text, self.shown, self.stopped = "", 0, False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, text = True, text[:min(hits)]
            safe = len(text)
        else:
            safe = len(text) - self._undecided_tail(text)
        self.text = text
        delta = text[self.shown:safe]
        self.shown = max(self.shown, safe)
        return delta

    def extend(self, tokens: Sequence[int]) -> int:
        """Push tokens until a stop string appears; returns how many were consumed."""
        if not self.stop and not self.stopped:  # one decode instead of one per token
            self.ids += tokens
            self.text = self.tok.decode(self.ids)
            return len(tokens)
        for n, token in enumerate(tokens, 1):
            self.push(token)
            if self.stopped:
                return n
        return len(tokens)

    def _undecided_tail(self, text: str) -> int:
        # An unfinished character may be the next one of a stop string, so stop prefixes are sought before it.
        whole = text.rstrip("\ufffd")
        prefix = max((next((k for k in range(min(len(s) - 1, len(whole)), 0, -1) if whole.endswith(s[:k])), 0)
                      for s in self.stop), default=0)
        return len(text) - len(whole) + prefix

    def flush(self) -> str:
        """Whatever is still held back, once no more tokens will come."""
        delta, self.shown = self.text[self.shown:], max(self.shown, len(self.text))
        return delta


def ends_with_stop(tok, stops: Sequence[str]):
    """For `generate(stop_text=)`: whether a row's text has just reached one of `stops`, or None without stops.
    Asked after every token, so only the last few tokens need decoding: each is at least one character (a special
    token ends a row by its id; a character split over byte tokens is why there are four to spare)."""
    stops = [s for s in stops if s]
    if not stops:
        return None
    tail = max(map(len, stops)) + 4
    return lambda ids: any(s in tok.decode(ids[-tail:]) for s in stops)


def cut_at(text: str, stops: Sequence[str]) -> str:
    return text[: min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))]


class PhiforgeEngine:
    """A model and its tokenizer on the one decode loop: a phiforge checkpoint (or a post-trained transformers model
    behind `hf.CausalLM`). Replies stop at the tokenizer's stop tokens (<|im_end|> / <|endoftext|>) and, after
    decoding, at the stop strings."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok

    @property
    def stop_ids(self) -> list[int]:
        return self.tok.stop_ids

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def chat_prompt(self, user: str, history: Sequence[dict] = ()) -> list[int]:
        if not history:
            return self.tok.chat_prompt(user)
        return self.tok.encode_chat([*history, {"role": "user", "content": user}], add_generation_prompt=True)[0]

    def complete(self, prompts: list[list[int]], *, stops: Sequence[str], max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, batch_size: int) -> list[str]:
        outs = generate(self.model, prompts, max_new_tokens=max_new_tokens, pad_id=self.tok.pad_id,
                        stop_ids=self.stop_ids, temperature=temperature, top_p=top_p,
                        seed=seed if temperature > 0 else None, batch_size=batch_size, progress=True,
                        stop_text=ends_with_stop(self.tok, stops))
        return [cut_at(self.tok.decode(o), stops) for o in outs]

    def encode_continuation(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def logprobs(self, prompts: list[list[int]], continuations: list[list[int]], *,
                 batch_size: int) -> list[tuple[float, int]]:
        """(summed log-probability, token count) of each continuation after its prompt, in batches of similar
        lengths; one forward pass per batch, right-padded so causal attention keeps padding out."""
        out: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for idx in _length_batches(prompts, continuations, batch_size, "logprobs"):
                    logps, _ = token_logps(self.model, [prompts[i] for i in idx], [continuations[i] for i in idx],
                                           self.tok.pad_id)
                    for i, row in zip(idx, logps.sum(-1).tolist()):
                        out[i] = (row, len(continuations[i]))
        finally:
            self.model.train(was_training)
        return out


def _length_batches(prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int,
                    desc: str):
    """Row indices in batches of similar total length (longest first), iterated behind a progress bar."""
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not p or not c:
            raise PhiforgeError(f"row {i}: scoring a continuation needs a non-empty prompt and continuation")
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(continuations[i])))
    batches = [order[s : s + batch_size] for s in range(0, len(order), max(1, batch_size))]
    return tqdm(batches, desc=desc, unit="batch", disable=len(batches) < 2)


def _eos_ids(value) -> list[int]:
    return [value] if isinstance(value, int) else list(value or [])


class HFEngine(PhiforgeEngine):
    """Any transformers causal-LM directory (e.g. Gemma 3 270M converted from its registry GGUF) through the
    transformers adapter (`hf.HFChatModel`) on the one decode loop. A reply stops where transformers' own `generate`
    stops it, at the generation config's end-of-sequence ids, so greedy replies are the tokens `generate` gives. The
    chat prompt needs the tokenizer's chat template; base models without one are run with `--style completion`."""

    def __init__(self, directory: Path, dtype: str = "bf16"):
        super().__init__(HFChatModel(directory, dtype), None)
        self.tok = self.model.tok
        self.directory = Path(directory)
        self._stop_ids = _eos_ids(self.model.hf.generation_config.eos_token_id)

    @property
    def stop_ids(self) -> list[int]:
        return self._stop_ids

    def complete(self, prompts: list[list[int]], **kwargs) -> list[str]:
        # Longest first, so similar lengths share a batch (`generate` keeps a transformers model's prompts in order).
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts = [""] * len(prompts)
        for i, text in zip(order, super().complete([prompts[i] for i in order], **kwargs)):
            texts[i] = text
        return texts

    def chat_prompt(self, user: str, history: Sequence[dict] = ()) -> list[int]:
        if not self.tok.tok.chat_template:
            raise PhiforgeError(f"{self.directory}: the tokenizer has no chat template (a base model?); "
                                "use --style completion")
        return self.tok.encode_chat([*history, {"role": "user", "content": user}], add_generation_prompt=True)[0]

    def encode_continuation(self, text: str) -> list[int]:
        return self.tok.tok(text, add_special_tokens=False)["input_ids"]

    def logprobs(self, prompts: list[list[int]], continuations: list[list[int]], *,
                 batch_size: int) -> list[tuple[float, int]]:
        """As PhiforgeEngine.logprobs, on the transformers model with right padding and an attention mask."""
        model = self.model.hf
        out: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
        pad = self.tok.pad_id
        for idx in _length_batches(prompts, continuations, batch_size, "logprobs"):
            rows = [prompts[i] + continuations[i] for i in idx]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits
            for r, i in enumerate(idx):
                p, c = len(prompts[i]), continuations[i]
                # Only the positions that predict continuation tokens go through the fp32 log-softmax.
                lp = logits[r, p - 1 : p - 1 + len(c)].float().log_softmax(-1)
                out[i] = (lp.gather(-1, torch.tensor(c)[:, None]).sum().item(), len(c))
        return out


class OpenAIEngine:
    """A model behind an OpenAI-compatible server (`phiforge serve`, vLLM, llama.cpp, Ollama, a hosted API), asked
    through `HTTPTeacher`: concurrent requests, retries, and a disk cache when given one. Only chat-style maths runs
    this way: raw completions (HumanEval, `--style completion`) and option log-likelihoods need the model itself."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None, concurrency: int = 8,
                 cache_dir=None):
        if model is None:  # a server with one model needs no name
            import httpx

            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            try:
                reply = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=30)
                if reply.status_code == 401:
                    raise PhiforgeError(f"{base_url}/models: the server wants an API key (401); name the variable "
                                        "holding it with --api-key-env")
                served = [m["id"] for m in reply.json()["data"]]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                raise PhiforgeError(f"{base_url}/models: cannot list the served models ({e}); name one with "
                                    "--served-model") from None
            if len(served) != 1:
                raise PhiforgeError(f"{base_url} serves {len(served)} models ({', '.join(served)}); pick one with "
                                    "--served-model")
            model = served[0]
        self.teacher = HTTPTeacher(base_url, model, api_key, concurrency=concurrency, cache_dir=cache_dir)
        self.directory = f"{base_url.rstrip('/')} ({model})"

    def encode(self, text: str):
        raise PhiforgeError(f"{self.directory}: over the OpenAI API phiforge benchmark runs chat-style maths only; "
                            "for code, --style completion or multiple choice, give it the model folder")

    def chat_prompt(self, user: str, history: Sequence[dict] = ()) -> list[dict]:
        return [*history, {"role": "user", "content": user}]

    def complete(self, prompts: list[str], *, stops: Sequence[str], max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, batch_size: int) -> list[str]:
        if top_p != 1.0:
            raise PhiforgeError("--top-p is not sent over the OpenAI API here; leave it at 1")
        # Every sample gets its own seed: distinct draws of one prompt, each reproducible and cacheable.
        requests = [ChatRequest(p, temperature=temperature, max_tokens=max_new_tokens, stop=tuple(stops)[:4],
                                seed=seed + i if temperature > 0 else None) for i, p in enumerate(prompts)]
        return [cut_at(c.text, stops) for c in self.teacher.complete(requests)]


def load_engine(path: Path | str, served_model: str | None = None, api_key: str | None = None):
    """(engine, where): an http(s) URL on OpenAIEngine (with `api_key` as its bearer token); a phiforge run or model
    folder on PhiforgeEngine; any other transformers model folder on HFEngine."""
    if str(path).startswith(("http://", "https://")):
        engine = OpenAIEngine(str(path), served_model, api_key=api_key)
        return engine, engine.directory
    path = Path(path)
    if is_hf_folder(path):
        return HFEngine(path), path
    model, tok, model_dir = load_chat_model(path)
    return PhiforgeEngine(model, tok), model_dir
