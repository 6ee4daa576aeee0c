"""What a teacher is asked and answers, behind one small batch interface, and the disk cache of its answers.

    class Teacher(Protocol):
        name: str  # recorded as the `teacher` of every sample it helps make
        def complete(self, requests: list[ChatRequest]) -> list[Completion]: ...  # one per request, in order

A batch call rather than one request at a time, so that an HTTP teacher can keep many requests in flight and a
local model can decode many prompts in one batch. The teachers themselves: `HTTPTeacher` (phiforge/lm/http_teacher.py)
and `LocalTeacher` (phiforge/lm/teachers.py, where `make_teacher` picks one for a recipe).

design.md calls the method `generate`; it is `complete` here because `generate` already names the token-level
decode loop in phiforge/lm/generate.py, and a teacher completes chats.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from phiforge.errors import PhiforgeError

log = logging.getLogger("phiforge.lm.completions")
CACHE_FORMAT = 1  # part of every cache key: bump it when the meaning of a cached entry changes


class TeacherError(PhiforgeError):
    """A teacher could not answer; `url` and `status` (the last HTTP status, if any) say where and how."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None):
        super().__init__(message)
        self.url, self.status = url, status


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for. temperature 0 is greedy; a seed makes a sample reproducible (and cacheable)."""

    messages: Sequence[Mapping[str, str]]
    temperature: float = 0.0
    max_tokens: int = 256
    seed: int | None = None
    stop: Sequence[str] = ()

    def __post_init__(self):
        if isinstance(self.messages, (str, bytes)) or not self.messages:
            raise PhiforgeError(f"a chat request needs a non-empty list of messages, got {self.messages!r}")
        messages = []
        for i, m in enumerate(self.messages):
            if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise PhiforgeError(f"chat message {i}: expected {{'role': str, 'content': str}}, got {m!r}")
            messages.append({"role": m["role"], "content": m["content"]})
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise PhiforgeError(f"stop must be non-empty strings, got {self.stop!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature <= 2:
            raise PhiforgeError(f"temperature must be a number in [0, 2], got {self.temperature!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise PhiforgeError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise PhiforgeError(f"seed must be an integer or None, got {self.seed!r}")
        object.__setattr__(self, "messages", tuple(messages))
        object.__setattr__(self, "stop", stop)
        # 0 and 0.0 must be one request: the cache key hashes the JSON text, where they differ.
        object.__setattr__(self, "temperature", float(self.temperature))

    @classmethod
    def user(cls, content: str, system: str | None = None, **kwargs) -> ChatRequest:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return cls(messages, **kwargs)

    @property
    def deterministic(self) -> bool:
        """Whether the same request should always get the same answer: greedy, or sampled with a seed."""
        return self.temperature == 0 or self.seed is not None

    def canonical(self, model: str) -> dict:
        """Everything that decides the answer, as plain JSON: what the cache key hashes."""
        return {"v": CACHE_FORMAT, "model": model, "messages": [dict(m) for m in self.messages],
                "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
                "stop": list(self.stop)}


def request_key(canonical: dict) -> str:
    """SHA-256 of the canonical request's JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (a stop token or string), "length" (max_tokens), or whatever the server said
    prompt_tokens: int
    completion_tokens: int
    # Where the answer came from, not what it is: a cached answer equals the fresh one it was saved from.
    cached: bool = field(default=False, compare=False)


@runtime_checkable
class Teacher(Protocol):
    name: str

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...


class DiskCache:
    """Completions on disk in append-only JSON Lines logs under root: every process that writes appends to a log of
    its own (root/<time>-<host>-<pid>.jsonl, made at its first entry), one line per entry, key first.

    An entry costs one append where a file per entry cost a file creation, which took more kernel time than the whole
    HTTP request (bench/README.md, HTTP teacher throughput). A log has one writer, so
    processes (shards of one run, jobs of a cluster on a shared folder) never interleave; a crash mid-append leaves a
    last line without its newline, which loading skips. No fsync: an entry damaged by a power cut fails to parse and
    is a miss (or falls back to an older copy of the same key), so the request is simply sent again.

    Lookups go through an index of every log's whole lines (key -> where), read at the first lookup: a scan of the
    logs' bytes, not a JSON parse of each line. Entries appended by other processes after that are not seen; a
    later run sees them.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.index: dict[str, tuple[int, int, int]] | None = None  # key -> (log number, offset, length): the newest
        self.older: dict[str, list[tuple[int, int, int]]] = {}  # earlier copies of a key, newest last
        self.logs: list[Path] = []
        self.readers: dict[int, int] = {}  # log number -> open descriptor
        self.log_fd: int | None = None  # this process's own log, once it has written
        self.log_number, self.log_offset = -1, 0

    def _load(self) -> dict[str, tuple[int, int, int]]:
        if self.index is None:
            self.index = {}
            for path in sorted(self.root.glob("*.jsonl")):
                number = len(self.logs)
                self.logs.append(path)
                offset = 0
                with open(path, "rb") as f:
                    for line in f:
                        if line.startswith(b'{"key": "') and line.endswith(b"\n") and line[73:75] == b'",':
                            self._note(line[9:73].decode("ascii", "replace"), (number, offset, len(line)))
                        offset += len(line)
        return self.index

    def _note(self, key: str, where: tuple[int, int, int]) -> None:
        if (previous := self.index.get(key)) is not None:
            self.older.setdefault(key, []).append(previous)
        self.index[key] = where

    def get(self, key: str, canonical: dict) -> Completion | None:
        where = self._load().get(key)
        candidates = [where, *reversed(self.older.get(key, ()))] if where is not None else []
        for number, offset, length in candidates:
            path = self.logs[number]
            try:
                if number not in self.readers:
                    self.readers[number] = os.open(path, os.O_RDONLY)
                entry = json.loads(os.pread(self.readers[number], length, offset))
                if entry["request"] != canonical:  # a hash collision, or a line edited by hand
                    continue
                c = entry["completion"]
                return Completion(str(c["text"]), str(c["finish_reason"]), int(c["prompt_tokens"]),
                                  int(c["completion_tokens"]), cached=True)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("ignoring unreadable cache entry %s at byte %d of %s (%s)", key[:12], offset, path,
                            type(e).__name__)
        return None

    def put(self, key: str, canonical: dict, completion: Completion) -> None:
        body = {"text": completion.text, "finish_reason": completion.finish_reason,
                "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}
        # json.dumps escapes every control character in strings, so the line holds no newline of its own.
        line = (json.dumps({"key": key, "request": canonical, "completion": body}, ensure_ascii=False)
                + "\n").encode("utf-8")
        self._load()
        if self.log_fd is None:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / f"{time.time_ns()}-{socket.gethostname()}-{os.getpid()}.jsonl"
            self.log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            self.log_number = len(self.logs)
            self.logs.append(path)
        self._append(line)
        self._note(key, (self.log_number, self.log_offset, len(line)))
        self.log_offset += len(line)

    def _append(self, line: bytes) -> None:
        written = os.write(self.log_fd, line)
        while written < len(line):  # a short write (a full disk, a signal): the rest, or the error that stopped it
            written += os.write(self.log_fd, line[written:])

    def close(self) -> None:
        for fd in [*self.readers.values(), *([self.log_fd] if self.log_fd is not None else [])]:
            os.close(fd)
        self.readers, self.log_fd = {}, None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
