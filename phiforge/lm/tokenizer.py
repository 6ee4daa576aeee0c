"""Byte-level BPE trained with HF `tokenizers`, plus Phi-4's ChatML-with-separator chat format.

Digits are split one per token before BPE: a small model learns column arithmetic far more easily when "4096" is
always 4,0,9,6 than when BPE merges arbitrary digit runs. PAD is its own token, never EOS, so padding can never be
mistaken for the end of a turn (the published Phi-4 tokenizer shipped PAD = EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from phiforge.errors import PhiforgeError
from phiforge.rundir import atomic_write_json, atomic_write_text

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_SEP = "<|im_sep|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIALS = [ENDOFTEXT, IM_START, IM_SEP, IM_END, PAD]

# The same format as Jinja, so transformers' `apply_chat_template` renders exactly what `encode_chat` builds.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}<|im_sep|>{{ message['content'] }}<|im_end|>"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, progress: bool = True) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class ChatTokenizer:
    """A `tokenizers.Tokenizer` with the chat specials resolved to ids and the chat format built in."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        ids = {}
        for s in SPECIALS:
            i = tok.token_to_id(s)
            if i is None:
                raise PhiforgeError(f"tokenizer lacks the special token {s}")
            ids[s] = i
        self.endoftext_id = ids[ENDOFTEXT]
        self.im_start_id = ids[IM_START]
        self.im_sep_id = ids[IM_SEP]
        self.im_end_id = ids[IM_END]
        self.pad_id = ids[PAD]
        assert self.pad_id not in (self.im_end_id, self.endoftext_id)
        self.special_ids = frozenset(ids.values())

    @property
    def stop_ids(self) -> list[int]:
        """What ends a reply: <|im_end|> closes an assistant turn, <|endoftext|> a whole document."""
        return [self.im_end_id, self.endoftext_id]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    # -- plain text ------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    # -- chat ------------------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """Token ids and a loss mask that is True exactly on assistant content and its closing `<|im_end|>`.

        Each piece is encoded on its own, so the prompt/response boundary tokenises the same in training and at
        inference time.
        """
        ids: list[int] = []
        mask: list[bool] = []
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise PhiforgeError(f"chat message {i}: expected role system/user/assistant and text content, got {m!r}")
            head = [self.im_start_id, *self.encode(role), self.im_sep_id]
            body = [*self.encode(content), self.im_end_id]
            ids += head + body
            mask += [False] * len(head) + [role == "assistant"] * len(body)
        if add_generation_prompt:
            head = [self.im_start_id, *self.encode("assistant"), self.im_sep_id]
            ids += head
            mask += [False] * len(head)
        return ids, mask

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.encode_chat(messages, add_generation_prompt=True)[0]

    # -- files -----------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """tokenizer.json plus the transformers side files, so `AutoTokenizer.from_pretrained(dir)` works."""
        directory = Path(directory)
        atomic_write_text(directory / "tokenizer.json", self.tok.to_str())
        atomic_write_json(
            directory / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": ENDOFTEXT,
                "eos_token": IM_END,
                "pad_token": PAD,
                "unk_token": None,
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": 1_000_000,
                "clean_up_tokenization_spaces": False,
            },
        )
        atomic_write_json(
            directory / "special_tokens_map.json", {"bos_token": ENDOFTEXT, "eos_token": IM_END, "pad_token": PAD}
        )

    @classmethod
    def load(cls, path: Path) -> "ChatTokenizer":
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise PhiforgeError(f"tokenizer file {file} does not exist")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise PhiforgeError(f"tokenizer file {file} is corrupt: {str(e).splitlines()[0][:200]}") from None
        return cls(tok)

    def info(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "endoftext_id": self.endoftext_id,
            "im_end_id": self.im_end_id,
            "specials": {s: self.tok.token_to_id(s) for s in SPECIALS},
        }
