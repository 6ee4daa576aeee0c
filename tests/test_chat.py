"""`phiforge chat` and the streaming pieces it shares with the server, on a tiny random model."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from phiforge.lm.engine import TextStream, load_chat_model, resolve_model_dir
from phiforge.lm.generate import stream
from phiforge.serve.chat import fit_messages, printable, text_problem
from phiforge.lm.checkpoint import export_model
from phiforge.cli import main
from phiforge.errors import PhiforgeError
from phiforge.lm.generate import generate
from phiforge.lm.model import ModelConfig, Phi3
from phiforge.rundir import MARKER
from phiforge.lm.tokenizer import ChatTokenizer, train_bpe

CORPUS = [
    "The cat sat on the mat and looked at the garden.",
    "A train leaves the station at 9 and arrives at 12.",
    "Add 17 and 25 to get 42; multiply 6 by 7 to get 42 as well.",
    "Héllo wörld: naïve café façade, ✓ done — 東京.",
    "system user assistant",
] * 4


def make_checkpoint(directory: Path, *, seed: int = 0, max_seq_len: int = 256) -> Path:
    """A tiny random Phi3 with a tiny BPE, exported like a trained stage's model folder."""
    tok = ChatTokenizer(train_bpe(CORPUS, vocab_size=300, min_frequency=1, progress=False))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ffn=64,
                      max_seq_len=max_seq_len)
    torch.manual_seed(seed)
    model = Phi3(cfg)
    with torch.no_grad():
        # Peaked logits, so greedy argmax never hinges on float noise between batched and unbatched runs; and no
        # stop token under greedy decoding, so replies run to max_tokens and their length is known.
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
        model.lm_head.weight[[tok.im_end_id, tok.endoftext_id]] = 0.0
    export_model(model, cfg, tok, directory)
    return directory


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("chat") / "model")


@pytest.fixture(scope="module")
def loaded(ckpt):
    model, tok, _ = load_chat_model(ckpt)
    return model, tok


def test_stream_equals_generate_alone_and_batched(loaded):
    model, tok = loaded
    prompts = [tok.chat_prompt("hello there"), tok.chat_prompt("add 17 and 25", system="Be brief."), tok.encode("A")]
    common = dict(max_new_tokens=24, pad_id=tok.pad_id, stop_ids=[tok.im_end_id, tok.endoftext_id])
    expected = [generate(model, [p], **common)[0] for p in prompts]
    assert all(len(e) == 24 for e in expected)
    for p, e in zip(prompts, expected):
        assert [t for step in stream(model, [p], **common) for _, t in step] == e
    rows = [[] for _ in prompts]
    for step in stream(model, prompts, **common):
        for i, t in step:
            rows[i].append(t)
    assert rows == expected


def test_stream_ends_at_stop_token_and_when_a_row_dies(loaded):
    model, tok = loaded
    prompts = [tok.chat_prompt("hello"), tok.chat_prompt("the cat")]
    free = generate(model, prompts, max_new_tokens=16, pad_id=tok.pad_id)
    stop = free[0][5]  # pretend the 6th token of row 0 is the end of turn
    first = free[0].index(stop)
    counts = [0, 0]

    def alive(i):  # row 1's client "disconnects" after 3 tokens
        return i != 1 or counts[1] < 3

    for step in stream(model, prompts, max_new_tokens=16, pad_id=tok.pad_id, stop_ids=[stop], alive=alive):
        assert all(t != stop for _, t in step)
        for i, _ in step:
            counts[i] += 1
    assert counts == [first, 3]
    assert generate(model, prompts[:1], max_new_tokens=16, pad_id=tok.pad_id, stop_ids=[stop])[0] == free[0][:first]


def test_text_stream_holds_back_split_characters_and_stop_strings(loaded):
    _, tok = loaded
    text = "Héllo wörld ✓ 東京 and the cat"
    ids = tok.encode(text)
    ts = TextStream(tok)
    deltas = [ts.push(t) for t in ids]
    assert "".join(deltas) + ts.flush() == text
    assert not any("\ufffd" in d for d in deltas)

    ts = TextStream(tok, stop=["wörld", "zzz"])
    shown = "".join(ts.push(t) for t in ids) + ts.flush()
    assert ts.stopped and shown == ts.text == "Héllo "
    assert TextStream(tok, stop=["東"]).extend(ids) < len(ids)


