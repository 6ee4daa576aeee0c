"""A lean HTTP/1.1 client on asyncio's protocol layer: keep-alive POSTs for `HTTPTeacher`, and nothing else.

Written here rather than taken from aiohttp because the teacher's throughput at high concurrency is bounded by the
client's CPU per request: replies from a fixed-latency server come back in waves, and a wave of c replies holds the
event loop for c times that cost before the last of them is sent again. This client spends well under half of
aiohttp's CPU per request (bench/http_teacher.py; the figures are in bench/README.md).

What it speaks: HTTP/1.1 over TCP or TLS (the system's CA store), one request at a time per connection, responses
framed by Content-Length, chunked transfer coding, or the connection's end; gzip and deflate bodies (it asks for
none); 1xx interim responses skipped. A connection is kept for the next request unless the server says
`Connection: close`, speaks HTTP/1.0 without keep-alive, or ends the body by closing. A request on a reused
connection that dies before any byte of the response is sent once more on a fresh one, as urllib3 and httpx do, since
an idle keep-alive connection may be closed by the server just as it is picked. No proxies: `HTTPTeacher` uses
aiohttp where one is configured.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
import zlib

MAX_HEAD_BYTES = 64 * 1024  # a status line and headers beyond this are not an HTTP server's answer


class ProtocolError(ConnectionError):
    """The server's bytes are not an HTTP/1.1 response, or the connection ended inside one."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request` sends one request and returns a future of (status, reason, headers,
    body)."""

    def __init__(self, timeout_s: float):
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.future: asyncio.Future | None = None
        self.closed = False
        self.used = False  # has answered a request: a failure before any byte may be a stale keep-alive
        self.received_any = False
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._reset_response()

    def _reset_response(self) -> None:
        self.head: tuple[int, str, dict[str, str], bool] | None = None  # status, reason, headers, keep-alive
        self.length: int | None = None  # Content-Length; None: chunked or until the end
        self.chunked = False
        self.chunks = bytearray()

    # asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received_any = True
        self.last_activity = self.loop.time()
        if self.future is None or self.future.done():
            if self.buffer.strip():
                self._fail(ProtocolError("the server sent bytes with no request outstanding"))
            return
        try:
            self._parse()
        except ProtocolError as e:
            self._fail(e)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self.future is None or self.future.done():
            return
        if self.head is not None and self.length is None and not self.chunked:
            self._finish(bytes(self.buffer))  # a body framed by the connection's end
            return
        where = "inside the response" if self.received_any else "before answering"
        error = ProtocolError(f"the server closed the connection {where}")
        if exc is not None:
            error.__cause__ = exc
        self.future.set_exception(error)

    # one request

    def request(self, head: bytes, body: bytes) -> asyncio.Future:
        self.future = self.loop.create_future()
        self.received_any = False
        self._reset_response()
        self.last_activity = self.loop.time()
        self.timer = self.loop.call_at(self.last_activity + self.timeout_s, self._check_silence)
        self.transport.write(head + body)
        return self.future

    def _check_silence(self) -> None:
        """Fires timeout_s after the last byte: a timeout if nothing came since, else waits out the remainder."""
        if self.future is None or self.future.done():
            return
        due = self.last_activity + self.timeout_s
        if self.loop.time() < due:
            self.timer = self.loop.call_at(due, self._check_silence)
            return
        self.future.set_exception(asyncio.TimeoutError(f"no bytes from the server for {self.timeout_s:g} s"))
        self.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, error: Exception) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)
        self.close()

    def _finish(self, body: bytes) -> None:
        self._cancel_timer()
        status, reason, headers, keep_alive = self.head
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47)  # 32 + 15: a gzip or zlib header, detected
            except zlib.error:
                if encoding != "deflate":
                    self._fail(ProtocolError(f"the {encoding} body does not decompress"))
                    return
                try:
                    body = zlib.decompress(body, -15)  # raw deflate, as some servers send it
                except zlib.error:
                    self._fail(ProtocolError("the deflate body does not decompress"))
                    return
        elif encoding != "identity":
            self._fail(ProtocolError(f"unsupported Content-Encoding {encoding!r}"))
            return
        self.used = True
        if not keep_alive or self.buffer:  # bytes past the response: the framing is lost, so is the connection
            self.close()
        self.future.set_result((status, reason, headers, body))

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # parsing

    def _parse(self) -> None:
        while self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"no end of headers within {MAX_HEAD_BYTES} bytes")
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[:end + 4]
            status_line, *lines = head.split("\r\n")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not (len(code) == 3 and code.isdigit()):
                raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
            status = int(code)
            if 100 <= status < 200:
                continue  # 100 Continue and other interim answers: the real one follows
            headers: dict[str, str] = {}
            for line in lines:
                name, colon, value = line.partition(":")
                if not colon:
                    raise ProtocolError(f"malformed header line {line[:100]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            connection = headers.get("connection", "").lower()
            keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
            self.head = (status, reason, headers, keep_alive)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.chunked = True
            elif "content-length" in headers:
                try:
                    self.length = int(headers["content-length"])
                except ValueError:
                    raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
                if self.length < 0:
                    raise ProtocolError(f"bad Content-Length {self.length}")
            elif status == 204 or status == 304:
                self.length = 0
            else:
                self.head = (status, reason, headers, False)  # framed by the end of the connection
        if self.chunked:
            self._parse_chunks()
        elif self.length is not None and len(self.buffer) >= self.length:
            body = bytes(self.buffer[:self.length])
            del self.buffer[:self.length]
            self._finish(body)

    def _parse_chunks(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            size_text = bytes(self.buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:40]!r}") from None
            if size == 0:
                trailer_end = self.buffer.find(b"\r\n\r\n", end)  # any trailers, then an empty line
                if trailer_end < 0:
                    return
                del self.buffer[:trailer_end + 4]
                self._finish(bytes(self.chunks))
                return
            if len(self.buffer) < end + 2 + size + 2:
                return
            self.chunks += self.buffer[end + 2:end + 2 + size]
            if self.buffer[end + 2 + size:end + 4 + size] != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")
            del self.buffer[:end + 4 + size]


class Http1Pool:
    """Keep-alive connections to one URL's host, for POSTs to that URL: `await pool.post(body)` gives (status, reason,
    headers with lower-case names, body). The caller bounds how many run at once; the pool keeps the idle ones."""

    def __init__(self, url: str, timeout_s: float, headers: dict[str, str]):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.timeout_s = timeout_s
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "Accept-Encoding": "identity",
                 "User-Agent": "phiforge", **headers}
        lines = [f"POST {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in fixed.items()]
        self.head_prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self.timeout_s), self.host, self.port, ssl=self.ssl),
            self.timeout_s)
        self.open.add(connection)
        return connection

    async def post(self, body: bytes) -> tuple[int, str, dict[str, str], bytes]:
        head = self.head_prefix + b"%d\r\n\r\n" % len(body)
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                break
            self.open.discard(connection)
        else:
            connection = await self._connect()
        try:
            result = await self._exchange(connection, head, body)
        except ProtocolError:
            if not (connection.used and not connection.received_any):
                raise
            connection = await self._connect()  # a stale keep-alive: once more on a fresh connection
            result = await self._exchange(connection, head, body)
        if connection.closed:
            self.open.discard(connection)
        else:
            self.idle.append(connection)
        return result

    async def _exchange(self, connection: _Connection, head: bytes, body: bytes):
        """One request on `connection`; a connection that failed (or was cancelled mid-answer) is dropped."""
        try:
            return await connection.request(head, body)
        except BaseException:
            connection.close()
            self.open.discard(connection)
            raise

    async def aclose(self) -> None:
        for connection in self.open:
            connection.close()
        self.open.clear()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost
