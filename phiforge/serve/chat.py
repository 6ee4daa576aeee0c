"""`phiforge chat`: a terminal conversation with a trained model, streamed token by token.

Also holds what the HTTP server (`phiforge.serve.server`) shares with it: loading the named models, the text a client
may send, OpenAI-style messages, and fitting a conversation into the context. Models are loaded, decoded and
detokenised by the inference layer (`phiforge.lm.engine`, `phiforge.lm.generate.stream`).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from phiforge.errors import PhiforgeError
from phiforge.lm.engine import TextStream, default_name, load_chat_model
from phiforge.lm.generate import stream
from phiforge.lm.tokenizer import ChatTokenizer

HELP = "commands: /reset (forget the conversation), /temp X, /system TEXT (empty to clear), /help, /quit"

# Text a client sends is Unicode without lone surrogates (never valid; they are also how bytes that are not UTF-8
# arrive, read with errors="surrogateescape") and without the control characters (Unicode category Cc) other than
# tab, newline and carriage return: no prose or code needs them, NUL truncates text in C code and ESC drives the
# terminal that shows a conversation. A model may still generate them; its replies are passed on as generated (a
# served model scores as the checkpoint does), shown on a terminal as U+FFFD (`printable`), and accepted back as
# history in the assistant's turns.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_UNSENDABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SHOWN = {c: "\ufffd" for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]}


def load_named_models(path: str | None, named: Sequence[str]) -> list[tuple[str, Path, nn.Module, ChatTokenizer]]:
    """(name, folder, model, tokenizer) for a RUN_OR_CHECKPOINT (named after its folder) and each NAME=PATH."""
    specs = [(None, path)] if path is not None else []
    for spec in named:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise PhiforgeError(f"--model expects NAME=PATH, got {spec!r}")
        specs.append((name, where))
    if not specs:
        raise PhiforgeError("nothing to serve: give a run folder or model folder, or --model NAME=PATH")
    loaded = []
    for name, where in specs:
        model, tok, model_dir = load_chat_model(where)
        loaded.append((name or default_name(model_dir), model_dir, model, tok))
    return loaded


def text_problem(text: str, *, raw_bytes: bool = False, generated: bool = False) -> str | None:
    """Why a client may not send text (see _UNSENDABLE), as "control character U+0000 at character 3", or None.
    raw_bytes: the text was read with errors="surrogateescape", so U+DC80-U+DCFF are bytes that are not UTF-8.
    generated: the text is a model's reply sent back, which may hold the control characters it generated."""
    found = (_SURROGATE if generated else _UNSENDABLE).search(text)
    if found is None:
        return None
    code = ord(found.group())
    if raw_bytes and 0xDC80 <= code <= 0xDCFF:
        what = f"invalid UTF-8 byte 0x{code - 0xDC00:02X}"
    elif 0xD800 <= code <= 0xDFFF:
        what = f"lone surrogate U+{code:04X}"
    else:
        what = f"control character U+{code:04X}"
    return f"{what} at character {found.start()}"


def printable(text: str) -> str:
    """Generated text as a terminal shows it: the control characters `text_problem` refuses become U+FFFD."""
    return text.translate(_SHOWN)


def openai_messages(messages) -> list[dict]:
    """OpenAI-style chat messages as the plain {role, content} ones `encode_chat` takes; text content parts are
    joined, the 'developer' role is the system role, and anything else is a one-line PhiforgeError."""
    if not isinstance(messages, list) or not messages:
        raise PhiforgeError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise PhiforgeError(f"messages[{i}]: only text content parts are supported")
            content = "".join(p["text"] for p in content)
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise PhiforgeError(f"messages[{i}] must have role system/user/assistant and text content")
        out.append({"role": role, "content": content})
    return out


