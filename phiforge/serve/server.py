"""`phiforge serve`: an OpenAI-compatible HTTP server (chat completions, completions, models) and a chat web page.

Requests are not run one by one: they wait in a queue for a few milliseconds so that those arriving together share
one batched call of the step-wise decode loop (`phiforge.lm.generate.stream`), plain and streamed replies alike. The
model runs in a single worker thread, so the event loop keeps answering (health checks, disconnects, 429s) while a
batch decodes, and the model never sees two forward passes at once. A request whose client hangs up, streamed or not, leaves its
batch at the next step.

Who may send requests (Host, Origin, API key) is `serve_access`'s business; this module refuses what no model should
read: a body that is not `application/json`, and text with lone surrogates, bytes that are not UTF-8 or control
characters other than tab, newline and carriage return (`chat.text_problem`), each a 400 naming its field. Replies
go out as the model generated them, control characters included, so an assistant turn sent back may hold them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from phiforge.errors import PhiforgeError
from phiforge.lm.engine import TextStream
from phiforge.lm.generate import stream
from phiforge.serve.access import LOOPBACK, Access, Guard, openai_error
from phiforge.serve.chat import fit_messages, load_named_models, openai_messages, text_problem

log = logging.getLogger("phiforge.serve.server")
STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    max_tokens: int = 512  # the most new tokens one request may ask for
    max_concurrent: int = 64  # requests queued or generating at once; beyond that a 429
    batch_window_ms: float = 10.0  # how long the first request of a batch waits for company
    max_batch: int = 32
    max_body_bytes: int = 1 << 20


@dataclass
class Served:
    name: str
    path: Path
    model: object
    tok: object
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_seq_len


@dataclass(eq=False)
class Job:
    served: Served
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the event loop when the client goes away
    done: bool = False  # set by the worker once the final event is posted


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return openai_error(self.status, self.message, type=self.type, param=self.param, code=self.code)


class Server:
    """The models, the request queue and the worker thread behind the HTTP routes."""

    def __init__(self, models: list[Served], limits: Limits | None = None):
        names = [m.name for m in models]
        if not models or len(set(names)) != len(names):
            raise PhiforgeError(f"serve needs at least one model and distinct model names, got {names}")
        self.models = {m.name: m for m in models}
        self.limits = limits or Limits()
        self.active = 0
        self.closing = False
        self.stats = {"requests": 0, "batches": 0, "batched_requests": 0, "max_batch": 0, "completion_tokens": 0,
                      "cancelled": 0, "rejected_busy": 0}
        self.queue, self.loop = None, None  # made by the app's lifespan, on the event loop that serves
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phiforge-model")

    async def collect(self) -> None:
        """Forever: take a request, gather whatever else arrives within the window, hand the lot to the worker."""
        window = self.limits.batch_window_ms / 1000
        while True:
            jobs = [await self.queue.get()]
            deadline = self.loop.time() + window
            while len(jobs) < self.limits.max_batch:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - self.loop.time())))
                except TimeoutError:
                    break
            try:
                await self.loop.run_in_executor(self.executor, self.run_batch, jobs)
            except RuntimeError:  # the executor is shut down: the server is stopping
                return

    def run_batch(self, jobs: list[Job]) -> None:
        """Worker thread: run the jobs, one engine call per group that can share a batch."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if job.cancelled or self.closing:
                self._cancel(job)
            else:
                # Greedy decoding ignores top_p and seed, so greedy requests share a batch whatever they say. A seeded
                # request decodes alone, so that its sample depends on the request only: two jobs with one seed in
                # one batch (a client's retry racing its original, say) would draw two different rows of one stream.
                sampling = () if job.temperature == 0 else ("seeded", id(job)) if job.seed is not None \
                    else (job.temperature, job.top_p)
                groups.setdefault((job.served.name, *sampling), []).append(job)
        for group in groups.values():
            self.stats["batches"] += 1
            self.stats["batched_requests"] += len(group)
            self.stats["max_batch"] = max(self.stats["max_batch"], len(group))
            try:
                self._run_group(group)
            except Exception as e:  # a bug must fail these requests, not kill the worker and hang every later one
                log.exception("generation failed")
                for job in group:
                    if not job.done:
                        self._post(job, ("error", f"generation failed: {type(e).__name__}: {e}"))

    def _engine_args(self, group: list[Job]) -> dict:
        j, tok = group[0], group[0].served.tok
        return dict(max_new_tokens=max(x.max_tokens for x in group), pad_id=tok.pad_id,
                    stop_ids=tok.stop_ids, temperature=j.temperature, top_p=j.top_p, seed=j.seed)

    def _run_group(self, group: list[Job]) -> None:
        """Decode the group step by step, streamed or not: a row leaves the batch once its request is done (its own
        budget or a stop string reached) or cancelled (its client hung up), so no step is spent for nobody."""
        texts = [TextStream(j.served.tok, j.stop) for j in group]
        counts = [0] * len(group)

        def alive(i: int) -> bool:
            return not (group[i].done or group[i].cancelled or self.closing)

        for step in stream(group[0].served.model, [j.prompt for j in group], alive=alive,
                                    **self._engine_args(group)):
            for i, token in step:
                job = group[i]
                if job.done:
                    continue
                counts[i] += 1
                if (delta := texts[i].push(token)) and job.stream:
                    self._post(job, ("delta", delta))
                if texts[i].stopped or counts[i] >= job.max_tokens:
                    self._finish(job, texts[i], counts[i], "stop" if texts[i].stopped else "length")
            stepped = {i for i, _ in step}
            for i, job in enumerate(group):
                if job.done:
                    continue
                if job.cancelled or self.closing:
                    self._cancel(job)
                elif i not in stepped:  # it sampled a stop token
                    self._finish(job, texts[i], counts[i], "stop")

    def _finish(self, job: Job, text: TextStream, n_tokens: int, reason: str) -> None:
        self.stats["completion_tokens"] += n_tokens
        if job.stream and (tail := text.flush()):
            self._post(job, ("delta", tail))
        self._post(job, ("end", text.text, n_tokens, reason))

    def _cancel(self, job: Job) -> None:
        self.stats["cancelled"] += 1
        self._post(job, ("end", "", 0, "cancelled"))

    def _post(self, job: Job, event: tuple) -> None:
        if event[0] != "delta":
            job.done = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self.loop.call_soon_threadsafe(self._deliver, job, event)

    def _deliver(self, job: Job, event: tuple) -> None:
        # Counted down here, on the event loop, when the worker lets go of the job: even a client that vanished
        # before its stream was first read frees its slot.
        if event[0] != "delta":
            self.active -= 1
        job.events.put_nowait(event)

    def submit(self, job: Job) -> None:
        if self.active >= self.limits.max_concurrent:
            self.stats["rejected_busy"] += 1
            raise ApiError(429, f"server busy: {self.active} requests in flight (limit {self.limits.max_concurrent}); "
                                "retry shortly", code="rate_limit_exceeded", type="requests")
        self.active += 1
        self.stats["requests"] += 1
        self.queue.put_nowait(job)

    async def json_body(self, request) -> dict:
        # Only JSON is read, so that a web page cannot send a request through a plain HTML form (whose types,
        # text/plain among them, a browser sends cross-site without asking the server first).
        kind = request.headers.get("content-type")
        if not _is_json(kind):
            raise ApiError(415, f"the body must be JSON sent as Content-Type: application/json, got "
                                f"{'no Content-Type' if kind is None else repr(kind)}", code="unsupported_media_type")
        declared = request.headers.get("content-length", "")
        if (declared.isdigit() and int(declared) > self.limits.max_body_bytes
                or len(raw := await request.body()) > self.limits.max_body_bytes):
            raise ApiError(413, f"request body over {self.limits.max_body_bytes} bytes")
        return _parse_body(raw)

    def pick_model(self, body: dict) -> Served:
        name = body.get("model")
        if name is None and len(self.models) == 1:
            name = next(iter(self.models))
        if not isinstance(name, str) or name not in self.models:
            raise ApiError(404, f"model {name!r} is not served here; available: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        return self.models[name]

    def asked_tokens(self, body: dict, chat: bool) -> tuple[str, int | None]:
        """The field that sets the reply's length, and its valid value (None when absent)."""
        key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is None:
            return key, None
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, f"'{key}' must be a positive integer, got {max_tokens!r}", param=key)
        if max_tokens > self.limits.max_tokens:
            raise ApiError(400, f"'{key}' is {max_tokens}; this server allows at most {self.limits.max_tokens}",
                           param=key)
        return key, max_tokens

    def chat_prompt(self, body: dict, served: Served) -> tuple[list[int], int | None]:
        """The prompt of a chat request, and how many of its messages were left out to fit the context: with
        "truncation": "auto" (the web page's), the oldest turns go by terminal chat's rule (`chat.fit_messages`);
        without it, as OpenAI's API does, a conversation that does not fit is an error (None: nothing was tried)."""
        truncation = _field(body, "truncation", "disabled", lambda x: x in ("auto", "disabled"),
                            "'auto' or 'disabled'")
        try:
            messages = openai_messages(body.get("messages"))
            if truncation == "disabled":
                return served.tok.encode_chat(messages, add_generation_prompt=True)[0], None
            wanted = self.asked_tokens(body, chat=True)[1] or self.limits.max_tokens
            prompt, _, dropped = fit_messages(served.tok, messages, served.max_len, wanted)
            return prompt, dropped
        except PhiforgeError as e:
            raise ApiError(400, str(e), param="messages") from None

    def make_job(self, body: dict, served: Served, prompt: list[int], chat: bool) -> Job:
        unsupported = [k for k in ("logprobs", "echo", "tools", "functions", "suffix") if body.get(k)]
        unsupported += [k for k in ("n", "best_of") if body.get(k) not in (None, 1)]
        if unsupported:
            raise ApiError(400, f"'{unsupported[0]}' is not supported: phiforge serve gives one plain completion "
                                "per request", param=unsupported[0])
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="messages" if chat else "prompt")
        room = served.max_len - len(prompt)
        if room <= 0:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens; model {served.name!r} has a context of "
                                f"{served.max_len} tokens", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        key, max_tokens = self.asked_tokens(body, chat)
        if max_tokens is None:
            max_tokens = min(self.limits.max_tokens, room)
        elif max_tokens > room:
            raise ApiError(400, f"the prompt ({len(prompt)} tokens) plus {key} ({max_tokens}) exceeds model "
                                f"{served.name!r}'s context of {served.max_len} tokens", param=key,
                           code="context_length_exceeded")
        stop = _field(body, "stop", [], lambda x: isinstance(x, str) or isinstance(x, list) and len(x) <= 4 and all(
            isinstance(s, str) for s in x), "a string or a list of at most 4 strings")
        real = (int, float)  # not bool; NaN fails the range checks
        return Job(served, prompt, max_tokens,
                   temperature=_field(body, "temperature", 1.0, lambda x: type(x) in real and 0 <= x <= 2, "in [0, 2]"),
                   top_p=_field(body, "top_p", 1.0, lambda x: type(x) in real and 0 < x <= 1, "in (0, 1]"),
                   # torch's generator takes a 64-bit seed, signed or not
                   seed=_field(body, "seed", None, lambda x: type(x) is int and -2**63 <= x < 2**64,
                               "an integer in [-2**63, 2**64)"),
                   stop=[stop] if isinstance(stop, str) else stop,
                   stream=_field(body, "stream", False, lambda x: type(x) is bool, "true or false"))

    async def respond(self, request, body: dict, job: Job, chat: bool, headers: dict | None = None):
        self.submit(job)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": job.served.name}
        if not job.stream:
            event = await _final_event(job, request)
            if event is None:  # the client hung up: nobody reads this
                return Response(status_code=499)
            if event[0] == "error":
                raise ApiError(500, event[1], type="server_error")
            _, text, n, reason = event
            choice = {"index": 0, **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
                      "logprobs": None, "finish_reason": reason}
            return JSONResponse({**head, "choices": [choice], "usage": _usage(len(job.prompt), n)}, headers=headers)
        options = body.get("stream_options") or {}
        usage = isinstance(options, dict) and options.get("include_usage") is True
        head["object"] = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict, reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": delta.get("content", "")}
            choice.update(logprobs=None, finish_reason=reason)
            return _sse({**head, "choices": [choice], **({"usage": None} if usage else {})})

        async def events():
            try:
                if chat:
                    yield chunk({"role": "assistant", "content": ""})
                while True:
                    event = await job.events.get()
                    if event[0] == "delta":
                        yield chunk({"content": event[1]})
                        continue
                    if event[0] == "error":
                        yield _sse({"error": {"message": event[1], "type": "server_error", "param": None,
                                              "code": None}})
                    else:
                        yield chunk({}, event[3])
                        if usage:
                            yield _sse({**head, "choices": [], "usage": _usage(len(job.prompt), event[2])})
                    break
                yield "data: [DONE]\n\n"
            finally:
                # A client that hangs up mid-stream lands here (cancellation or a closed generator): tell the
                # worker to drop the row at its next step.
                job.cancelled = job.cancelled or not job.done

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


