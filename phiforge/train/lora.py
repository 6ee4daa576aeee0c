"""LoRA on a transformers model that post-training fine-tunes (`sft.lora`): peft's adapters, not a copy of our own.

Only the low-rank adapters on `targets` train, and the embedding rows of the chat tokens: a base model's tokenizer
lacks `<|im_start|>`, `<|im_sep|>` and `<|im_end|>` (`hf.load` adds them at the mean of the old rows), and with the
embedding frozen the model could never learn to end a turn. peft trains just those rows (`trainable_token_indices`),
so the 262,144 x 640 embedding of Gemma 3 gets neither a gradient nor optimiser state. The adapters are merged when
the model is saved: what follows (PTS, DPO, eval, chat, serve, transformers itself) reads a plain folder.
"""

from __future__ import annotations

import torch

from phiforge.config import LoRAConfig
from phiforge.errors import PhiforgeError
from phiforge.lm.hf import CausalLM, HFChatTokenizer


def attach(model: CausalLM, tok: HFChatTokenizer, cfg: LoRAConfig, save, dtype: str = "bf16"):
    """Put adapters into `model.hf` in place (every other weight frozen) and return `save` made to merge them first."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise PhiforgeError("sft.lora.r > 0 needs peft, which is not installed: pip install peft") from e
    names = {name.rsplit(".", 1)[-1] for name, _ in model.hf.named_modules()}
    unknown = sorted(set(cfg.targets) - names)
    if unknown:
        raise PhiforgeError(f"sft.lora.targets: {', '.join(unknown)} name no module of {type(model.hf).__name__}")
    wrapped = get_peft_model(model.hf, LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets), bias="none",
        trainable_token_indices=sorted({tok.im_start_id, tok.im_sep_id, tok.im_end_id})))
    model.hf = wrapped.get_base_model()  # the same model, its Linear layers now adapter-carrying
    # Training in bf16, frozen weights are stored in bf16, what autocast computes with anyway: in fp32 every matmul
    # would cast its weight again (autocast caches casts only of weights that train), a quarter of a CPU step.
    for p in model.hf.parameters() if dtype == "bf16" else ():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)

    def merged_save(m: CausalLM, out) -> None:
        m.hf = wrapped.merge_and_unload()
        save(m, out)

    return merged_save
