"""The one adapter for transformers causal-LM folders (Gemma 3 270M, Llama, Qwen, a transformers Phi-3, ...): loading
one to serve or evaluate it, loading one to post-train it, and the prefill and decode steps that phiforge's own decode
loop (`phiforge.lm.generate`) runs it with.

Serving and evaluation (`HFChatModel`, loaded through `phiforge.lm.engine.load_chat_model`): the folder as it is, with
its own chat template, behind the surface the chat code uses for phiforge checkpoints: `cfg.max_seq_len` /
`cfg.vocab_size` and a tokenizer (`HFTokenizer`) with `encode`, `encode_chat`, `decode`, `pad_id` and `stop_ids`.

Post-training (`load` / `save`, the model `sft.init` names), with the same SFT loop, DPO loss and PTS search as
phiforge's own checkpoints:

* `CausalLM` wraps the transformers model so that `model(ids)` returns logits [B, T, V], as `Phi3` does. Rows are
  right-padded and read only at real positions, so causal attention alone keeps the padding out; no mask is needed.
* `HFChatTokenizer` renders conversations in phiforge's chat format (ChatML with Phi-4's `<|im_sep|>`, the strings
  of phiforge/lm/tokenizer.py) with the same loss mask as `ChatTokenizer.encode_chat`. A base model's tokenizer lacks
  those tokens (Gemma's has `<start_of_turn>` instead), so `load` adds them as special tokens and grows the
  embeddings; the new rows are drawn around the old rows' mean with their covariance (transformers'
  `mean_resizing`), not at the init scale, which would give them outsized logits in the first steps. The tokenizer's
  own BOS leads every conversation when it leads every plain encode, since a base model saw it before every document
  (Gemma degrades badly without it).

PAD is never an end-of-sequence id: when the folder's PAD is missing or equals one, `<|pad|>` is added. The saved
folder is a plain transformers one (`AutoModelForCausalLM` + `AutoTokenizer`): a chat template that renders exactly
what `encode_chat` builds, EOS = `<|im_end|>`, generation_config EOS = [`<|im_end|>`, the model's own EOS] and
PAD = the distinct pad id.

Decoding (`begin`): the prefill of left-padded prompts into transformers' `DynamicCache` and the two per-step
operations of `generate.decode`. The decode loop is phiforge's, on transformers' forward, rather than `model.generate`:
generate cannot drop a cancelled request's row mid-batch or hand out tokens as they come, and sharing
`generate.sample_next` means one checkpoint samples the same way whichever side of the seam it is on.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from phiforge.errors import PhiforgeError
from phiforge.lm.tokenizer import CHAT_TEMPLATE, IM_END, IM_SEP, IM_START, PAD
from phiforge.rundir import atomic_path

CHAT_SPECIALS = (IM_START, IM_SEP, IM_END)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class HFChatTokenizer:
    """A transformers tokenizer that already holds the chat specials and a PAD apart from every EOS (see `load`)."""

    def __init__(self, tok, model_eos_ids: Sequence[int]):
        self.tok = tok
        ids = {s: tok.convert_tokens_to_ids(s) for s in CHAT_SPECIALS}
        lacking = [s for s, i in ids.items() if i is None or i == tok.unk_token_id] + ([] if tok.pad_token else ["PAD"])
        if lacking:
            raise PhiforgeError(f"{tok.name_or_path}: tokenizer lacks {', '.join(lacking)} "
                                "(hf.load adds them)")
        self.im_start_id, self.im_sep_id, self.im_end_id = (ids[s] for s in CHAT_SPECIALS)
        self.pad_id = tok.pad_token_id
        # <|im_end|> ends a turn; the model's own EOS still ends a reply that runs on as a document would.
        self.stop_ids = [self.im_end_id, *sorted(set(model_eos_ids) - {self.im_end_id})]
        if self.pad_id in self.stop_ids:
            raise PhiforgeError(f"{tok.name_or_path}: PAD id {self.pad_id} is also an end-of-sequence id")
        first = tok("a", add_special_tokens=True)["input_ids"][:1]
        self.bos = first if tok.bos_token_id is not None and first == [tok.bos_token_id] else []

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def encode_chat(self, messages: Sequence[dict],
                    add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """`ChatTokenizer.encode_chat` after the BOS: the mask is True on assistant content and its `<|im_end|>`;
        each piece encoded on its own, so the prompt/response boundary tokenises as it will at inference."""
        ids, mask = list(self.bos), [False] * len(self.bos)
        turns = [*messages, *([{"role": "assistant", "content": None}] if add_generation_prompt else [])]
        for i, m in enumerate(turns):
            role, content = m.get("role"), m.get("content")
            last_prompt = add_generation_prompt and i == len(turns) - 1
            if role not in ("system", "user", "assistant") or not (isinstance(content, str) or last_prompt):
                raise PhiforgeError(f"chat message {i}: expected role system/user/assistant and text content, "
                                    f"got {m!r}")
            head = [self.im_start_id, *self.encode(role), self.im_sep_id]
            body = [] if last_prompt else [*self.encode(content), self.im_end_id]
            ids += head + body
            mask += [False] * len(head) + [role == "assistant"] * len(body)
        return ids, mask

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.encode_chat(messages, add_generation_prompt=True)[0]


class CausalLM(nn.Module):
    """A transformers causal LM called as phiforge's `Phi3` is in training: `model(ids)` -> logits [B, T, V]."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        if return_hidden:  # the backbone alone: no [B, T, V] logits (262,144 wide for Gemma 3)
            return self.hf.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        return self.hf(input_ids=input_ids, use_cache=False).logits

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from `forward(ids, return_hidden=True)`, as the model's own forward makes them (Gemma's final
        soft-capping included)."""
        logits = self.hf.get_output_embeddings()(hidden)
        cap = getattr(self.hf.config.get_text_config(), "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def head_weight(self) -> tuple[torch.Tensor, list[int] | None, float | None]:
        """What `head` computes, as (weight [V, d], the rows of it that train or None for all, soft-cap or None),
        for losses that fuse the head's matmul (phiforge/train/linear_ce.py). With peft's trainable chat tokens on
        the head (phiforge/train/lora.py) the weight is the frozen one with those rows swapped in, as peft's own
        forward builds it."""
        head = self.hf.get_output_embeddings()
        cap = getattr(self.hf.config.get_text_config(), "final_logit_softcapping", None)
        tokens = getattr(head, "token_adapter", None)
        if tokens is None:
            return head.weight, None, cap
        active = [a for a in tokens.active_adapters if a in tokens.token_indices]
        return (tokens.get_merged_weights(active), sorted({i for a in active for i in tokens.token_indices[a]}),
                cap)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_output_embeddings().weight.shape[0]  # .weight: peft's wrapped head has no out_features

    @property
    def max_seq_len(self) -> int:
        return int(getattr(self.hf.config.get_text_config(), "max_position_embeddings", 2048))


def _eos_ids(*values) -> list[int]:
    out: list[int] = []
    for v in values:
        out += [v] if isinstance(v, int) else list(v or [])
    return out


def load(directory: Path | str, weights: str = "fp32") -> tuple[CausalLM, HFChatTokenizer]:
    """The folder's model with fp32 weights and its tokenizer, chat specials and a distinct PAD added.

    fp32 whatever the folder stores, to train: the optimiser updates these weights, and a fine-tuning step (lr
    ~1e-5) is far below bf16's resolution (2^-8 relative), so bf16 weights would round most updates away. bf16
    compute comes from autocast, as for phiforge's own model (`train.autocast`). `weights="bf16"` for a model that
    only generates or scores (PTS rollouts, judge-DPO's policies, the contests): without autocast there, fp32
    weights would make every decode step's matmuls fp32, about 4x slower on CPU.
    """
    import transformers

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise PhiforgeError(f"{directory}: not a transformers model folder (no config.json)")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[weights])
    except Exception as e:  # noqa: BLE001  (transformers, safetensors and tokenizers each raise their own kinds)
        raise PhiforgeError(f"{directory}: transformers cannot load this folder as a causal LM: {e}") from None
    eos = _eos_ids(hf.generation_config.eos_token_id, hf.config.get_text_config().eos_token_id, tok.eos_token_id)
    missing = [s for s in CHAT_SPECIALS if s not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token_id is None or tok.pad_token_id in {*eos, tok.convert_tokens_to_ids(IM_END)}:
        tok.add_special_tokens({"pad_token": PAD})
    if len(tok) > hf.get_input_embeddings().num_embeddings:
        # New rows are drawn around the old rows' mean: from a fixed seed, so a folder loads as the same model
        # whatever the caller's random state (the eval stage keeps the replies of the model as given per machine)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            hf.resize_token_embeddings(len(tok))
    chat = HFChatTokenizer(tok, eos)
    tok.eos_token = IM_END
    # The template renders what encode_chat builds, BOS included, so transformers' apply_chat_template and
    # phiforge's chat and serve prompt the saved model exactly as it was trained.
    tok.chat_template = ("{{ bos_token }}" if chat.bos else "") + CHAT_TEMPLATE
    hf.config.pad_token_id = chat.pad_id
    hf.generation_config.pad_token_id = chat.pad_id
    hf.generation_config.eos_token_id = chat.stop_ids
    if chat.bos:
        hf.generation_config.bos_token_id = chat.bos[0]
    return CausalLM(hf), chat


def save(model: CausalLM, tok: HFChatTokenizer, directory: Path | str, dtype: str = "bf16") -> None:
    """A transformers folder (weights in `dtype`, config, generation_config, tokenizer), written atomically."""
    # A cast copy rather than a cast state dict: the copy keeps tied weights tied (saved once; Gemma's embedding is
    # 0.3 GB in bf16), its config records the dtype `dtype="auto"` loads, and the fp32 weights stay exact.
    hf = copy.deepcopy(model.hf).to("cpu", DTYPES[dtype])
    with atomic_path(Path(directory)) as tmp:
        hf.save_pretrained(tmp)
        tok.tok.save_pretrained(tmp)
        # transformers writes generation_config.json from hf.generation_config; check it says what `load` set
        gen = json.loads((Path(tmp) / "generation_config.json").read_text())
        if gen.get("pad_token_id") in _eos_ids(gen.get("eos_token_id")):
            raise PhiforgeError(f"{directory}: saved generation_config has PAD = EOS ({gen})")


def is_hf_folder(path: Path) -> bool:
    """A model folder transformers should load: a config.json of any architecture but phiforge's own (phi3)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") != "phi3"
    except (OSError, ValueError) as e:
        raise PhiforgeError(f"{config}: not readable JSON ({e})") from None


class HFTokenizer:
    """A transformers tokenizer as the chat code sees phiforge's ChatTokenizer."""

    def __init__(self, tok, eos_ids: Sequence[int]):
        self.tok = tok
        self.stop_ids = sorted(set(eos_ids))
        if not self.stop_ids:
            raise PhiforgeError(f"{tok.name_or_path}: neither the tokenizer nor generation_config.json names an end "
                                "of sequence token, so a reply could never end")
        # A model without a pad token never attends to padding anyway (the mask hides it): any id will do.
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]
        self.endoftext_id = tok.bos_token_id if tok.bos_token_id is not None else self.stop_ids[0]

    def encode(self, text: str) -> list[int]:
        # With the BOS the model was trained to see first (Gemma, Llama): a raw completion prompt starts a document.
        return self.tok(text, add_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> tuple[list[int], list]:
        if not self.tok.chat_template:
            raise PhiforgeError(f"{self.tok.name_or_path}: the tokenizer has no chat template (a base model?); use "
                                "/v1/completions with a plain prompt instead of chat")
        from jinja2 import TemplateError  # transformers' template engine, there whenever a tokenizer is

        try:
            ids = self.tok.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                               tokenize=True, return_dict=False)
        except TemplateError as e:  # the template's own refusal, e.g. Gemma's "roles must alternate"
            raise PhiforgeError(f"{self.tok.name_or_path}: its chat template refused these messages: {e}") from None
        return list(ids), []  # no loss mask: this side only serves


