"""`phiforge serve` on loopback, driven by the official `openai` client, raw HTTP and (where present) Chromium."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from phiforge.lm.engine import load_chat_model
from phiforge.serve.chat import fit_messages, text_problem
from phiforge.cli import main
from phiforge.lm.generate import generate
from test_chat import make_checkpoint

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from phiforge.serve.server import Limits, Served, Server, build_app, listen  # noqa: E402  (needs starlette, like uvicorn)
from phiforge.serve.access import Access, host_name  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import HTMLResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
LONG = 1500  # tokens in a generation that a test abandons; long enough that it cannot finish first


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {"tiny": make_checkpoint(root / "tiny", max_seq_len=LONG + 100),
            "other": make_checkpoint(root / "other", seed=1, max_seq_len=64)}


@pytest.fixture(scope="module")
def reference(checkpoints):
    """Separate copies of the served models for offline `generate`, so the tests never share the server's."""
    return {name: load_chat_model(path)[:2] for name, path in checkpoints.items()}


@contextlib.contextmanager
def serving(app, graceful_s: float | None = None):
    """An ASGI app on a free loopback port in a background thread; yields its base URL."""
    sock = listen("127.0.0.1", 0)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(timeout=20)
        sock.close()


def running(server: Server, access: Access | None = None):
    """`phiforge serve`'s app for a Server, on a free loopback port; yields the base URL."""
    return serving(build_app(server, access))


@pytest.fixture(scope="module")
def served(checkpoints):
    models = [Served(name, path, *load_chat_model(path)[:2]) for name, path in checkpoints.items()]
    server = Server(models, Limits(max_tokens=LONG, max_concurrent=16, batch_window_ms=30))
    with running(server) as url:
        yield url, server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def wait_idle(url: str) -> dict:
    deadline = time.monotonic() + 20
    while (h := health(url))["active"]:
        assert time.monotonic() < deadline, f"requests still in flight: {h}"
        time.sleep(0.02)
    return h


def greedy_text(reference, name: str, prompt: list[int], n: int) -> str:
    model, tok = reference[name]
    return tok.decode(generate(model, [prompt], max_new_tokens=n, pad_id=tok.pad_id,
                               stop_ids=[tok.im_end_id, tok.endoftext_id])[0])


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == ["tiny", "other"]
    h = health(served[0])
    assert h["status"] == "ok" and h["models"] == ["tiny", "other"]