def fit_messages(tok, messages: list[dict], max_len: int, max_tokens: int) -> tuple[list[int], int, int]:
    """The chat prompt for messages, its reply budget, and how many messages were left out to make room: while the
    reply would get fewer than min(max_tokens, max_len // 4) tokens, the oldest turn (a user message and what follows
    it up to the next one) goes. Leading system messages and the last user turn always stay.

    The one rule for a conversation that outgrows the context: terminal chat applies it to its history, the server
    to a request that asks for "truncation": "auto" (the web page's)."""
    head = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    starts = [head] + [i for i in range(head + 1, len(messages)) if messages[i]["role"] == "user"]
    want = min(max_tokens, max_len // 4)
    fitted: dict[int, tuple[list[int], int]] = {}

    def fit(start: int) -> bool:
        prompt = tok.encode_chat(messages[:head] + messages[start:], add_generation_prompt=True)[0]
        fitted[start] = prompt, min(max_tokens, max_len - len(prompt))
        return fitted[start][1] >= want

    # Leaving out more turns never lengthens the prompt, so the first start that fits is found by bisection: a
    # long conversation costs a few encodings, not one per turn.
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fit(starts[mid]):
            hi = mid
        else:
            lo = mid + 1
    start = starts[lo]
    if start not in fitted:
        fit(start)
    return *fitted[start], start - head


class Conversation:
    """Terminal chat's state (history, system prompt, sampling) and its two actions: a /command and a reply."""

    def __init__(self, model: nn.Module, tok: ChatTokenizer, *, temperature: float, top_p: float, max_tokens: int,
                 system: str | None, seed: int | None):
        self.model, self.tok, self.temperature, self.top_p = model, tok, temperature, top_p
        self.max_tokens, self.system, self.seed = max_tokens, system, seed
        self.history: list[dict] = []

    def command(self, line: str) -> bool:
        """Carry out a /command; False when it ends the chat."""
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/reset":
            self.history.clear()
            print("(conversation cleared)", flush=True)
        elif cmd == "/temp":
            try:
                value = float(arg)
                if not 0 <= value <= 10:
                    raise ValueError
                self.temperature = value
                print(f"(temperature {value:g}{', greedy' if value == 0 else ''})", flush=True)
            except ValueError:
                print(f"(usage: /temp X with 0 <= X <= 10; 0 is greedy; temperature stays {self.temperature:g})")
        elif cmd == "/system":
            self.system = arg or None
            print(f"(system prompt {'set' if self.system else 'cleared'}; applies from the next message)", flush=True)
        elif cmd == "/help":
            print(HELP, flush=True)
        else:
            print(f"(unknown command {cmd}; {HELP})", flush=True)
        return True

    def reply(self, line: str) -> None:
        """Stream the model's answer to line; Ctrl-C stops it early and the conversation goes on."""
        user = {"role": "user", "content": line}
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history + [user]
        max_len = self.model.cfg.max_seq_len
        prompt, budget, dropped = fit_messages(self.tok, messages, max_len, self.max_tokens)
        if dropped:
            del self.history[:dropped]
            print(f"(the oldest {dropped} messages dropped to fit the model's context)", flush=True)
        if budget <= 0:
            print(f"(message too long: the prompt is {len(prompt)} tokens, the model's context {max_len})")
            return
        text, n, t0 = TextStream(self.tok), 0, time.perf_counter()
        try:
            print("assistant> ", end="", flush=True)
            ended = False
            for step in stream(self.model, [prompt], max_new_tokens=budget, pad_id=self.tok.pad_id,
                                        stop_ids=self.tok.stop_ids, temperature=self.temperature, top_p=self.top_p,
                                        seed=self.seed):
                ended = not step  # an empty step is the stop token
                for _, token in step:
                    n += 1
                    print(printable(text.push(token)), end="", flush=True)
            note = "" if ended else f" [stopped at {budget} tokens]"
        except KeyboardInterrupt:
            note = " [interrupted]"
        print(printable(text.flush()) + note, flush=True)
        if n:
            print(f"({n} tokens, {n / max(time.perf_counter() - t0, 1e-9):.1f} tokens/s)", flush=True)
        self.history += [user, {"role": "assistant", "content": text.text}]


def chat_loop(model: nn.Module, tok: ChatTokenizer, *, temperature: float = 0.7, top_p: float = 0.95,
              max_tokens: int = 256, system: str | None = None, seed: int | None = None) -> int:
    """Read lines from stdin, stream replies to stdout; returns the exit status. Only EOF and /quit end it: a line
    that is not valid text (`text_problem`) is refused with a note, Ctrl-C stops a reply or clears the line."""
    chat = Conversation(model, tok, temperature=temperature, top_p=top_p, max_tokens=max_tokens, system=system,
                        seed=seed)
    print(f"{HELP}\n", flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(flush=True)
            return 0
        except KeyboardInterrupt:  # as in Python's own prompt: drop the line, not the conversation
            print("\n(Ctrl-D or /quit leaves)", flush=True)
            continue
        if problem := text_problem(line, raw_bytes=True):
            # Not echoed: the line is what could not be shown.
            print(f"(not sent: the line has {problem}; chat takes UTF-8 text without control characters but tab)",
                  flush=True)
        elif line.startswith("/"):
            if not chat.command(line):
                return 0
        elif line:
            chat.reply(line)


def run_chat(args) -> int:
    """`phiforge chat`, given its parsed arguments."""
    if args.temperature < 0:
        raise PhiforgeError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise PhiforgeError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.max_tokens < 1:
        raise PhiforgeError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    model, tok, model_dir = load_chat_model(args.path)
    # Bytes that are not UTF-8 reach chat_loop as surrogates for it to refuse, rather than ending input() with a
    # UnicodeDecodeError; text the terminal cannot show prints as "?" rather than raising.
    for std, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "replace")):
        if hasattr(std, "reconfigure"):
            std.reconfigure(errors=errors)
    try:
        import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
    except ImportError:
        pass
    print(f"phiforge chat: {model_dir} ({model.num_params() / 1e6:.2f}M parameters, "
          f"context {model.cfg.max_seq_len} tokens)", flush=True)
    try:
        return chat_loop(model, tok, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                         system=args.system, seed=args.seed)
    except KeyboardInterrupt:
        print(flush=True)
        return 0
