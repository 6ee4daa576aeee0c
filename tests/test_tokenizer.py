import pytest

from phiforge.lm.tokenizer import IM_END, PAD, SPECIALS, ChatTokenizer, train_bpe

CORPUS = [
    "Exercise: What is 47 + 38?\nSolution: Ones: 7 + 8 = 15, write 5 carry 1. The answer is \\boxed{85}.",
    "Solve for x: 6*x + 15 = 93. Subtract 15 from both sides: 6*x = 78.",
    "The greatest common divisor of two numbers divides both of them.",
] * 50


@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer(train_bpe(CORPUS, vocab_size=400, min_frequency=2, progress=False))


@pytest.mark.parametrize("text", [
    "Exercise: What is 123 + 4567?", "  leading and trailing spaces  ", "naïve café – ünïcödé ✓ 数学",
    "tabs\tand\nnewlines\r\n", "\\boxed{\\frac{1}{2}}", "",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_digits_are_single_tokens(tok):
    pieces = [tok.tok.id_to_token(i) for i in tok.encode("4096")]
    assert pieces == ["4", "0", "9", "6"]


def test_specials_are_single_ids_and_pad_is_not_eos(tok):
    for s in SPECIALS:
        assert tok.encode(s) == [tok.tok.token_to_id(s)]
    assert tok.pad_id != tok.im_end_id and tok.pad_id != tok.endoftext_id
    assert tok.tok.id_to_token(tok.pad_id) == PAD


def test_chat_loss_mask_covers_assistant_content_and_im_end_only(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "The answer is \\boxed{4}."}]
    ids, mask = tok.encode_chat(messages)
    masked = [i for i, m in zip(ids, mask) if m]
    assert masked == tok.encode("The answer is \\boxed{4}.") + [tok.im_end_id]
    assert ids[-1] == tok.im_end_id and mask[-1]
    text = tok.decode(ids, skip_special=False)
    assert text.startswith("<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>")
    assert text.endswith("<|im_start|>assistant<|im_sep|>The answer is \\boxed{4}.<|im_end|>")


def test_generation_prompt_ends_with_assistant_header(tok):
    ids = tok.chat_prompt("Hi")
    assert tok.decode(ids, skip_special=False).endswith("<|im_start|>assistant<|im_sep|>")


def test_transformers_reads_the_saved_tokenizer_and_template(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}]
    hf_ids = hf.apply_chat_template(messages, tokenize=True)
    hf_ids = hf_ids["input_ids"] if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys") else hf_ids
    assert list(hf_ids) == tok.encode_chat(messages)[0]
    assert hf.eos_token == IM_END and hf.pad_token_id == tok.pad_id