@pytest.mark.parametrize("model", ["tiny", "other"])
def test_chat_completion_plain_and_streamed_agree(client, reference, model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 17 and 25"}]
    plain = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=20)
    choice = plain.choices[0]
    assert plain.model == model and choice.finish_reason == "length" and choice.message.role == "assistant"
    assert plain.usage.completion_tokens == 20
    _, tok = reference[model]
    prompt = tok.encode_chat(messages, add_generation_prompt=True)[0]
    assert plain.usage.prompt_tokens == len(prompt)
    assert choice.message.content == greedy_text(reference, model, prompt, 20)

    chunks = list(client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 20


def test_completion_plain_and_streamed_agree(client, reference):
    plain = client.completions.create(model="tiny", prompt="The cat sat", temperature=0, max_tokens=15)
    _, tok = reference["tiny"]
    assert plain.choices[0].text == greedy_text(reference, "tiny", tok.encode("The cat sat"), 15)
    chunks = list(client.completions.create(model="tiny", prompt="The cat sat", temperature=0, max_tokens=15,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_cuts_the_reply(client):
    full = client.completions.create(model="tiny", prompt="A train", temperature=0, max_tokens=15).choices[0].text
    cut = full[len(full) // 2:][:2]
    for stream in (False, True):
        out = client.completions.create(model="tiny", prompt="A train", temperature=0, max_tokens=15, stop=[cut],
                                        stream=stream)
        chunks = list(out) if stream else [out]
        assert "".join(c.choices[0].text for c in chunks) == full[:full.index(cut)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_with_seed_is_repeatable(client):
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=1.0, max_tokens=12, seed=7)
    first, again = (client.chat.completions.create(**kwargs).choices[0].message.content for _ in range(2))
    assert first == again


def test_bad_requests_get_openai_errors(served, client):
    url = served[0] + "/v1"

    def post(path, body, status):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(url + path, content=raw, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return error

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    assert "not valid JSON" in post("/chat/completions", b'{"model": "tiny", "messages": [', 400)["message"]
    assert post("/chat/completions", b"[1, 2]", 400)["message"].startswith("request body must be a JSON object")
    assert post("/chat/completions", {**chat, "model": "gpt-17"}, 404)["code"] == "model_not_found"
    assert post("/completions", {"model": "other", "prompt": "the cat " * 200}, 400)["code"] == \
        "context_length_exceeded"
    assert post("/completions", {"model": "other", "prompt": "hi", "max_tokens": 64}, 400)["code"] == \
        "context_length_exceeded"
    for bad in (-1, 0, 2.5, "10", LONG + 1):
        assert post("/chat/completions", {**chat, "max_tokens": bad}, 400)["param"] == "max_tokens"
    for bad in (-0.5, 3, "hot"):
        assert post("/chat/completions", {**chat, "temperature": bad}, 400)["param"] == "temperature"
    assert post("/chat/completions", {**chat, "top_p": 0}, 400)["param"] == "top_p"
    assert post("/chat/completions", {**chat, "messages": [{"role": "tool", "content": "x"}]}, 400)["param"] == \
        "messages"
    assert post("/chat/completions", {**chat, "n": 3}, 400)["param"] == "n"
    assert post("/completions", {"model": "tiny", "prompt": [10**9]}, 400)["param"] == "prompt"
    assert httpx.get(url + "/nothing-here", timeout=10).json()["error"]["message"] == "Not Found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=chat["messages"], max_tokens=-3)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=chat["messages"])
    assert health(served[0])["status"] == "ok"


def test_client_disconnect_mid_stream_stops_generation(served, client):
    url, _ = served
    before = wait_idle(url)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "talk forever"}], "temperature": 0,
            "max_tokens": LONG, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert sum(1 for line in (next(lines) for _ in range(6)) if line.startswith("data: ")) >= 3
    after = wait_idle(url)  # hung up after a few tokens: the worker must drop the row, not decode LONG tokens
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completion_tokens"] == before["completion_tokens"]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert reply.usage.completion_tokens == 5


def test_over_the_concurrency_limit_is_429(served, client):
    url, server = served
    wait_idle(url)
    limit, server.limits.max_concurrent = server.limits.max_concurrent, 1
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "temperature": 0,
                "max_tokens": LONG, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            next(r.iter_lines())
            with pytest.raises(openai.RateLimitError) as e:
                client.completions.create(model="tiny", prompt="hi", max_tokens=3)
            assert e.value.code == "rate_limit_exceeded"
    finally:
        server.limits.max_concurrent = limit
    wait_idle(url)
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=3).usage.completion_tokens == 3


def test_concurrent_requests_are_batched_and_correct(served, client, reference):
    url, _ = served
    before = wait_idle(url)
    _, tok = reference["tiny"]
    questions = [f"what is {i} plus {i + 3}?" for i in range(8)]
    expected = [greedy_text(reference, "tiny", tok.chat_prompt(q), 16) for q in questions]
    barrier = threading.Barrier(len(questions))

    def ask(q):
        barrier.wait(timeout=30)  # release all at once so they land in the same batching window
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}],
                                             temperature=0, max_tokens=16)
        return out.choices[0].message.content

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    assert answers == expected
    after = health(url)
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8 and after["max_batch"] >= 2, after


KEY = "sk-test-0123456789"


def chat_body(model: str = "other", content: str = "hi", **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2,
                       "temperature": 0, **extra}).encode()


