"""`HTTPTeacher`: chat completions from any OpenAI-compatible server (phiforge serve, vLLM, llama.cpp, Ollama, APIs).

    teacher = HTTPTeacher("http://127.0.0.1:8000/v1", "tiny-sft", cache_dir="runs/x/synth/teacher-cache")
    asks = [ChatRequest.user("Write an exercise on fractions.", temperature=0.8, seed=i) for i in range(100)]
    replies = teacher.complete(asks)   # one Completion per request, in order
    teacher.stats   # {'requests': 100, 'retries': 0, 'cache_hits': 0, 'prompt_tokens': ..., ...}

One asyncio event loop and at most `concurrency` requests in flight (a bounded semaphore, released while a request
waits to retry) over as many keep-alive connections. The transport is phiforge's own HTTP/1.1 client
(`phiforge.lm.http1`, the lightest per request), or aiohttp where HTTP(S)_PROXY / ALL_PROXY route the URL through a
proxy (NO_PROXY honoured); `transport=` picks one by name, httpx included, for bench/http_teacher.py to compare (its
figures are in bench/README.md).
A request is retried, up to `max_retries` times, on 408/429/500/502/503/504, a timeout, a connection error, or a 200
whose body is not a whole chat completion (truncated or malformed JSON). The wait before retry k is the server's
Retry-After when it sends one, else "full jitter", uniform in [0, min(max_backoff_s, backoff_s * 2**k)], so that
clients that failed together do not retry together. Any other status fails at once. When a request runs out of
retries the rest of the batch still finishes (every answer that came back is cached), then a `TeacherError` names
the URL and the last status or error.

Answers are cached on disk (`completions.DiskCache`) under the SHA-256 of the canonical request: model, messages,
temperature, max_tokens, seed and stop; not the URL, so a model moved to another server keeps its cache. Only
deterministic requests are cached (greedy, or sampled with a seed), and identical ones in one batch are sent once:
two seedless samples of one prompt are meant to be two different draws, which a cache or a merge would make one.
Results come back in request order, exactly one per request.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import functools
import json
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phiforge.lm.completions import ChatRequest, Completion, DiskCache, TeacherError, request_key
from phiforge.lm.http1 import Http1Pool

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 600.0  # a Retry-After is honoured up to ten minutes; a larger one is a server bug


class _Malformed(Exception):
    """A 200 response that is not a whole chat completion."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), clipped to [0, 600]; None if absent
    or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number attempt (0 for the first retry)."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** attempt))


def parse_completion(raw: bytes) -> Completion:
    """The first choice of a chat.completion body; _Malformed if it is not one."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise _Malformed(f"body is not JSON ({e}; {len(raw)} bytes)") from None
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)  # a server that reports no usage counts as zero
        completion_tokens = int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise _Malformed(f"body is not a chat completion: {raw[:200]!r}") from None
    if text is not None and not isinstance(text, str):
        raise _Malformed(f"choices[0].message.content is {type(text).__name__}, not a string")
    return Completion(text or "", str(choice.get("finish_reason") or "unknown"), prompt_tokens, completion_tokens)


def _error_detail(content: bytes, reason: str) -> str:
    """The server's own message (OpenAI's {"error": {"message"}} shape, else the start of the body)."""
    try:
        message = json.loads(content)["error"]["message"]
        if isinstance(message, str):
            return message[:300]
    except (ValueError, KeyError, TypeError):
        pass
    return content[:300].decode("utf-8", "replace").strip() or reason


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP_PROXY / HTTPS_PROXY / ALL_PROXY name for `url`, unless NO_PROXY exempts its host: what
    httpx read from the environment by itself. Read once per batch: aiohttp's trust_env would read it, and ~/.netrc,
    for every request."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class _Asyncio:
    """phiforge's own HTTP/1.1 client (`phiforge.lm.http1`): the default where no proxy applies."""

    timeouts = (asyncio.TimeoutError,)
    errors = (OSError,)  # refused, reset, TLS failures, and http1.ProtocolError (closed mid-response, not HTTP)

    def __init__(self, url: str, n_slots: int, timeout_s: float, headers: dict[str, str]):
        if env_proxy(url) is not None:
            raise TeacherError(f"transport 'asyncio' speaks to {url} directly, but the environment names a proxy "
                               f"for it; use transport 'aiohttp' (or 'auto')")
        self.pool = Http1Pool(url, timeout_s, headers)

    async def post(self, data: bytes) -> tuple[int, bytes, str | None, str]:
        status, reason, headers, body = await self.pool.post(data)
        return status, body, headers.get("retry-after"), reason

    async def aclose(self) -> None:
        await self.pool.aclose()


