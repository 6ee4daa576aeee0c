"""HTTPTeacher throughput against a stub OpenAI server with a fixed latency, next to the ideal concurrency / latency.

The stub runs in a child process: a bare asyncio HTTP/1.1 server (keep-alive, no framework) that answers every
POST /v1/chat/completions with a small chat.completion exactly --latency-ms after the request arrives, and does
nothing else, so the server is never the bottleneck and the ideal rate at concurrency c is c / latency. The client
is `HTTPTeacher.complete` as a synth workflow would call it, disk cache on (a fresh folder per run, so every request
is a miss and is written) unless --no-cache, over requests with distinct seeds, with each --transport (asyncio:
phiforge's own HTTP/1.1 client, the default; aiohttp and httpx, the clients before it) against the same server in
the same run, their repeats interleaved so that all see the same load. Every figure is the median of --repeats runs. "client CPU ms/req" is this process's
CPU time (all threads, user + system) per request, and its inverse the rate at which the client alone would fill
one core: where that ceiling is near the ideal, the client, not the concurrency, is what limits. CPU time is what to
compare on a busy machine; wall-clock rates are only meaningful on an idle one.

    python bench/http_teacher.py            # the reported run: all three transports, cache on
    python bench/http_teacher.py --no-cache --transport asyncio   # HTTP alone, the default client only
    python bench/http_teacher.py --latency-ms 250   # a slower server
    python bench/http_teacher.py --transport asyncio aiohttp --bare   # and a bare aiohttp loop, no HTTPTeacher
    python bench/http_teacher.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from phiforge.lm.http_teacher import HTTPTeacher  # noqa: E402
from phiforge.lm.completions import ChatRequest  # noqa: E402


class Stub(asyncio.Protocol):
    latency = 0.05

    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1").lower()
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.startswith("content-length:")), 0)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            asyncio.get_running_loop().call_later(self.latency, self.reply, body)

    def reply(self, body: bytes) -> None:
        request = json.loads(body)
        text = f"reply to seed {request.get('seed')}"
        payload = json.dumps({"id": "chatcmpl-stub", "object": "chat.completion", "model": request["model"],
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}).encode()
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(payload), payload))


async def serve_stub(latency: float) -> None:
    Stub.latency = latency
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def run_once(url: str, concurrency: int, n: int, offset: int, cache_dir: Path | None,
             transport: str = "asyncio") -> tuple[float, float, float, dict]:
    """(requests/s, client CPU seconds per request, the kernel's share of them, teacher stats) of one `complete` call
    over n fresh requests, caching into cache_dir (None: no cache)."""
    requests = [ChatRequest.user(f"Question {i}: what is {i} + {i}?", temperature=1.0, max_tokens=32, seed=offset + i)
                for i in range(n)]
    teacher = HTTPTeacher(url, "stub", concurrency=concurrency, cache_dir=cache_dir, timeout_s=30, transport=transport)
    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    out = teacher.complete(requests)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    system = after.ru_stime - before.ru_stime
    cpu = after.ru_utime - before.ru_utime + system
    assert [c.text for c in out] == [f"reply to seed {offset + i}" for i in range(n)], "lost or reordered answers"
    return n / wall, cpu / n, system / n, teacher.stats


def run_bare(url: str, concurrency: int, n: int, offset: int) -> tuple[float, float, float, dict]:
    """The same n requests through a bare aiohttp loop (one session, `concurrency` workers, no cache, no retries,
    no parsing beyond json.loads): the transport's own ceiling on this machine, for HTTPTeacher to be compared with."""
    import aiohttp

    async def go() -> list[str]:
        texts: list[str | None] = [None] * n
        todo = iter(range(n))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def worker() -> None:
                for i in todo:
                    body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": f"Question {i}"}],
                                       "temperature": 1.0, "max_tokens": 32, "seed": offset + i}).encode()
                    async with session.post(f"{url}/chat/completions", data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        texts[i] = json.loads(await r.read())["choices"][0]["message"]["content"]

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return texts

    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    texts = asyncio.run(go())
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    system = after.ru_stime - before.ru_stime
    assert texts == [f"reply to seed {offset + i}" for i in range(n)], "lost or reordered answers"
    return n / wall, (after.ru_utime - before.ru_utime + system) / n, system / n, {"requests": n, "retries": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=2.0, help="ideal duration of each run: n = ideal rate x this")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-root", default=".", help="where the runs' cache folders are made, and removed at the "
                    "end (default: the current folder, as a run folder's cache would be)")
    ap.add_argument("--no-cache", action="store_true", help="HTTP alone: no disk cache")
    ap.add_argument("--transport", nargs="+", choices=["asyncio", "aiohttp", "httpx"],
                    default=["asyncio", "aiohttp", "httpx"],
                    help="HTTPTeacher's transports to run: asyncio (phiforge.lm.http1, the default client), aiohttp "
                    "and httpx (the ones before it); all three unless named")
    ap.add_argument("--bare", action="store_true", help="also a bare aiohttp loop without HTTPTeacher (row 'bare "
                    "aiohttp'): what the machine allows a client at all")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serve-stub", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    latency = args.latency_ms / 1000
    if args.serve_stub:
        asyncio.run(serve_stub(latency))
        return
    if args.quick:
        args.concurrency, args.seconds, args.repeats = [1, 8], 0.5, 1
    transports = list(args.transport)
    if args.bare:
        transports.append("bare aiohttp")

    # Every run's cache (one log file each) stays until the end, as a run folder's would.
    folders = tempfile.TemporaryDirectory(prefix=".http-teacher-bench-", dir=args.cache_root)
    proc = subprocess.Popen([sys.executable, __file__, "--serve-stub", "--latency-ms", str(args.latency_ms)],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"

        def cache_dir(name: str) -> Path | None:
            return None if args.no_cache else Path(folders.name) / name

        def one(t: str, c: int, n: int, offset: int):
            if t == "bare aiohttp":
                return run_bare(url, c, n, offset)
            return run_once(url, c, n, offset, cache_dir(f"{t}-{offset}"), t)

        for t in transports:
            one(t, 2, 4, 0)  # imports, first connections
        rows, offset = [], 10
        for c in args.concurrency:
            ideal = c / latency
            n = max(20, round(ideal * args.seconds))
            runs = {t: [] for t in transports}
            for _ in range(args.repeats):
                for t in transports:  # interleaved, so that a change in the machine's load hits both alike
                    rate, cpu, system, stats = one(t, c, n, offset)
                    offset += n
                    assert stats["requests"] == n and stats["retries"] == 0, stats
                    runs[t].append((rate, cpu, system))
            for t in transports:
                rate, cpu, system = (statistics.median(column) for column in zip(*runs[t]))
                rows.append((c, t, n, rate, ideal, cpu, system))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        folders.cleanup()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cache = "off" if args.no_cache else f"on, in {Path(args.cache_root).resolve()}"
    print(f"\nHTTPTeacher vs a stub server answering after {args.latency_ms:g} ms, disk cache {cache}; median of "
          f"{args.repeats} runs of n requests; {os.cpu_count()} cores, load average {load}\n")
    # client ceiling: the rate at which one core runs out, 1 / (client CPU per request); kernel: the system time in
    # that CPU (socket sends and receives, and the cache's appends)
    head = ("concurrency", "transport", "requests", "req/s", "ideal req/s", "achieved", "client CPU ms/req",
            "of it kernel", "client ceiling req/s")
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for c, t, n, rate, ideal, cpu, system in rows:
        cells = (c, t, n, f"{rate:.1f}", f"{ideal:.1f}", f"{rate / ideal:.1%}", f"{cpu * 1e3:.2f}",
                 f"{system * 1e3:.2f}", f"{1 / cpu:.0f}")
        print(" | ".join(str(x).rjust(len(h)) for x, h in zip(cells, head)))


if __name__ == "__main__":
    main()
