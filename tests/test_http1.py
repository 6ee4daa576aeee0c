"""phiforge.lm.http1 against hand-written servers on loopback: every framing a server may choose, byte-by-byte
delivery, dead and stale connections, silence, TLS."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ssl

import pytest

from phiforge.lm.http1 import Http1Pool, ProtocolError


class Script(asyncio.Protocol):
    """Answers each request (headers + Content-Length body) with the next of `replies`: bytes to send, cut into
    pieces of `piece` bytes; a reply of None closes the connection instead; "close-after" sends then closes."""

    replies: list = []
    piece, delay = 0, 0.001
    connections = 0
    requests: list[bytes] = []

    def connection_made(self, transport):
        type(self).connections += 1
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(self.buffer) < end + 4 + length:
                return
            type(self).requests.append(self.buffer[:end + 4 + length])
            self.buffer = self.buffer[end + 4 + length:]
            asyncio.get_running_loop().create_task(self.reply(type(self).replies.pop(0)))

    async def reply(self, reply):
        if reply is None:
            self.transport.close()
            return
        close = isinstance(reply, tuple)
        data = reply[0] if close else reply
        step = type(self).piece or len(data)
        for i in range(0, len(data), step):
            self.transport.write(data[i:i + step])
            if type(self).piece:
                await asyncio.sleep(type(self).delay)
        if close:
            self.transport.close()


def run(replies, posts, piece=0, timeout_s=5.0, ssl_server=None, scheme="http", delay=0.001):
    """Serve `replies`, make `posts` POSTs in turn through one pool; (results or exceptions, connections, requests)."""

    class Server(Script):
        pass

    Server.replies, Server.piece, Server.delay, Server.connections, Server.requests = list(replies), piece, delay, 0, []

    async def main():
        server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0, ssl=ssl_server)
        host = "localhost" if ssl_server else "127.0.0.1"
        pool = Http1Pool(f"{scheme}://{host}:{server.sockets[0].getsockname()[1]}/v1/chat/completions?x=1",
                         timeout_s, {"Content-Type": "application/json"})
        out = []
        for body in posts:
            try:
                out.append(await pool.post(body))
            except Exception as e:
                out.append(e)
            await asyncio.sleep(0.01)  # let a close from the server land, as between real requests
        await pool.aclose()
        server.close()
        return out

    out = asyncio.run(main())
    return out, Server.connections, Server.requests


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_content_length_keep_alive_and_the_request_sent():
    out, connections, requests = run([ok(b'{"a": 1}', b"Retry-After: 3\r\n"), ok(b"two")], [b'{"q": 1}', b"x"])
    assert out == [(200, "OK", {"content-length": "8", "retry-after": "3"}, b'{"a": 1}'),
                   (200, "OK", {"content-length": "3"}, b"two")]
    assert connections == 1  # kept alive
    head, _, body = requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions?x=1 HTTP/1.1" and body == b'{"q": 1}'
    assert {"Content-Type: application/json", "Content-Length: 8", "Accept-Encoding: identity"} <= set(lines)
    assert any(line.startswith("Host: 127.0.0.1:") for line in lines)


@pytest.mark.parametrize("piece", [0, 1])  # whole, and one byte at a time
def test_every_framing(piece):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n")
    squeezed = gzip.compress(b"unzipped")
    replies = [b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after continue"),
               chunked,
               b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(squeezed), squeezed),
               b"HTTP/1.1 204 No Content\r\n\r\n",
               (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\nbody until the end",)]
    out, connections, _ = run(replies, [b"a", b"b", b"c", b"d", b"e"], piece=piece)
    assert [r[3] for r in out] == [b"after continue", b"hello world", b"unzipped", b"", b"body until the end"]
    assert out[4][:2] == (503, "Service Unavailable") and out[4][2]["retry-after"] == "1"
    assert connections == 1


def test_connection_close_and_stale_keep_alive_open_a_new_connection():
    # "Connection: close" is obeyed; a server that drops an idle kept-alive connection costs a resend, not an error
    replies = [ok(b"one", b"Connection: close\r\n"), (ok(b"two"),), ok(b"three"), None, ok(b"four")]
    out, connections, requests = run(replies, [b"1", b"2", b"3", b"4"])
    assert [r[3] for r in out] == [b"one", b"two", b"three", b"four"]
    # 1: closed by header; 2: closed after answering; 3 on a fresh one, then 4 finds it dropped: resent on a 4th
    assert connections == 4 and len(requests) == 5

    # bytes beyond a response (a server that answered twice): the answer stands, the connection is not reused
    out, connections, _ = run([ok(b"one") + ok(b"stray"), ok(b"two")], [b"1", b"2"])
    assert [r[3] for r in out] == [b"one", b"two"] and connections == 2


def test_broken_servers_are_protocol_errors():
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    out, _, _ = run([(cut,), b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", None],
                    [b"1", b"2", b"3", b"4", b"5"])
    assert all(isinstance(e, ProtocolError) for e in out), out
    assert "closed the connection inside the response" in str(out[0])
    assert "not an HTTP/1.x status line" in str(out[1]) and "bad Content-Length" in str(out[2])
    assert "bad chunk size" in str(out[3]) and "closed the connection before answering" in str(out[4])


def test_silence_times_out_but_a_slow_trickle_does_not():
    body = b"x" * 40
    trickle = ok(body)
    # 60 pieces 10 ms apart: 0.6 s in all, but never 0.2 s of silence
    out, _, _ = run([trickle], [b"1"], piece=1, timeout_s=0.2, delay=0.01)
    assert out[0][3] == body

    class Silent(asyncio.Protocol):
        def data_received(self, data):
            pass

    async def main():
        server = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
        pool = Http1Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", 0.3, {})
        loop = asyncio.get_running_loop()
        t = loop.time()
        with pytest.raises(asyncio.TimeoutError, match="no bytes from the server for 0.3 s"):
            await pool.post(b"hello")
        took = loop.time() - t
        await pool.aclose()
        server.close()
        return took

    assert 0.3 <= asyncio.run(main()) < 2


def test_tls_against_a_self_signed_server(tmp_path, monkeypatch):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ssl.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    out, _, _ = run([ok(b"secret")], [b"1"], ssl_server=server_ssl, scheme="https")
    assert isinstance(out[0], ssl.SSLCertVerificationError)  # not in the system's CA store: refused

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # OpenSSL's default store, as users point it
    out, _, _ = run([ok(b"secret"), ok(b"again")], [b"1", b"2"], ssl_server=server_ssl, scheme="https")
    assert [r[3] for r in out] == [b"secret", b"again"]
