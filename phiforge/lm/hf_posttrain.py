"""Post-training of any transformers causal-LM folder (Gemma 3 270M, Llama, Qwen, a transformers Phi-3, ...), the
model `sft.init` names, with the same SFT loop, DPO loss and PTS search as phiforge's own checkpoints.

Two adapters make such a model look like phiforge's to that code:

* `CausalLM` wraps the transformers model so that `model(ids)` returns logits [B, T, V], as `Phi3` does. Rows are
  right-padded and read only at real positions, so causal attention alone keeps the padding out; no mask is needed.
* `HFChatTokenizer` renders conversations in phiforge's chat format (ChatML with Phi-4's `<|im_sep|>`, the strings
  of phiforge/lm/tokenizer.py) with the same loss mask as `ChatTokenizer.encode_chat`. A base model's tokenizer lacks
  those tokens (Gemma's has `<start_of_turn>` instead), so `load` adds them as special tokens and grows the
  embeddings; the new rows are drawn around the old rows' mean with their covariance (transformers'
  `mean_resizing`), not at the init scale, which would give them outsized logits in the first steps. The tokenizer's own BOS leads every conversation when it leads every plain encode,
  since a base model saw it before every document (Gemma degrades badly without it).

PAD is never an end-of-sequence id: when the folder's PAD is missing or equals one, `<|pad|>` is added. The saved
folder is a plain transformers one (`AutoModelForCausalLM` + `AutoTokenizer`): a chat template that renders exactly
what `encode_chat` builds, EOS = `<|im_end|>`, generation_config EOS = [`<|im_end|>`, the model's own EOS] and
PAD = the distinct pad id.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from phiforge.errors import PhiforgeError
from phiforge.rundir import atomic_path
from phiforge.lm.tokenizer import CHAT_TEMPLATE, IM_END, IM_SEP, IM_START, PAD

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
                                "(hf_posttrain.load adds them)")
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

    @property
    def vocab_size(self) -> int:
        return self.hf.get_output_embeddings().out_features

    @property
    def max_seq_len(self) -> int:
        return int(getattr(self.hf.config.get_text_config(), "max_position_embeddings", 2048))


def _eos_ids(*values) -> list[int]:
    out: list[int] = []
    for v in values:
        out += [v] if isinstance(v, int) else list(v or [])
    return out


def load(directory: Path | str) -> tuple[CausalLM, HFChatTokenizer]:
    """The folder's model with fp32 weights and its tokenizer, chat specials and a distinct PAD added.

    fp32 whatever the folder stores: the optimiser updates these weights, and a fine-tuning step (lr ~1e-5) is
    far below bf16's resolution (2^-8 relative), so bf16 weights would round most updates away. bf16 compute
    comes from autocast, as for phiforge's own model (`train.autocast`).
    """
    import transformers

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise PhiforgeError(f"{directory}: not a transformers model folder (no config.json)")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  (transformers, safetensors and tokenizers each raise their own kinds)
        raise PhiforgeError(f"{directory}: transformers cannot load this folder as a causal LM: {e}") from None
    eos = _eos_ids(hf.generation_config.eos_token_id, hf.config.get_text_config().eos_token_id, tok.eos_token_id)
    missing = [s for s in CHAT_SPECIALS if s not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token_id is None or tok.pad_token_id in {*eos, tok.convert_tokens_to_ids(IM_END)}:
        tok.add_special_tokens({"pad_token": PAD})
    if len(tok) > hf.get_input_embeddings().num_embeddings:
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


def sample(model: CausalLM, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
           stop_ids: Sequence[int] = (), temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None, keep_stop: bool = False) -> list[list[int]]:
    """New tokens of each prompt, decoded as one left-padded batch on transformers' KV cache (the prefill and steps
    that serving uses, `hf_model.begin`); a row ends at its first stop token, which is kept only with keep_stop.

    This is what `generate.generate` and `generate.sample_from_prefix` run for a `CausalLM`, so PTS samples its
    solutions and rollouts from either model kind through one call.
    """
    from phiforge.lm.generate import stream_rows
    from phiforge.lm.hf_model import begin

    stop = frozenset(stop_ids)
    outs: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0 or not prompts:
        return outs
    was_training = model.training
    model.eval()
    try:
        logits, advance, select = begin(model.hf, prompts, pad_id)
        # No stop ids for stream_rows, which would swallow the stop token: it comes out like any other, and `alive`
        # then retires its row.
        for step in stream_rows(logits, advance, select, max_new_tokens=max_new_tokens, stop_ids=(),
                                temperature=temperature, top_p=top_p, generator=generator,
                                alive=lambda row: outs[row][-1] not in stop):
            for row, token in step:
                outs[row].append(token)
    finally:
        model.train(was_training)
    return [o[:-1] if o and o[-1] in stop and not keep_stop else o for o in outs]