def post(url: str, path: str, raw: bytes, headers: dict | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(url + "/v1" + path, content=raw, headers=headers, timeout=30)


def refused(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """The OpenAI-style error of a refused request."""
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert code is None or error["code"] == code, error
    return error


def test_foreign_host_and_origin_are_refused_before_any_generation(served):
    url, _ = served
    port = url.rsplit(":", 1)[1]
    before = wait_idle(url)["requests"]
    # The tester's attack: a web page's form-style request after DNS rebinding made evil.example mean 127.0.0.1.
    r = post(url, "/chat/completions", chat_body(), {"Host": "evil.example", "Origin": "http://evil.example",
                                                     "Content-Type": "text/plain"})
    assert "evil.example" in refused(r, 403, "host_not_allowed")["message"]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.example:{port}", f"localhost.evil:{port}",
                 "10.1.2.3", f"127.0.0.1:{port}@evil.example", "", f"[::1:{port}"):
        for path in ("/", "/health", "/v1/models"):
            refused(httpx.get(url + path, headers={"Host": host}, timeout=10), 403, "host_not_allowed")
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LocalHost.", f"[::1]:{port}"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}, timeout=10).status_code == 200, host

    for origin in ("http://evil.example", "null", f"http://localhost:{port}", f"http://127.0.0.1:{int(port) + 1}",
                   f"file://127.0.0.1:{port}", f"http://127.0.0.1:{port}.evil.example"):
        refused(post(url, "/chat/completions", chat_body(), {"Origin": origin}), 403, "origin_not_allowed")
    # the page's own requests carry its origin; curl and the OpenAI clients carry none
    assert post(url, "/chat/completions", chat_body(), {"Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    assert post(url, "/chat/completions", chat_body()).status_code == 200
    assert wait_idle(url)["requests"] == before + 2  # nothing refused reached the model


def test_host_rule_for_each_listening_address():
    def allowed(access: Access, *hosts: str) -> list[bool]:
        return [access.allows_host(host_name(h)) for h in hosts]

    loopback = Access.listening("127.0.0.1", "127.0.0.1")
    assert allowed(loopback, "localhost", "127.0.0.1:8000", "[::1]:8000", "LocalHost.") == [True] * 4
    assert allowed(loopback, "evil.example", "10.0.0.5", "[::1", "::1", "localhost:http", "a@localhost") == [False] * 6
    # every interface: any address typed as a number (rebinding needs a name) and the names allowed by hand
    everywhere = Access.listening("0.0.0.0", "0.0.0.0", allow_hosts=["chat.example.org"])
    assert allowed(everywhere, "10.0.0.5:8000", "[fe80::1]", "localhost", "chat.example.org:8000") == [True] * 4
    assert allowed(everywhere, "evil.example", "myhost.lan") == [False] * 2
    named = Access.listening("MyHost.lan", "192.168.1.5")
    assert allowed(named, "myhost.lan:8000", "192.168.1.5") == [True] * 2
    assert allowed(named, "localhost", "127.0.0.1", "10.0.0.5", "evil.example") == [False] * 4


def test_only_json_bodies_are_read(served):
    url, _ = served
    for kind in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/json; charset=latin-1", "application/jsonx"):
        r = httpx.post(url + "/v1/chat/completions", content=chat_body(),
                       headers={} if kind is None else {"Content-Type": kind}, timeout=10)
        assert "application/json" in refused(r, 415, "unsupported_media_type")["message"]
    for kind in ("application/json; charset=utf-8", "Application/JSON", 'application/json;charset="UTF-8"'):
        assert post(url, "/chat/completions", chat_body(), {"Content-Type": kind}).status_code == 200, kind


# (path, raw body, the field named, the problem named): each is text no model should read
BAD_TEXT = [
    ("/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
     "messages[0].content", "lone surrogate U+D800 at character 3"),
    ("/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "caf\\u00e9 caf\xe9"}]}',
     "messages[0].content", "invalid UTF-8 byte 0xE9 at character 8"),
    ("/chat/completions", b'{"model": "tiny", "messages": [{"role": "system", "content": "ok"}, {"role": "user", '
                          b'"content": [{"type": "text", "text": "nul \\u0000"}]}]}',
     "messages[1].content[0].text", "control character U+0000 at character 4"),
    ("/completions", b'{"model": "tiny", "prompt": "\\u001b[2J"}', "prompt",
     "control character U+001B at character 0"),
    ("/completions", b'{"model": "tiny", "prompt": "hi", "stop": ["ok", "\\udfff"]}', "stop[1]",
     "lone surrogate U+DFFF at character 0"),
    ("/completions", b'{"model": "tiny\\u0085", "prompt": "hi"}', "model",
     "control character U+0085 at character 4"),
    ("/completions", b'{"model": "tiny", "prompt": "hi", "user": {"\\u007f": 1}}', "a key of user",
     "control character U+007F at character 0"),
]


@pytest.mark.parametrize("path,raw,param,problem", BAD_TEXT, ids=[case[2] for case in BAD_TEXT])
def test_text_a_model_cannot_read_is_a_400_naming_its_field(served, path, raw, param, problem):
    error = refused(post(served[0], path, raw), 400, "invalid_text")
    assert error["param"] == param and error["message"].startswith(f"{param} has {problem}"), error


def test_odd_but_valid_requests_are_answered_and_bad_ones_never_a_500(served):
    url, _ = served
    # tab, newline and carriage return are text; so is everything printable in any script
    r = post(url, "/chat/completions", chat_body(content="a\tb\nc\r\nd Héllo 東京 \U0001f600 \u2028"))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert post(url, "/chat/completions", chat_body(seed=-1, temperature=1.0)).status_code == 200
    assert refused(post(url, "/chat/completions", chat_body(seed=2**64, temperature=1.0)), 400)["param"] == "seed"
    assert "nested too deeply" in refused(post(url, "/completions", b'{"prompt": ' + b"[" * 100_000), 400)["message"]
    assert "UTF-8" in refused(post(url, "/completions", b'{"prompt": "hi"}\xff'), 400)["message"]
    assert refused(post(url, "/chat/completions", chat_body(truncation="some")), 400)["param"] == "truncation"
    assert health(url)["status"] == "ok"


def test_an_assistant_turn_may_hold_the_control_characters_a_model_generates(served):
    url, _ = served
    # This model's replies hold control characters, passed on as generated (see test_completion_plain_...)
    first = post(url, "/chat/completions", chat_body("other", "hello", max_tokens=10)).json()
    reply = first["choices"][0]["message"]["content"]
    assert text_problem(reply) is not None and text_problem(reply, generated=True) is None
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply},
             {"role": "user", "content": "and then?"}]
    again = {"model": "other", "messages": turns, "max_tokens": 2}
    r = post(url, "/chat/completions", json.dumps(again).encode())
    assert r.status_code == 200, r.text
    # only there: the same text from the user or the system is refused, and no turn may hold a lone surrogate
    for i, role in ((0, "user"), (0, "system")):
        bad = [{"role": role, "content": reply}, *turns[1:]]
        error = refused(post(url, "/chat/completions", json.dumps({**again, "messages": bad}).encode()), 400)
        assert error["param"] == f"messages[{i}].content" and "control character" in error["message"]
    bad = [*turns[:1], {"role": "assistant", "content": [{"type": "text", "text": "ok \ud800"}]}, *turns[2:]]
    error = refused(post(url, "/chat/completions", json.dumps({**again, "messages": bad}).encode()), 400)
    assert error["param"] == "messages[1].content[0].text" and "lone surrogate" in error["message"]


def test_client_disconnect_during_a_plain_request_stops_generation(served):
    url, _ = served
    before = wait_idle(url)
    port = int(url.rsplit(":", 1)[1])
    body = chat_body("tiny", "talk forever", max_tokens=LONG)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        deadline = time.monotonic() + 20
        while not health(url)["active"]:  # accepted, queued or decoding: then hang up
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.01)
    after = wait_idle(url)  # the worker must drop the row, not decode LONG tokens for nobody
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completion_tokens"] == before["completion_tokens"]
    assert post(url, "/chat/completions", chat_body()).json()["usage"]["completion_tokens"] == 2