def test_run_folder_resolves_to_best_completed_model(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"format": 1}))
    with pytest.raises(PhiforgeError, match="no finished model"):
        resolve_model_dir(run)
    for stage in ("pretrain", "midtrain", "sft", "dpo", "dpo2"):
        (run / stage / "model").mkdir(parents=True)
        (run / stage / "model" / "config.json").write_text("{}")
        (run / stage / "manifest.json").write_text(json.dumps({"status": "complete"}))
    assert resolve_model_dir(run) == run / "dpo2" / "model"
    (run / "dpo2" / "manifest.json").unlink()
    assert resolve_model_dir(run) == run / "dpo" / "model"
    (run / "dpo" / "manifest.json").unlink()  # invalidated: its model is stale
    assert resolve_model_dir(run) == run / "sft" / "model"
    (run / "sft" / "manifest.json").unlink()
    assert resolve_model_dir(run) == run / "midtrain" / "model"  # the context-extended base
    (run / "midtrain" / "manifest.json").unlink()
    assert resolve_model_dir(run) == run / "pretrain" / "model"
    with pytest.raises(PhiforgeError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(PhiforgeError, match="neither a model folder"):
        resolve_model_dir(tmp_path)


def test_cli_errors_are_one_line(ckpt, tmp_path, capsys):
    assert main(["chat", str(tmp_path / "missing")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00" * 40)
    assert main(["chat", str(bad)]) == 2
    assert main(["chat", str(ckpt), "--temperature", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("phiforge: error: ") for line in err)
    assert "does not exist" in err[0] and "safetensors" in err[1] and "--temperature" in err[2]


class Terminal:
    """A child process on a pseudo-terminal, read with deadlines so a hung child fails the test instead of it."""

    def __init__(self, args: list[str]):
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
        # A test run started in the background inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the default disposition a terminal user's program has.
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(slave)
        self.fd, self.out = master, ""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Everything printed up to and including the next `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {text!r}; output so far:\n{self.out}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"child exited before printing {text!r}; output:\n{self.out}"
                self.out += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
        head, _, self.out = self.out.partition(text)
        return head + text

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def interrupt_until(self, texts: tuple[str, ...], timeout: float = 60) -> None:
        """Send Ctrl-C every quarter second until one of texts is printed: on a loaded machine the first one can
        land before the reply's handler is in place and be lost."""
        deadline = time.monotonic() + timeout
        while not any(t in self.out for t in texts):
            assert time.monotonic() < deadline, f"timed out waiting for {texts!r}; output so far:\n{self.out}"
            self.proc.send_signal(signal.SIGINT)
            if select.select([self.fd], [], [], 0.25)[0]:
                chunk = os.read(self.fd, 4096)
                assert chunk, f"child exited before printing {texts!r}; output:\n{self.out}"
                self.out += chunk.decode("utf-8", "replace").replace("\r\n", "\n")


def test_chat_cli_through_a_terminal(ckpt):
    term = Terminal([sys.executable, "-m", "phiforge.cli", "chat", str(ckpt), "--max-tokens", "12", "--seed", "0"])
    try:
        term.expect("you> ")
        term.send("hello there")
        reply = term.expect("you> ")
        assert "assistant> " in reply and "(12 tokens," in reply and "tokens/s)" in reply
        assert "[stopped at 12 tokens]" in reply  # this model never says <|im_end|>, so the reply hits the cap
        term.send("/temp 0")
        assert "(temperature 0, greedy)" in term.expect("you> ")
        term.send("/temp hot")
        assert "usage: /temp X" in term.expect("you> ")
        term.send("/system Answer in one word.")
        assert "(system prompt set" in term.expect("you> ")
        term.send("/reset")
        assert "(conversation cleared)" in term.expect("you> ")
        term.send("what is 6 times 7?")
        reply = term.expect("you> ")
        # After /reset at temperature 0 the reply is the greedy continuation of exactly [system, user].
        model, tok, _ = load_chat_model(ckpt)
        prompt = tok.encode_chat([{"role": "system", "content": "Answer in one word."},
                                  {"role": "user", "content": "what is 6 times 7?"}], add_generation_prompt=True)[0]
        expected = printable(tok.decode(generate(model, [prompt], max_new_tokens=12, pad_id=tok.pad_id)[0]))
        assert f"assistant> {expected} [stopped at 12 tokens]" in reply
        term.send("/quit")
        assert term.proc.wait(timeout=30) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        os.close(term.fd)


def test_text_problem_refuses_surrogates_and_control_characters_but_tab_newline_and_return():
    controls = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]
    for c in controls:
        refused = text_problem(f"ok {c}") is not None
        assert refused == (c not in "\t\n\r"), hex(ord(c))
        # a model's reply sent back may hold them; a terminal shows them as U+FFFD
        assert text_problem(f"ok {c}", generated=True) is None
        assert printable(c) == ("\ufffd" if refused else c)
    assert text_problem("Héllo wörld ✓ 東京 \ufffd\U0001f600 \u2028") is None
    assert printable("Héllo\x1b[31m\x00") == "Héllo\ufffd[31m\ufffd"
    assert text_problem("ab\x00") == "control character U+0000 at character 2"
    assert text_problem("a\ud800") == text_problem("a\ud800", generated=True) == "lone surrogate U+D800 at character 1"
    assert text_problem(b"ok \xff".decode("utf-8", "surrogateescape"), raw_bytes=True) == \
        "invalid UTF-8 byte 0xFF at character 3"


def test_fit_messages_drops_the_fewest_oldest_turns(loaded):
    _, tok = loaded
    system = [{"role": "system", "content": "Be brief."}]
    turns = [[{"role": "user", "content": f"question {i} about the cat on the mat"},
              {"role": "assistant", "content": f"answer {i}: the train leaves at 9 and arrives at 12"}]
             for i in range(12)]
    messages = system + [m for t in turns for m in t] + [{"role": "user", "content": "and now?"}]
    full = len(tok.encode_chat(messages, add_generation_prompt=True)[0])
    max_len, max_tokens = 200, 40
    assert full > max_len  # the test needs a conversation that does not fit
    prompt, budget, dropped = fit_messages(tok, messages, max_len, max_tokens)
    kept = system + messages[1 + dropped:]
    assert prompt == tok.encode_chat(kept, add_generation_prompt=True)[0]
    assert dropped % 2 == 0 and 0 < dropped < len(messages) - 2  # whole turns; the system message and question stay
    assert budget == min(max_tokens, max_len - len(prompt)) and budget >= min(max_tokens, max_len // 4)
    # one turn fewer dropped would not have left the reply its room: no more is dropped than needed
    one_less = tok.encode_chat(system + messages[1 + dropped - 2:], add_generation_prompt=True)[0]
    assert max_len - len(one_less) < min(max_tokens, max_len // 4)
    # a conversation that fits is left whole; one whose last question alone is too long keeps just that question
    assert fit_messages(tok, messages[-3:], max_len, max_tokens)[2] == 0
    huge = system + turns[0] + [{"role": "user", "content": "the cat " * 300}]
    prompt, budget, dropped = fit_messages(tok, huge, max_len, max_tokens)
    assert dropped == 2 and budget <= 0 and prompt == tok.encode_chat(system + huge[-1:], add_generation_prompt=True)[0]


def chat_process(ckpt: Path, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "phiforge.cli", "chat", str(ckpt), *args], input=stdin,
                          capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """A 64-token context: a few turns outgrow it."""
    return make_checkpoint(tmp_path_factory.mktemp("chat-small") / "model", max_seq_len=64)


def test_chat_survives_any_input(small_ckpt):
    bad = [b"caf\xe9 latin-1", b"\xed\xa0\x80 an encoded surrogate", b"nul \x00 inside", b"\x1b[31m red"]
    good = [f"tell me about the cat number {i}".encode() for i in range(6)]
    lines = [g for pair in zip(good, bad + [b"", b"/nonsense"]) for g in pair]
    out = chat_process(small_ckpt, "--max-tokens", "8", "--temperature", "0", stdin=b"\n".join(lines) + b"\n")
    text = out.stdout.decode()
    assert out.returncode == 0 and "Traceback" not in text + out.stderr.decode(), text + out.stderr.decode()
    refusals = [line for line in text.splitlines() if "(not sent: " in line]
    assert len(refusals) == 4
    assert "invalid UTF-8 byte 0xE9 at character 3" in refusals[0]
    assert "invalid UTF-8 byte 0xED at character 0" in refusals[1]
    assert "control character U+0000 at character 4" in refusals[2]
    assert "control character U+001B at character 0" in refusals[3]
    assert text.count("[stopped at 8 tokens]") == 6  # every good line got its reply, after the bad ones too
    assert "dropped to fit the model's context" in text  # six turns outgrow 64 tokens; chat went on regardless
    assert "\x1b" not in text and "\x00" not in text  # nothing typed or generated reached the terminal raw


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(tmp_path):
    ckpt = make_checkpoint(tmp_path / "model", max_seq_len=1600)
    # greedy: this checkpoint never picks a stop token then, so the reply runs on until interrupted (sampled, it
    # could stop on its own after a few tokens)
    term = Terminal([sys.executable, "-m", "phiforge.cli", "chat", str(ckpt), "--max-tokens", "1500",
                     "--temperature", "0"])
    try:
        term.expect("you> ")
        term.send("talk for a long time")
        term.expect("assistant> ")
        term.interrupt_until(("[interrupted]", " tokens/s)"))  # 1500 tokens take seconds: it lands mid-reply
        reply = term.expect("you> ")
        assert "[interrupted]" in reply and "[stopped at" not in reply
        # At the prompt the line goes, the conversation stays. A SIGINT that lands after readline printed the
        # prompt but before it waits for a key is only seen at the next key (CPython's readline loop), so resend.
        for _ in range(30):
            term.proc.send_signal(signal.SIGINT)
            if select.select([term.fd], [], [], 1.0)[0]:
                break
        term.expect("(Ctrl-D or /quit leaves)")
        term.send("/temp 0")
        term.expect("(temperature 0, greedy)")
        term.expect("you> ")
        os.write(term.fd, b"\xff\xfe\n")  # not UTF-8, typed through the terminal's line editing
        assert "(not sent: the line has invalid UTF-8 byte 0xFF" in term.expect("you> ")
        os.write(term.fd, b"\x04")  # Ctrl-D: EOF
        assert term.proc.wait(timeout=30) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        os.close(term.fd)