class HFChatModel:
    """A transformers folder loaded to serve or evaluate: `hf` the model (in `dtype`, eval mode), `tok` its own
    tokenizer and chat template (`HFTokenizer`), `cfg` its context length and vocabulary size."""

    def __init__(self, directory: Path | str, dtype: str = "bf16", device: str | None = None):
        import transformers

        directory = Path(directory)
        try:
            tok = transformers.AutoTokenizer.from_pretrained(directory)
            self.hf = transformers.AutoModelForCausalLM.from_pretrained(
                directory, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32).eval()
        except Exception as e:  # noqa: BLE001  (transformers, safetensors and tokenizers each raise their own kinds)
            raise PhiforgeError(f"{directory}: transformers cannot load this folder as a causal LM: {e}") from None
        if device is not None:
            self.hf.to(device)
        self.directory = directory
        eos = self.hf.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.tok = HFTokenizer(tok, eos + ([tok.eos_token_id] if tok.eos_token_id is not None else []))
        config = self.hf.config.get_text_config()
        self.cfg = SimpleNamespace(max_seq_len=int(getattr(config, "max_position_embeddings", 2048)),
                                   vocab_size=int(config.vocab_size))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())

    def to(self, device) -> HFChatModel:
        self.hf.to(device)
        return self


def _cache_kw(model) -> str:
    # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name goes in 5.40)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def begin(model, prompts: Sequence[Sequence[int]], pad_id: int):
    """Prefill left-padded prompts into a transformers model's `DynamicCache`: their last logits [B, V] and the
    `advance` / `select` steps of `generate.decode`, for `HFChatModel.hf` and `CausalLM.hf` alike."""
    from transformers import DynamicCache

    device = model.device
    cache_kw = _cache_kw(model)
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[r, L - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_kw: cache}).logits[:, -1].float()
    state = {"pos": positions[:, -1] + 1, "mask": mask}

    def select(idx):
        state["pos"], state["mask"] = state["pos"][idx], state["mask"][idx]
        cache.batch_select_indices(idx)

    def advance(tok, step):
        m = state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((len(tok), 1))], dim=1)
        with torch.inference_mode():
            out = model(input_ids=tok[:, None], attention_mask=m, position_ids=state["pos"][:, None],
                        use_cache=True, **{cache_kw: cache}).logits[:, -1].float()
        state["pos"] = state["pos"] + 1
        return out

    return logits, advance, select


def transformers_model(model):
    """The transformers model behind `model` (an `HFChatModel` or a `CausalLM`), or None for phiforge's own."""
    return model.hf if isinstance(model, (HFChatModel, CausalLM)) else None