@pytest.fixture(scope="module")
def small_models(checkpoints):
    """A copy of the 64-token model for servers of their own (their own worker threads, never the module's)."""
    return [Served("other", checkpoints["other"], *load_chat_model(checkpoints["other"])[:2])]


@pytest.fixture(scope="module")
def keyed(small_models):
    with running(Server(small_models, Limits(max_tokens=16)), Access(api_key=KEY)) as url:
        yield url


def test_api_key_is_required_on_the_api_and_compared_exactly(keyed):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"},
                    {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}):
        r = httpx.get(keyed + "/v1/models", headers=headers, timeout=10)
        error = refused(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert error["message"].startswith("missing API key" if not headers else "incorrect API key"), error
    refused(post(keyed, "/chat/completions", chat_body()), 401, "invalid_api_key")
    assert httpx.get(keyed + "/health", timeout=10).json()["requests"] == 0  # refused before the model
    # the page (which holds no secret) and health probes need no key; the Host rule comes first
    assert httpx.get(keyed + "/", timeout=10).status_code == 200
    assert KEY not in httpx.get(keyed + "/", timeout=10).text
    refused(httpx.get(keyed + "/v1/models", headers={"Host": "evil.example", "Authorization": f"Bearer {KEY}"},
                      timeout=10), 403, "host_not_allowed")
    assert httpx.get(keyed + "/v1/models", headers={"Authorization": f"bearer  {KEY}"}, timeout=10).status_code == 200

    client = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage.completion_tokens == 3
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed + "/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_web_page_is_served(served):
    r = httpx.get(served[0] + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "phiforge chat" in r.text and "/v1/chat/completions" in r.text
    assert r.headers["x-frame-options"] == "DENY"  # no other site may frame it and steer the user's clicks


class DevTools:
    """Headless Chromium driven over --remote-debugging-pipe: NUL-terminated JSON on fds 3 (in) and 4 (out)."""

    def __init__(self, profile: str):
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()
        # Move the child's ends above 3 and 4 first, or one redirection could overwrite the other (bash, as dash
        # takes only one-digit fds).
        low = (cmd_r, res_w)
        cmd_r, res_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in low)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--remote-debugging-pipe",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{res_w}', CHROMIUM, *flags],
                                     pass_fds=(cmd_r, res_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        for fd in (cmd_r, res_w, *low):
            os.close(fd)
        self.next_id, self.buffer = 0, b""

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    assert "error" not in reply, reply
                    return reply["result"]
            assert select.select([self.res_r], [], [], max(0.0, deadline - time.monotonic()))[0], f"{method} hung"
            data = os.read(self.res_r, 1 << 16)
            assert data, "chromium exited"
            self.buffer += data

    def close(self) -> None:
        # Browser.close lets the helper processes exit before the profile folder is removed under them.
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.cmd_w)
        os.close(self.res_r)


PAGE_SCRIPT = """(async () => {
  const until = async (ok, ms) => { const t = Date.now();
    while (!ok()) {
      if (Date.now() - t > ms) throw new Error("timed out");
      await new Promise(r => setTimeout(r, 50));
    } };
  await until(() => document.getElementById("model").options.length === 2, 15000);
  document.getElementById("temperature").value = "0";
  document.getElementById("max-tokens").value = "12";
  document.getElementById("input").value = "hello there";
  document.getElementById("send").click();
  await until(() => document.querySelector(".msg.assistant[data-done]"), 30000);
  const reply = document.querySelector(".msg.assistant");
  return JSON.stringify({cls: reply.className, text: reply.querySelector(".content").textContent,
                         stats: document.getElementById("stats").textContent,
                         user: document.querySelector(".msg.user .content").textContent});
})()"""


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y "
                                           "chromium) to test the web page in a real browser")