class _Aiohttp:
    """One aiohttp session with a keep-alive connection per slot (the default where a proxy applies)."""

    def __init__(self, url: str, n_slots: int, timeout_s: float, headers: dict[str, str]):
        import aiohttp  # here, not at the top: modules that only need RETRY_STATUSES skip its 0.1 s import

        self.timeouts = (asyncio.TimeoutError,)  # aiohttp's socket and connect timeouts are both TimeoutErrors
        self.errors = (aiohttp.ClientError,)  # refused, reset, closed mid-body, an unreadable status line
        self.url, self.proxy = url, env_proxy(url)
        # Timeouts per step, as httpx's: a connection within timeout_s, then no silence longer than timeout_s.
        timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n_slots), timeout=timeout,
                                             headers=headers)

    async def post(self, data: bytes) -> tuple[int, bytes, str | None, str]:
        """(status, body, Retry-After, reason) of one POST."""
        async with self.session.post(self.url, data=data, proxy=self.proxy) as response:
            return response.status, await response.read(), response.headers.get("Retry-After"), response.reason or ""

    async def aclose(self) -> None:
        await self.session.close()


class _Httpx:
    """The client before aiohttp, kept for bench/http_teacher.py: an `httpx.AsyncClient` per slot, each with one
    keep-alive connection, rather than one client with `n_slots` connections: httpcore's pool scans every connection
    for every request it places, so a shared pool of 64 managed 120 requests/s on the 2-core bench machine, separate
    ones about 5 times more."""

    def __init__(self, url: str, n_slots: int, timeout_s: float, headers: dict[str, str]):
        import httpx

        self.timeouts, self.errors = (httpx.TimeoutException,), (httpx.TransportError,)
        self.url = url
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        ssl = _httpx_ssl_context() if url.startswith("https:") else False
        self.free = [httpx.AsyncClient(timeout=timeout_s, limits=one, headers=headers, verify=ssl)
                     for _ in range(n_slots)]

    async def post(self, data: bytes) -> tuple[int, bytes, str | None, str]:
        client = self.free.pop()  # a slot held is a client free: there are as many of one as of the other
        try:
            response = await client.post(self.url, content=data)
        finally:
            self.free.append(client)
        return response.status_code, response.content, response.headers.get("retry-after"), response.reason_phrase

    async def aclose(self) -> None:
        for client in self.free:
            await client.aclose()


@functools.cache
def _httpx_ssl_context():
    """httpx's SSL context; loading its CA bundle is slow, so once per process, not per client."""
    import httpx

    return httpx.create_ssl_context()


TRANSPORTS = {"asyncio": _Asyncio, "aiohttp": _Aiohttp, "httpx": _Httpx}


def auto_transport(url: str) -> str:
    """phiforge's own client, unless the environment routes `url` through a proxy, which aiohttp speaks to."""
    return "aiohttp" if env_proxy(url) is not None else "asyncio"


