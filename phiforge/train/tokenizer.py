"""Stage `tokenizer`: `phiforge.lm.tokenizer`'s byte-level BPE trained on the run's corpus."""

from __future__ import annotations

from phiforge.data.corpus import read_column
from phiforge.lm.tokenizer import ChatTokenizer, train_bpe


def execute(recipe, run) -> dict:
    """Stage `tokenizer`: BPE over the run's pretraining text and SFT conversations."""
    cfg = recipe.tokenizer
    texts = read_column(run, "pretrain", "text")[: cfg.max_train_docs]
    for messages in read_column(run, "sft", "messages")[: cfg.max_train_docs]:
        texts += [m["content"] for m in messages]
    texts += ["system", "user", "assistant"]
    tok = ChatTokenizer(train_bpe(texts, cfg.vocab_size, cfg.min_frequency))
    out = run.stage_dir("tokenizer")
    tok.save(out)
    sample = texts[: min(2000, len(texts))]
    n_tokens = sum(len(ids) for ids in tok.encode_batch(sample))
    return {**tok.info(), "chars_per_token": round(sum(map(len, sample)) / max(1, n_tokens), 3)}
