"""Any transformers causal-LM folder (Gemma 3 270M, Llama, Qwen, ...) behind the surface that `phiforge chat`,
`phiforge serve` and the local teacher use for phiforge checkpoints.

That surface is small: `cfg.max_seq_len` / `cfg.vocab_size`, a tokenizer with `encode`, `encode_chat`, `decode`,
`pad_id` and `stop_ids`, and `begin`, the prefill and the two per-step operations that `chat.stream_generate` runs
phiforge's own decode loop with (`generate.stream_rows`: rows leave at their first stop token, when their budget is
spent, or when `alive` turns False). The decode is ours, on transformers' forward and `DynamicCache`, rather than
`model.generate`: generate cannot drop a cancelled request's row mid-batch or hand out tokens as they come, and
sharing `generate.sample_next` means one checkpoint samples the same way whichever side of the seam it is on.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from phiforge.errors import PhiforgeError


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
        ids = self.tok.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True,
                                           return_dict=False)
        return list(ids), []  # no loss mask: this side only serves


class HFChatModel:
    def __init__(self, directory: Path | str, dtype: str = "bf16", device: str | None = None):
        import transformers

        directory = Path(directory)
        try:
            tok = transformers.AutoTokenizer.from_pretrained(directory)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                directory, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32).eval()
        except Exception as e:  # noqa: BLE001  (transformers, safetensors and tokenizers each raise their own kinds)
            raise PhiforgeError(f"{directory}: transformers cannot load this folder as a causal LM: {e}") from None
        if device is not None:
            self.model.to(device)
        self.directory = directory
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.tok = HFTokenizer(tok, eos + ([tok.eos_token_id] if tok.eos_token_id is not None else []))
        config = self.model.config.get_text_config()
        self.cfg = SimpleNamespace(max_seq_len=int(getattr(config, "max_position_embeddings", 2048)),
                                   vocab_size=int(config.vocab_size))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def begin(self, prompts: Sequence[Sequence[int]], pad_id: int):
        """Prefill left-padded prompts: their last logits [B, V] and the `advance` / `select` steps that
        `generate.stream_rows` decodes with (called through `chat.stream_generate`, which checks the arguments)."""
        return begin(self.model, prompts, pad_id)

    def generate(self, prompts: Sequence[Sequence[int]], *, batch_size: int = 32, **kwargs) -> list[list[int]]:
        """Each prompt's new tokens (stop token excluded), `batch_size` prompts at a time, longest first."""
        from phiforge.serve.chat import stream_generate

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        outs: list[list[int]] = [[] for _ in prompts]
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            for step in stream_generate(self, [prompts[i] for i in idx], **kwargs):
                for row, token in step:
                    outs[idx[row]].append(token)
        return outs


def _cache_kw(model) -> str:
    # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name goes in 5.40)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def begin(model, prompts: Sequence[Sequence[int]], pad_id: int):
    """Prefill left-padded prompts into a transformers model's `DynamicCache`: their last logits [B, V] and the
    `advance` / `select` steps of `generate.stream_rows` (serving, and post-training's sampling in hf_posttrain)."""
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