def run_in_page(page_url: str, script: str, timeout: float = 60) -> dict:
    """Open page_url in headless Chromium, wait until it has loaded, run script (a promise of a JSON string)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = DevTools(profile)
        try:
            target = browser.call("Target.createTarget", url=page_url)["targetId"]
            session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            deadline = time.monotonic() + 30
            while True:  # wait until the page itself, not the initial about:blank, has loaded
                state = browser.call("Runtime.evaluate", session, returnByValue=True,
                                     expression="location.href + ' ' + document.readyState")["result"]["value"]
                if state == f"{page_url} complete":
                    break
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
            result = browser.call("Runtime.evaluate", session, timeout=timeout, expression=script, awaitPromise=True,
                                  returnByValue=True)
            assert "exceptionDetails" not in result, result
            return json.loads(result["result"]["value"])
        finally:
            browser.close()


@needs_chromium
def test_web_page_chats_in_headless_chromium(served, reference):
    page = run_in_page(served[0] + "/", PAGE_SCRIPT)
    _, tok = reference["tiny"]
    assert page["user"] == "hello there" and page["cls"] == "msg assistant"
    assert page["text"] == greedy_text(reference, "tiny", tok.chat_prompt("hello there"), 12)
    assert page["stats"].startswith("12 tokens in ") and "tokens/s" in page["stats"]
    assert "finish: length" in page["stats"]


UNTIL = """const until = async (ok, ms) => { const t = Date.now();
    while (!ok()) {
      if (Date.now() - t > ms) throw new Error("timed out");
      await new Promise(r => setTimeout(r, 50));
    } };"""

LONG_CHAT_SCRIPT = """(async () => {
  %(until)s
  const $ = (id) => document.getElementById(id);
  await until(() => $("model").options.length === 2, 15000);
  $("model").value = "other";
  $("temperature").value = "0";
  $("max-tokens").value = "%(max_tokens)d";
  const replies = [];
  for (const question of %(questions)s) {
    $("input").value = question;
    $("send").click();
    await until(() => document.querySelectorAll(".msg[data-done]").length === replies.length + 1, 30000);
    const reply = [...document.querySelectorAll(".msg[data-done]")].pop();
    replies.push({cls: reply.className, text: reply.querySelector(".content").textContent});
  }
  return JSON.stringify({replies, dropped: document.querySelectorAll(".msg.dropped").length});
})()"""


@needs_chromium
def test_web_page_keeps_a_long_conversation_within_the_context(served, reference):
    questions = [f"tell me about the cat number {i}" for i in range(8)]
    max_tokens = 8
    page = run_in_page(served[0] + "/", LONG_CHAT_SCRIPT % {"until": UNTIL, "max_tokens": max_tokens,
                                                           "questions": json.dumps(questions)}, timeout=120)
    # The same conversation offline: terminal chat's rule, with the replies as the page showed them.
    model, tok = reference["other"]
    history, expected, dropped = [], [], 0
    for q in questions:
        user = {"role": "user", "content": q}
        prompt, budget, n = fit_messages(tok, history + [user], model.cfg.max_seq_len, max_tokens)
        assert budget == max_tokens
        del history[:n]
        dropped += n
        expected.append(greedy_text(reference, "other", prompt, max_tokens))
        history += [user, {"role": "assistant", "content": expected[-1]}]
    assert dropped >= 4  # eight turns outgrow the 64-token context several times over
    assert any(text_problem(e) for e in expected)  # and the page sends back replies with control characters
    assert [r["cls"] for r in page["replies"]] == ["msg assistant"] * len(questions)  # no turn failed
    assert [r["text"] for r in page["replies"]] == expected  # and each saw exactly what the rule keeps
    assert page["dropped"] == dropped  # the page marks what the model no longer sees


KEY_PAGE_SCRIPT = """(async () => {
  %(until)s
  const $ = (id) => document.getElementById(id);
  await until(() => document.querySelector(".msg.error"), 15000);
  const asked = document.querySelector(".msg.error .content").textContent;
  $("api-key").value = "%(key)s";
  $("api-key").dispatchEvent(new Event("change"));
  await until(() => $("model").options.length === 1, 15000);
  $("temperature").value = "0";
  $("max-tokens").value = "6";
  $("input").value = "hello there";
  $("send").click();
  await until(() => document.querySelector(".msg.assistant[data-done]"), 30000);
  const reply = document.querySelector(".msg.assistant");
  return JSON.stringify({asked, cls: reply.className, text: reply.querySelector(".content").textContent});
})()"""


@needs_chromium
def test_web_page_works_with_an_api_key(keyed, reference):
    page = run_in_page(keyed + "/", KEY_PAGE_SCRIPT % {"until": UNTIL, "key": KEY})
    assert "needs an API key" in page["asked"]  # the page says why it cannot list the models yet
    _, tok = reference["other"]
    assert page["cls"] == "msg assistant"
    assert page["text"] == greedy_text(reference, "other", tok.chat_prompt("hello there"), 6)


ATTACK_PAGE = """<!doctype html><script>
  // What any site may send without asking the server first (a "simple" request): a cross-site text/plain POST.
  fetch("%(target)s/v1/chat/completions", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
        body: JSON.stringify({messages: [{role: "user", content: "from another site"}], max_tokens: 3})})
    .then(() => document.title = "sent", () => document.title = "failed");