class HTTPTeacher:
    """A chat model behind an OpenAI-compatible `base_url` (ending in /v1, as for the openai client)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, concurrency: int = 8,
                 max_retries: int = 6, timeout_s: float = 60.0, cache_dir: Path | str | None = None,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, name: str | None = None,
                 transport: str = "auto"):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise TeacherError(f"HTTPTeacher needs concurrency >= 1, max_retries >= 0, timeout_s > 0 and "
                               f"backoff_s >= 0; got {concurrency}, {max_retries}, {timeout_s}, {backoff_s}")
        if transport != "auto" and transport not in TRANSPORTS:
            raise TeacherError(f"HTTPTeacher transport must be 'auto' or one of {sorted(TRANSPORTS)}, "
                               f"not {transport!r}")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.url = self.base_url + "/chat/completions"
        self.transport = auto_transport(self.url) if transport == "auto" else transport
        self.api_key, self.concurrency, self.max_retries, self.timeout_s = api_key, concurrency, max_retries, timeout_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.cache = DiskCache(cache_dir) if cache_dir is not None else None
        self.name = name or f"http:{model}"
        self.rng = random.Random()
        # Cumulative over calls. requests: HTTP requests sent, retries included; tokens: as the server reported them,
        # for the requests it answered (cache hits cost none).
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "deduplicated": 0, "completed": 0, "failed": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """`acomplete` for synchronous callers; from inside a running event loop it runs on a helper thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acomplete(requests))
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.acomplete(requests)).result()

    async def acomplete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        requests = list(requests)
        results: list[Completion | None] = [None] * len(requests)
        todo: dict[str, tuple[dict, list[int]]] = {}  # request key -> (canonical request, positions it answers)
        for i, r in enumerate(requests):
            canonical = r.canonical(self.model)
            key = request_key(canonical)
            if not r.deterministic:
                todo[f"{key}/{i}"] = (canonical, [i])  # a fresh draw each: never merged, never cached
            elif self.cache is not None and (hit := self.cache.get(key, canonical)) is not None:
                results[i] = hit
                self.stats["cache_hits"] += 1
            else:
                self.stats["deduplicated"] += key in todo
                todo.setdefault(key, (canonical, []))[1].append(i)
        if not todo:
            return results

        n_slots = min(self.concurrency, len(todo))
        slots = asyncio.BoundedSemaphore(n_slots)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"

        async def answer(key: str, canonical: dict, positions: list[int]) -> None:
            request = requests[positions[0]]
            completion = await self._post(slots, transport, request, on_wait=spawn)
            for p in positions:
                results[p] = completion
            if self.cache is not None and request.deterministic:
                try:
                    self.cache.put(key, canonical, completion)  # an append: cheaper than handing it to a thread
                except OSError as e:  # e.g. a full disk
                    raise TeacherError(f"cannot write the teacher cache under {self.cache.root}: {e}") from e

        # One worker per slot takes requests from a queue, rather than a task per request waiting on the semaphore:
        # at 64 in flight the tasks and their wake-ups cost as much CPU as the HTTP itself. A request that waits to
        # retry lets its slot go and starts a worker, so the queue keeps moving.
        queue = collections.deque((k, c, ps) for k, (c, ps) in todo.items())
        errors: list[Exception] = []
        workers: set[asyncio.Task] = set()

        async def worker() -> None:
            while queue:
                try:
                    await answer(*queue.popleft())
                except Exception as e:  # a TeacherError, or a bug: reported once the batch is done
                    errors.append(e)

        def spawn() -> None:
            if queue:
                workers.add(asyncio.ensure_future(worker()))

        transport = TRANSPORTS[self.transport](self.url, n_slots, self.timeout_s, headers)
        try:
            for _ in range(n_slots):
                spawn()
            while workers:
                done, _ = await asyncio.wait(workers)
                workers.difference_update(done)
                for task in done:
                    task.result()  # a cancellation, or an error outside answer()
        finally:
            for task in workers:
                task.cancel()
            await transport.aclose()
        if errors:
            self.stats["failed"] += len(errors)
            first = next((e for e in errors if not isinstance(e, TeacherError)), errors[0])
            if not isinstance(first, TeacherError):
                raise first  # a bug or a cancellation, not the server's doing
            raise TeacherError(f"{len(errors)} of {len(todo)} requests failed (the others are cached); "
                               f"first: {first}", url=first.url, status=first.status)
        return results

    async def _post(self, slots: asyncio.BoundedSemaphore, transport: _Asyncio | _Aiohttp | _Httpx,
                    request: ChatRequest, on_wait: Callable[[], None]) -> Completion:
        """The request's completion, trying up to 1 + max_retries times; on_wait() runs as it lets its slot go to
        wait before a retry."""
        body = {"model": self.model, "messages": list(request.messages), "temperature": request.temperature,
                "max_tokens": request.max_tokens}
        if request.seed is not None:  # omitted rather than null: some servers reject null fields
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")  # once, for every attempt
        last, status = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            retry_after = None
            try:
                async with slots:
                    self.stats["requests"] += 1
                    status, content, retry_after_header, reason = await transport.post(data)
                if status == 200:
                    completion = parse_completion(content)
                    self.stats["completed"] += 1
                    self.stats["prompt_tokens"] += completion.prompt_tokens
                    self.stats["completion_tokens"] += completion.completion_tokens
                    return completion
                last = f"HTTP {status}: {_error_detail(content, reason)}"
                if status not in RETRY_STATUSES:
                    raise TeacherError(f"POST {self.url} failed with {last}", url=self.url, status=status)
                retry_after = retry_after_seconds(retry_after_header)
            except transport.timeouts as e:
                last, status = f"no answer within {self.timeout_s:g} s ({type(e).__name__})", None
            except transport.errors as e:
                last, status = f"connection error ({type(e).__name__}: {e})", None
            except _Malformed as e:
                last = f"HTTP 200 with a malformed body: {e}"
            if attempt < self.max_retries:
                on_wait()
                await asyncio.sleep(retry_after if retry_after is not None
                                    else backoff_delay(attempt, self.backoff_s, self.max_backoff_s, self.rng))
        raise TeacherError(f"POST {self.url} failed after {self.max_retries + 1} attempts; last: {last}",
                           url=self.url, status=status)
