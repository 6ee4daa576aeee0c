"""Teachers: HTTPTeacher against a real `phiforge serve` on loopback behind a fault-injecting proxy, the disk cache,
LocalTeacher against the same checkpoint, and the programmatic teacher's place beside them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections import Counter
from email.utils import formatdate

import pytest

from phiforge.lm.engine import load_chat_model
from phiforge.errors import PhiforgeError
from phiforge.lm.completions import ChatRequest, Completion, DiskCache, Teacher, TeacherError, request_key
from phiforge.lm.teachers import LocalTeacher
from test_chat import make_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from phiforge.lm.http_teacher import HTTPTeacher, backoff_delay, env_proxy, retry_after_seconds  # noqa: E402
from phiforge.serve.server import Limits, Served, Server, build_app  # noqa: E402
from test_serve import serving as serve_on_loopback  # noqa: E402

N = 40
# Arrival number at the proxy (0-based, retries included) -> fault. Each fault costs its request exactly one retry.
SCHEDULE = {1: "429", 4: "500", 6: "truncated", 9: "hang", 13: "503", 17: "truncated", 21: "429", 26: "502",
            30: "hang", 35: "500"}
TIMEOUT_S = 2.0  # the client's; a "hang" outlasts it. Real replies of the tiny model take tens of milliseconds.
# phiforge's own client (the default), and the two before it, which bench/http_teacher.py compares it with: every
# fault test runs all three.
transports = pytest.mark.parametrize("transport", ["asyncio", "aiohttp", "httpx"])


def serving(app):
    """An ASGI app on a free loopback port; a short graceful shutdown, since a test may leave a request hanging."""
    return serve_on_loopback(app, graceful_s=2)


class FaultyProxy:
    """Forwards to `upstream`, except that the n-th request received gets faults[n] (or `always`, when set):

    429 (Retry-After: 0; "429-wait": Retry-After: 1) or 500/502/503 without forwarding; "hang": never answer, until
    the client gives up; "truncated": forward, then return the first half of the real reply's JSON with status 200.
    `peak` is the most requests it held at once, hung ones aside: their client lets go at its timeout, a little
    before the proxy notices.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.reset()

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with httpx.AsyncClient(timeout=60) as self.client:
                yield

        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])], lifespan=lifespan)

    def reset(self, faults: dict[int, str] | None = None, always: str | None = None) -> None:
        self.faults, self.always = faults or {}, always
        self.received, self.forwarded, self.injected, self.active, self.peak = 0, 0, Counter(), 0, 0

    async def handle(self, request):
        n, self.received = self.received, self.received + 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self.answer(request, n)
        finally:
            self.active -= 1

    async def answer(self, request, n: int):
        body = await request.body()
        fault = self.always or self.faults.get(n)
        if fault:
            self.injected[fault] += 1
        if fault in ("429", "429-wait"):
            error = {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
            wait = "1" if fault == "429-wait" else "0"
            return JSONResponse({"error": error}, status_code=429, headers={"Retry-After": wait})
        if fault in ("500", "502", "503"):
            return JSONResponse({"error": {"message": f"injected {fault}", "type": "server_error", "param": None,
                                           "code": None}}, status_code=int(fault))
        if fault == "hang":
            self.active -= 1
            while not await request.is_disconnected():
                await asyncio.sleep(0.02)
            self.active += 1  # taken off again by handle()
            return Response(status_code=499)
        reply = await self.client.request(request.method, self.upstream + request.url.path, content=body,
                                          headers={"Content-Type": "application/json"})
        self.forwarded += 1
        content = reply.content[: len(reply.content) // 2] if fault == "truncated" else reply.content
        return Response(content, status_code=reply.status_code, media_type="application/json")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("teacher") / "tiny")


@pytest.fixture(scope="module")
def urls(ckpt):
    """(the real server's /v1 URL, the proxy's /v1 URL, the proxy)."""
    model, tok, _ = load_chat_model(ckpt)
    server = Server([Served("tiny", ckpt, model, tok)], Limits(max_tokens=64, batch_window_ms=20))
    with serving(build_app(server)) as real:
        proxy = FaultyProxy(real)
        with serving(proxy.app) as front:
            yield real + "/v1", front + "/v1", proxy


@pytest.fixture
def proxy(urls):
    urls[2].reset()
    return urls[2]


def make_requests(n: int = N) -> list[ChatRequest]:
    """Greedy and seeded requests of strictly growing prompt length, so the prompt token counts show each reply's
    place; some with a stop string, max_tokens varying."""
    out = []
    for i in range(n):
        sampled = i % 2 == 1
        out.append(ChatRequest.user(f"request {i}: " + "ab " * i, system="Be brief." if i % 3 == 0 else None,
                                    temperature=0.8 if sampled else 0, seed=1000 + i if sampled else None,
                                    max_tokens=4 + i % 9, stop=["e"] if i % 5 == 0 else ()))
    return out


def cache_lines(root) -> int:
    """The entries in a cache folder's logs."""
    return sum(len(path.read_bytes().splitlines()) for path in root.glob("*.jsonl"))


def teacher(url: str, cache=None, **kwargs) -> HTTPTeacher:
    kwargs = {"concurrency": 8, "timeout_s": TIMEOUT_S, "backoff_s": 0.01, "max_backoff_s": 0.05, **kwargs}
    return HTTPTeacher(url, "tiny", cache_dir=cache, **kwargs)


@pytest.fixture(scope="module")
def clean(urls):
    """The reference: every request answered once by the real server directly, no faults, no cache."""
    t = teacher(urls[0], timeout_s=60)
    out = t.complete(make_requests())
    assert t.stats["requests"] == N and t.stats["retries"] == 0
    return out


def test_clean_replies_are_in_request_order(clean):
    requests = make_requests()
    prompt_tokens = [c.prompt_tokens for c in clean]
    assert all(a < b for a, b in zip(prompt_tokens[1::3], prompt_tokens[4::3]))  # growing prompts, no system line
    assert all(c.completion_tokens <= r.max_tokens and not c.cached for c, r in zip(clean, requests))
    assert {c.finish_reason for c in clean} <= {"stop", "length"}


@transports
def test_faults_cost_retries_not_samples_and_a_rerun_comes_from_the_cache(urls, proxy, clean, tmp_path, transport):
    _, front, _ = urls
    proxy.reset(SCHEDULE)
    t = teacher(front, tmp_path / "cache", transport=transport)
    out = t.complete(make_requests())
    assert out == clean  # every request answered once, in order, with the reply a fault-free run gets
    assert proxy.injected == Counter(SCHEDULE.values()) and proxy.peak <= 8
    assert t.stats["retries"] == proxy.received - N >= len(SCHEDULE)
    assert t.stats["requests"] == proxy.received and t.stats["cache_hits"] == 0 and t.stats["completed"] == N
    assert t.stats["prompt_tokens"] == sum(c.prompt_tokens for c in clean)
    assert t.stats["completion_tokens"] == sum(c.completion_tokens for c in clean)
    assert cache_lines(tmp_path / "cache") == N

    received = proxy.received
    again = teacher(front, tmp_path / "cache", transport=transport)
    replay = again.complete(make_requests())
    assert proxy.received == received  # not one HTTP request
    assert replay == clean and all(c.cached for c in replay)
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == N and again.stats["prompt_tokens"] == 0


@transports
def test_exhausted_retries_name_the_url_and_the_last_status(urls, proxy, transport):
    _, front, _ = urls
    proxy.reset(always="503")
    with pytest.raises(TeacherError) as e:
        teacher(front, max_retries=2, transport=transport).complete([ChatRequest.user("hi", max_tokens=3)])
    assert f"POST {front}/chat/completions failed after 3 attempts" in str(e.value)
    assert "HTTP 503" in str(e.value) and "injected 503" in str(e.value)
    assert e.value.status == 503 and e.value.url == front + "/chat/completions" and proxy.received == 3

    proxy.reset(always="hang")
    with pytest.raises(TeacherError, match=r"failed after 2 attempts; last: no answer within 0.3 s"):
        teacher(front, max_retries=1, timeout_s=0.3, transport=transport).complete(
            [ChatRequest.user("hi", max_tokens=3)])

    proxy.reset(always="truncated")
    with pytest.raises(TeacherError, match="HTTP 200 with a malformed body: body is not JSON"):
        teacher(front, max_retries=1, transport=transport).complete([ChatRequest.user("hi", max_tokens=3)])

    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there, so the connection is refused
    with pytest.raises(TeacherError, match=r"failed after 2 attempts; last: connection error \("):
        HTTPTeacher(closed, "tiny", max_retries=1, backoff_s=0.001, transport=transport).complete(
            [ChatRequest.user("hi", max_tokens=3)])


@transports
def test_retry_after_is_honoured(urls, proxy, transport):
    proxy.reset({0: "429-wait"})
    t = time.monotonic()
    teacher(urls[1], backoff_s=0.001, transport=transport).complete([ChatRequest.user("hi", max_tokens=3)])
    assert proxy.received == 2 and time.monotonic() - t >= 1.0


@transports
def test_a_client_error_fails_at_once_and_the_rest_of_the_batch_is_kept(urls, proxy, tmp_path, transport):
    _, front, _ = urls
    good = [ChatRequest.user(f"question {i}", max_tokens=5) for i in range(5)]
    too_long = ChatRequest.user("question 5", max_tokens=65)  # over the server's max_tokens: a 400, not retried
    t = teacher(front, tmp_path, transport=transport)
    with pytest.raises(TeacherError, match=r"1 of 6 requests failed .* HTTP 400: 'max_tokens' is 65") as e:
        t.complete([*good[:2], too_long, *good[2:]])
    assert e.value.status == 400 and proxy.received == 6 and t.stats["retries"] == 0 and t.stats["failed"] == 1
    again = teacher(front, tmp_path, transport=transport)
    assert len(again.complete(good)) == 5 and again.stats["cache_hits"] == 5 and proxy.received == 6

    with pytest.raises(TeacherError, match="HTTP 404: model 'nope' is not served here"):
        HTTPTeacher(front, "nope", max_retries=3, transport=transport).complete(good[:1])
    assert proxy.received == 7


CHILD = """
import json, os, sys
from phiforge.lm.http_teacher import HTTPTeacher
from phiforge.lm.completions import ChatRequest, DiskCache

url, cache, spec = sys.argv[1:]
append, calls = DiskCache._append, [0]

def crash_on_fifth(self, line):
    calls[0] += 1
    if calls[0] == 5:  # the fifth cache entry: half of its line written, then the process dies
        os.write(self.log_fd, line[: len(line) // 2])
        os._exit(3)
    append(self, line)

DiskCache._append = crash_on_fifth
requests = [ChatRequest(**r) for r in json.loads(spec)]
HTTPTeacher(url, "tiny", cache_dir=cache, concurrency=4).complete(requests)
"""


def test_the_cache_survives_a_crash_mid_write(urls, clean, tmp_path, caplog):
    real, _, _ = urls
    cache, requests = tmp_path / "cache", make_requests()
    spec = json.dumps([{"messages": list(r.messages), "temperature": r.temperature, "max_tokens": r.max_tokens,
                        "seed": r.seed, "stop": list(r.stop)} for r in requests])
    child = subprocess.run([sys.executable, "-c", CHILD, real, str(cache), spec], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 3, child.stderr
    (log,) = cache.glob("*.jsonl")
    assert cache_lines(cache) == 5 and not log.read_bytes().endswith(b"\n")  # four whole entries and half a fifth

    t = teacher(real, cache)
    assert t.complete(requests) == clean
    assert t.stats["cache_hits"] == 4 and t.stats["requests"] == N - 4  # the half line was never read
    assert len(list(cache.glob("*.jsonl"))) == 2 and cache_lines(cache) == 5 + N - 4

    # A damaged entry (a power cut, a hand edit) is a miss, unless an older copy of the key is whole: asked again.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    key = request_key(requests[7].canonical("tiny"))
    (damaged / "1-host-1.jsonl").write_text('{"key": "' + key + '", "request": {"mo\n')
    t = teacher(real, damaged)
    assert t.complete(requests) == clean
    assert t.stats["cache_hits"] == 0 and t.stats["requests"] == N
    assert "ignoring unreadable cache entry" in caplog.text
    assert DiskCache(damaged).get(key, requests[7].canonical("tiny")) == clean[7]
    for path in damaged.glob("*.jsonl"):  # the whole copy first, the damaged one newest: the whole one answers
        if path.name != "1-host-1.jsonl":
            path.rename(damaged / "0-host-0.jsonl")
    assert DiskCache(damaged).get(key, requests[7].canonical("tiny")) == clean[7]


def test_local_teacher_equals_http_teacher(ckpt, clean):
    local = LocalTeacher(ckpt, batch_size=16)
    # Greedy replies share batches; seeded ones decode alone, as the server decodes a request with its own seed.
    assert local.complete(make_requests()) == clean
    assert local.name == "local:tiny" and local.stats["requests"] == N
    with pytest.raises(TeacherError, match="exceeds the context"):
        local.complete([ChatRequest.user("hi", max_tokens=1000)])


def test_a_seeded_request_gets_one_answer_even_when_batched_with_its_twin(urls):
    """A retry can reach the server while its original still waits there: both must get the same sample."""
    real = urls[0]
    request = ChatRequest.user("roll the dice", temperature=1.0, max_tokens=12, seed=5)
    body = {"model": "tiny", "messages": list(request.messages), "temperature": 1.0, "max_tokens": 12, "seed": 5}

    async def twins():  # past HTTPTeacher, which would merge them, and all inside one batching window
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(*(client.post(real + "/chat/completions", json=body) for _ in range(4)))
        return [r.json()["choices"][0]["message"]["content"] for r in replies]

    assert asyncio.run(twins()) == [teacher(real).complete([request])[0].text] * 4


def test_identical_requests_merge_only_when_deterministic(urls, proxy, tmp_path):
    _, front, _ = urls
    greedy = ChatRequest.user("same question", max_tokens=6)
    seedless = ChatRequest.user("same question", temperature=1.0, max_tokens=6)
    t = teacher(front, tmp_path)
    out = t.complete([greedy, seedless, greedy, seedless])
    assert out[0] == out[2] and proxy.received == 3 and t.stats["deduplicated"] == 1
    t.complete([greedy, seedless, seedless])  # seedless draws are never cached: each is a new sample
    assert proxy.received == 5 and t.stats["cache_hits"] == 1


def test_complete_works_inside_a_running_event_loop(urls, proxy):
    async def caller():
        return teacher(urls[1]).complete([ChatRequest.user("hi", max_tokens=3)])

    assert asyncio.run(caller())[0].completion_tokens == 3


def test_request_key_is_canonical():
    base = ChatRequest([{"role": "user", "content": "x"}], temperature=0, max_tokens=5, stop="a")
    same = ChatRequest([{"content": "x", "role": "user"}], temperature=0.0, max_tokens=5, stop=["a"])
    assert request_key(base.canonical("m")) == request_key(same.canonical("m"))
    variants = [ChatRequest.user("y", max_tokens=5, stop="a"), ChatRequest.user("x", temperature=0.5, max_tokens=5,
                stop="a"), ChatRequest.user("x", max_tokens=6, stop="a"), ChatRequest.user("x", max_tokens=5, seed=1,
                stop="a"), ChatRequest.user("x", max_tokens=5, stop="b"), ChatRequest.user("x", max_tokens=5)]
    keys = {request_key(v.canonical("m")) for v in variants} | {request_key(base.canonical("other-model"))}
    assert request_key(base.canonical("m")) not in keys and len(keys) == len(variants) + 1
    for bad in (dict(messages=[]), dict(messages="hi"), dict(messages=[{"role": "user"}]),
                dict(messages=[{"role": "user", "content": "x"}], temperature=-1),
                dict(messages=[{"role": "user", "content": "x"}], max_tokens=0),
                dict(messages=[{"role": "user", "content": "x"}], seed=1.5),
                dict(messages=[{"role": "user", "content": "x"}], stop=[""])):
        with pytest.raises(PhiforgeError):
            ChatRequest(**bad)


def test_proxy_from_the_environment(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("http://api.example.com/v1/chat/completions") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.example.com:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")
    assert env_proxy("https://api.example.com/v1/chat/completions") == "http://proxy.example.com:3128"
    assert env_proxy("http://api.example.com/v1/chat/completions") == "http://all.example.com:3128"
    assert env_proxy("http://localhost:8000/v1/chat/completions") is None
    assert env_proxy("https://llm.internal/v1/chat/completions") is None
    with pytest.raises(TeacherError, match="transport must be 'auto' or one of"):
        HTTPTeacher("http://127.0.0.1:9/v1", "m", transport="requests")
    # phiforge's client speaks to servers directly: where a proxy applies, "auto" takes aiohttp, which speaks to it
    assert HTTPTeacher("https://api.example.com/v1", "m").transport == "aiohttp"
    assert HTTPTeacher("http://localhost:8000/v1", "m").transport == "asyncio"
    with pytest.raises(TeacherError, match="names a proxy"):
        HTTPTeacher("https://api.example.com/v1", "m", transport="asyncio").complete([ChatRequest.user("x")])


def test_retry_after_and_backoff():
    assert retry_after_seconds("0") == 0 and retry_after_seconds("2.5") == 2.5 and retry_after_seconds("-3") == 0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("1e9") == 600
    now = 1_700_000_000.0
    assert retry_after_seconds(formatdate(now + 7, usegmt=True), now=now) == 7
    rng = random.Random(0)
    for attempt in range(8):
        draws = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(200)]
        ceiling = min(10.0, 0.5 * 2 ** attempt)
        assert all(0 <= d <= ceiling for d in draws) and max(draws) > 0.8 * ceiling  # full jitter: the whole range


def test_teacher_kinds(ckpt):
    assert isinstance(HTTPTeacher("http://127.0.0.1:9/v1", "m"), Teacher)
    assert isinstance(LocalTeacher(ckpt), Teacher)
    assert Completion("a", "stop", 1, 1, cached=True) == Completion("a", "stop", 1, 1)