</script>"""


def spy(app, seen: list):
    """app, noting (path, Origin, status) of every HTTP request it answers."""
    async def asgi(scope, receive, send):
        async def record(message):
            if message["type"] == "http.response.start":
                origin = dict(scope["headers"]).get(b"origin", b"").decode()
                seen.append((scope["path"], origin, message["status"]))
            await send(message)

        await app(scope, receive, record if scope["type"] == "http" else send)
    return asgi


@needs_chromium
def test_another_site_cannot_make_the_server_generate(small_models):
    server = Server(small_models, Limits(max_tokens=16))
    seen = []
    with serving(spy(build_app(server), seen)) as target:
        async def attack(request):
            return HTMLResponse(ATTACK_PAGE % {"target": target})

        with serving(Starlette(routes=[Route("/", attack)])) as other:
            origin = other.replace("127.0.0.1", "localhost")  # another origin, on this machine
            title = run_in_page(origin + "/", """(async () => { %s
              await until(() => document.title !== "", 15000); return JSON.stringify(document.title); })()""" % UNTIL)
    assert title == "sent"  # the browser sent it; a no-cors page never sees the answer, the server's log does
    assert [s for s in seen if s[0] != "/"] == [("/v1/chat/completions", origin, 403)]
    assert server.stats["requests"] == 0


def test_serve_cli_starts_answers_and_stops(checkpoints, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(checkpoints["tiny"]), "--model", "nonsense"]) == 2
    assert main(["serve"]) == 2
    assert main(["serve", str(checkpoints["tiny"]), "--api-key", "two words"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("phiforge: error: ") for line in err), err
    assert "--api-key must be printable ASCII" in err[3]

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PHIFORGE_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "phiforge.cli", "serve", "--model", f"a={checkpoints['other']}",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the server prints its address (or dies, giving "")
        assert line.startswith("phiforge: serving a at http://127.0.0.1:") and "API key required" in line, line
        base = line.split(" at ")[1].split()[0].rstrip("/")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/health", timeout=5).json()["models"] == ["a"]:
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "served process never became healthy"
            time.sleep(0.05)
        ask = {"prompt": "hi", "max_tokens": 4, "temperature": 0}
        refused(httpx.post(base + "/v1/completions", json=ask, timeout=30), 401, "invalid_api_key")
        reply = httpx.post(base + "/v1/completions", json=ask, headers={"Authorization": f"Bearer {KEY}"},
                           timeout=30).json()
        assert reply["model"] == "a" and reply["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