async def _final_event(job: Job, request) -> tuple | None:
    """A plain request's last event, or None if its client hangs up first; the job is then cancelled, so the worker
    drops its row at the next step (or never starts it) instead of decoding for nobody."""
    answer = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(_hung_up(request.receive))
    done = set()
    try:
        done, _ = await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        answer.cancel()
        gone.cancel()
        if answer not in done:  # hung up, or this handler was cancelled (the server stopping)
            job.cancelled = True
    return answer.result() if answer in done else None


async def _hung_up(receive) -> None:
    """Returns once the client disconnects. The body is read by then, so the server has nothing else to deliver."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # not a spin, should a server hand out empty body messages


_MESSAGE = re.compile(r"messages\[\d+\]")


def _is_json(content_type: str | None) -> bool:
    """Whether a Content-Type says JSON in UTF-8 (the only encoding JSON may have on the wire, RFC 8259)."""
    media, *params = (content_type or "").lower().split(";")
    charsets = [v.strip().strip('"') for k, _, v in (p.partition("=") for p in params) if k.strip() == "charset"]
    return media.strip() == "application/json" and all(c in ("utf-8", "utf8") for c in charsets)


def _parse_body(raw: bytes) -> dict:
    """A request body as a JSON object whose every string (and key) is text a model may read, else a 400."""
    try:
        text, raw_bytes = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        # Read anyway, the bad bytes as surrogates, so that the error can name the field that holds them.
        text, raw_bytes = raw.decode("utf-8", "surrogateescape"), True
    try:
        body = json.loads(text)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, f"request body is not valid JSON{' (nor UTF-8)' if raw_bytes else ''}: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    if bad := _bad_text(body, raw_bytes):
        path, problem = bad
        raise ApiError(400, f"{path} has {problem}; text must be UTF-8 without lone surrogates or control characters "
                            "other than tab, newline and carriage return (an assistant's turn may hold those it "
                            "generated)", param=path, code="invalid_text")
    return body


def _bad_text(body: dict, raw_bytes: bool) -> tuple[str, str] | None:
    """(path, problem) of the first string or key in a JSON value that `text_problem` refuses, or None. The content
    of an assistant's message is a model's reply sent back: the control characters a model generates pass there."""
    todo = [("", body, False)]
    while todo:  # a loop, not recursion: the depth is the client's to choose
        path, value, generated = todo.pop()
        if isinstance(value, str):
            if problem := text_problem(value, raw_bytes=raw_bytes, generated=generated):
                return path, problem
        elif isinstance(value, dict):
            for key in value:
                if problem := text_problem(key, raw_bytes=raw_bytes):
                    return f"a key of {path or 'the body'}", problem
            reply = value.get("role") == "assistant" and _MESSAGE.fullmatch(path) is not None
            todo += [(f"{path}.{k}" if path else k, v, generated or reply and k == "content")
                     for k, v in reversed(value.items())]
        elif isinstance(value, list):
            todo += [(f"{path}[{i}]", v, generated) for i, v in reversed(list(enumerate(value)))]
    return None


def _field(body: dict, key: str, default, ok, what: str):
    """body[key], or default when absent or null; any other value failing ok() is a 400 naming the field."""
    value = body.get(key)
    if value is None:
        return default
    if not ok(value):
        raise ApiError(400, f"'{key}' must be {what}, got {value!r}", param=key)
    return value


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _completion_prompt(body: dict, served: Served) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        # An empty prompt starts a fresh document, as pretraining saw one after <|endoftext|>.
        return served.tok.encode(prompt) or [served.tok.endoftext_id]
    vocab = served.model.cfg.vocab_size
    if isinstance(prompt, list) and prompt and all(type(t) is int and 0 <= t < vocab for t in prompt):
        return prompt
    raise ApiError(400, f"'prompt' must be one string or one list of token ids below {vocab}", param="prompt")


def build_app(server: Server, access: Access | None = None):
    """The Starlette application for a Server; the lifespan starts and stops its batching loop. `access` says which
    requests may reach it (default: Host names of loopback, no API key)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.loop, server.queue = asyncio.get_running_loop(), asyncio.Queue()
        task = asyncio.create_task(server.collect())
        try:
            yield
        finally:
            server.closing = True
            task.cancel()
            server.executor.shutdown(wait=False, cancel_futures=True)

    async def chat_completions(request):
        body = await server.json_body(request)
        served = server.pick_model(body)
        prompt, dropped = server.chat_prompt(body, served)
        # The page drops the same messages from its own history, so that it keeps sending what the model sees.
        headers = None if dropped is None else {"Phiforge-Dropped-Messages": str(dropped)}
        return await server.respond(request, body, server.make_job(body, served, prompt, chat=True), chat=True,
                                    headers=headers)

    async def completions(request):
        body = await server.json_body(request)
        served = server.pick_model(body)
        return await server.respond(request, body, server.make_job(body, served, _completion_prompt(body, served),
                                                                   chat=False), chat=False)

    async def models(request):
        cards = [{"id": m.name, "object": "model", "created": m.created, "owned_by": "phiforge",
                  "max_seq_len": m.max_len} for m in server.models.values()]
        return JSONResponse({"object": "list", "data": cards})

    async def health(request):
        s = server.stats
        mean = round(s["batched_requests"] / s["batches"], 2) if s["batches"] else 0.0
        return JSONResponse({"status": "ok", "models": list(server.models), "active": server.active,
                             "queued": server.queue.qsize(), "mean_batch": mean, **s})

    async def page(request):
        # Never inside another site's frame, where that site could trick the user into sending what it wants.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", "X-Frame-Options": "DENY",
                                                            "Content-Security-Policy": "frame-ancestors 'none'"})

    async def error(request, exc: Exception):
        # Every error in OpenAI's shape, so clients show the message: 404/405 from routing and 500s included.
        if isinstance(exc, HTTPException):
            exc = ApiError(exc.status_code, str(exc.detail))
        elif not isinstance(exc, ApiError):
            exc = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
        return exc.response()

    routes = [Route("/", page), Route("/health", health), Route("/v1/models", models),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Guard, access=access or Access())],
                    exception_handlers={ApiError: error, HTTPException: error, Exception: error})
    app.state.server = server
    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, made here rather than by uvicorn so that port 0 works and the printed address is real."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        # proto must say TCP, or asyncio leaves Nagle's algorithm on for the connections: +40 ms on every reply.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        return sock
    except OSError as e:
        raise PhiforgeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run_serve(args) -> int:
    """`phiforge serve`, given its parsed arguments."""
    import uvicorn

    limits = Limits(max_tokens=args.max_tokens, max_concurrent=args.max_concurrent,
                    batch_window_ms=args.batch_window_ms, max_batch=args.max_batch)
    for key, least in (("max_tokens", 1), ("max_concurrent", 1), ("max_batch", 1), ("batch_window_ms", 0)):
        if getattr(limits, key) < least:
            raise PhiforgeError(f"--{key.replace('_', '-')} must be >= {least}, got {getattr(limits, key)}")
    api_key = _api_key(args.api_key)
    server = Server([Served(*m) for m in load_named_models(args.path, args.model)], limits)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    access = Access.listening(args.host, host, args.allow_host, api_key)
    if api_key is None and not (host.startswith("127.") or host in LOOPBACK):
        print(f"phiforge: warning: listening on {host}, beyond this machine, without an API key (set "
              "PHIFORGE_API_KEY)", file=sys.stderr)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    key_note = ", API key required" if api_key else ""
    print(f"phiforge: serving {', '.join(server.models)} at {url} (OpenAI API under {url}v1{key_note})", flush=True)
    config = uvicorn.Config(build_app(server, access), log_level=args.log_level, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown; for a server it is the way out
        pass
    print("phiforge: server stopped", flush=True)
    return 0


def _api_key(flag: str | None) -> str | None:
    """--api-key, else PHIFORGE_API_KEY (empty counts as unset), checked to be a key a header can carry."""
    key = flag if flag is not None else os.environ.get("PHIFORGE_API_KEY") or None
    if key is not None and not re.fullmatch(r"[\x21-\x7e]+", key):
        source = "--api-key" if flag is not None else "PHIFORGE_API_KEY"
        raise PhiforgeError(f"{source} must be printable ASCII without spaces (it travels in an HTTP header)")
    return key
