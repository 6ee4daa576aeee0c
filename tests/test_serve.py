"""`phiforge serve` on loopback, driven by the official `openai` client, raw HTTP and (where present) Chromium."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from phiforge.chat import load_chat_model
from phiforge.cli import main
from phiforge.generate import generate
from test_chat import make_checkpoint

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from phiforge.serve import Limits, Served, Server, build_app, listen  # noqa: E402  (needs starlette, like uvicorn)

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


def running(server: Server):
    """`phiforge serve`'s app for a Server, on a free loopback port; yields the base URL."""
    return serving(build_app(server))


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


def test_web_page_is_served(served):
    r = httpx.get(served[0] + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "phiforge chat" in r.text and "/v1/chat/completions" in r.text


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


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) "
                           "to test the web page in a real browser")
def test_web_page_chats_in_headless_chromium(served, reference):
    url, _ = served
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = DevTools(profile)
        try:
            target = browser.call("Target.createTarget", url=url + "/")["targetId"]
            session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            deadline = time.monotonic() + 30
            while True:  # wait until the page itself, not the initial about:blank, has loaded
                state = browser.call("Runtime.evaluate", session, returnByValue=True,
                                     expression="location.href + ' ' + document.readyState")["result"]["value"]
                if state == f"{url}/ complete":
                    break
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
            result = browser.call("Runtime.evaluate", session, timeout=60, expression=PAGE_SCRIPT, awaitPromise=True,
                                  returnByValue=True)
            assert "exceptionDetails" not in result, result
            page = json.loads(result["result"]["value"])
        finally:
            browser.close()
    _, tok = reference["tiny"]
    assert page["user"] == "hello there" and page["cls"] == "msg assistant"
    assert page["text"] == greedy_text(reference, "tiny", tok.chat_prompt("hello there"), 12)
    assert page["stats"].startswith("12 tokens in ") and "tokens/s" in page["stats"]
    assert "finish: length" in page["stats"]


def test_serve_cli_starts_answers_and_stops(checkpoints, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(checkpoints["tiny"]), "--model", "nonsense"]) == 2
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("phiforge: error: ") for line in err), err

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "phiforge.cli", "serve", "--model", f"a={checkpoints['other']}",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the server prints its address (or dies, giving "")
        assert line.startswith("phiforge: serving a at http://127.0.0.1:"), line
        base = line.split(" at ")[1].split()[0].rstrip("/")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/health", timeout=5).json()["models"] == ["a"]:
                    break
            assert time.monotonic() < deadline and proc.poll() is None, "served process never became healthy"
            time.sleep(0.05)
        reply = httpx.post(base + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "temperature": 0},
                           timeout=30).json()
        assert reply["model"] == "a" and reply["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

