"""`llmrun serve` with real parts: a real server subprocess on a free loopback port, the real Gemma
model, and the official `openai` client (T27–T33 in docs/reliability.md). The model pool's LRU,
keep-alive and queue logic is also checked in-process with a fake engine, at the end."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import GEMMA, Cli, copy_store, make_env

from llmrun.engine import Result, Sampling
from llmrun.errors import ModelError
from llmrun.server.models import Busy, Done, Failed, ModelSpec, Piece, Pool

KEY = "sekrit-test-key"


class Server:
    """`llmrun serve --port 0` in a subprocess; stderr lines are collected as they come."""

    def __init__(self, root: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmrun", "serve", "--port", "0", *args],
            env=make_env(root, **env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.stdout = b""
        self._eof = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read_err, daemon=True).start()
        threading.Thread(target=self._read_out, daemon=True).start()
        first = self.wait_for(r"listening on (http://\S+)", timeout=120)
        match = re.search(r"listening on (http://\S+)", first)
        assert match
        self.url = match.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:  # poll /health until it answers
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 120) -> str:
        """The first stderr line (from index ``after``) matching ``pattern``."""
        return self.wait_lines(pattern, 1, after=after, timeout=timeout)[0]

    def wait_lines(self, pattern: str, count: int, *, after: int = 0,
                   timeout: float = 120) -> list[str]:
        """Wait until ``count`` stderr lines from index ``after`` match ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines[after:] if re.search(pattern, line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"{len(found)} of {count} log lines match {pattern!r}:"
                                         "\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 1.0))

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=300, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture(scope="module")
def served_root(pulled_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pulled Gemma plus an imported model named `broken` whose file is truncated."""
    root = copy_store(pulled_root, tmp_path_factory.mktemp("serve") / "root")
    gguf = next((root / "hub").rglob("*.gguf"))
    broken = root / "broken.gguf"
    broken.write_bytes(gguf.read_bytes()[: 1 << 20])
    manifest = {"name": "broken", "kind": "import", "repo": None, "revision": None,
                "quant": None, "source": "import",
                "files": [{"path": broken.name, "local": str(broken), "size": 1 << 20,
                           "sha256": "0" * 64}]}
    (root / "home" / "state" / "manifests" / "broken.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def server(served_root: Path) -> Iterator[Server]:
    srv = Server(served_root, "--ctx", "512", "--queue", "4")
    yield srv
    code = srv.stop()
    assert srv.stdout == b"", "serve wrote to stdout"
    assert code in (0, -signal.SIGTERM), srv.log()
    assert "Traceback" not in srv.log(), srv.log()[-3000:]


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return server.client()


def _chat(client: openai.OpenAI, prompt: str, *, stream: bool = False, **kw: Any) -> str:
    args: dict[str, Any] = {"model": GEMMA, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": 8, "temperature": 0, "seed": 7, **kw}
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stream=True, **args) if c.choices)
    return client.chat.completions.create(**args).choices[0].message.content or ""


def _tokens(line: str) -> int:
    match = re.search(r"completion_tokens=(\d+)", line)
    assert match, line
    return int(match.group(1))


# ---- the API ------------------------------------------------------------------------------
def test_models_and_health(server: Server, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert GEMMA in ids and "broken" in ids
    assert client.models.retrieve(GEMMA).id == GEMMA
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"


def test_chat_whole_and_streamed(client: openai.OpenAI) -> None:
    msgs: Any = [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "The capital of France is"}]
    whole = client.chat.completions.create(model=GEMMA, messages=msgs, max_tokens=8,
                                           temperature=0, seed=1)
    text = whole.choices[0].message.content
    assert text and whole.model == GEMMA and whole.object == "chat.completion"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage and whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(
        model=GEMMA, messages=msgs, max_tokens=8, temperature=0, seed=1, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    plain = list(client.chat.completions.create(model=GEMMA, messages=msgs, max_tokens=2,
                                                stream=True))
    assert all(c.usage is None for c in plain)


def test_completions_whole_and_streamed(server: Server, client: openai.OpenAI) -> None:
    args: Any = {"model": GEMMA, "prompt": "Count: 1, 2, 3, 4, 5,", "max_tokens": 8,
                 "temperature": 0}
    whole = client.completions.create(**args)
    assert whole.choices[0].text.strip().startswith("6")
    assert whole.usage and whole.usage.prompt_tokens > 0
    streamed = list(client.completions.create(stream=True, **args))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    # the raw SSE framing ends with [DONE]
    with httpx.stream("POST", server.url + "/v1/completions", json={**args, "stream": True},
                      timeout=120) as r:
        events = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["color"],
              "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}}
    r = client.chat.completions.create(
        model=GEMMA, max_tokens=48, temperature=0, seed=1,
        messages=[{"role": "user", "content": "What colour is the sky? Answer in JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": schema}})
    data = json.loads(r.choices[0].message.content or "")
    assert set(data) == {"color"} and data["color"] in ("red", "green", "blue")
    assert r.usage and r.usage.completion_tokens > 0


def test_too_long_prompt(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, "hello " * 1000)
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=GEMMA, prompt="hello " * 1000, max_tokens=4)
    assert exc.value.code == "context_length_exceeded"


def test_unknown_model_is_404_never_a_fallback(client: openai.OpenAI) -> None:
    for name in ("no-such-model", "nope:1b", "../../etc/passwd", "/etc/passwd.gguf",
                 "hf.co/no/such-repo"):
        with pytest.raises(openai.NotFoundError) as exc:
            _chat(client, "hi", model=name)
        assert exc.value.code == "model_not_found", name
    with pytest.raises(openai.BadRequestError):  # over the name length limit
        _chat(client, "hi", model="x" * 300)


GOOD: dict[str, Any] = {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 4}
BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("malformed JSON", b'{"model": "x", "messages": [', 400),
    ("not an object", b"[1, 2, 3]", 400),
    ("empty body", b"", 400),
    ("model is a number", json.dumps({**GOOD, "model": 7}).encode(), 400),
    ("messages is a string", json.dumps({**GOOD, "messages": "hi"}).encode(), 400),
    ("content is a number", json.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]})
     .encode(), 400),
    ("empty messages", json.dumps({**GOOD, "messages": []}).encode(), 400),
    ("unknown role", json.dumps({**GOOD, "messages": [{"role": "wizard", "content": "x"}]})
     .encode(), 400),
    ("image part", json.dumps({**GOOD, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}).encode(), 400),
    ("max_tokens -1", json.dumps({**GOOD, "max_tokens": -1}).encode(), 400),
    ("max_tokens 0", json.dumps({**GOOD, "max_tokens": 0}).encode(), 400),
    ("max_tokens 10^12", json.dumps({**GOOD, "max_tokens": 10**12}).encode(), 400),
    ("max_tokens > n_ctx", json.dumps({**GOOD, "max_tokens": 100000}).encode(), 400),
    ("max_tokens string", json.dumps({**GOOD, "max_tokens": "8"}).encode(), 400),
    ("temperature NaN", json.dumps({**GOOD, "temperature": float("nan")}).encode(), 400),
    ("temperature 1e9", json.dumps({**GOOD, "temperature": 1e9}).encode(), 400),
    ("temperature -1", json.dumps({**GOOD, "temperature": -1}).encode(), 400),
    ("temperature Infinity", json.dumps(GOOD)[:-1].encode() + b', "temperature": Infinity}',
     400),
    ("top_p -1", json.dumps({**GOOD, "top_p": -1}).encode(), 400),
    ("n=5", json.dumps({**GOOD, "n": 5}).encode(), 400),
    ("10^5 stop strings", json.dumps({**GOOD, "stop": ["x"] * 100_000}).encode(), 400),
    ("5 stop strings", json.dumps({**GOOD, "stop": list("abcde")}).encode(), 400),
    ("huge stop string", json.dumps({**GOOD, "stop": "x" * 10_000}).encode(), 400),
    ("huge logit_bias", json.dumps({**GOOD, "logit_bias": {str(i): 1 for i in range(10**4)}})
     .encode(), 400),
    ("seed -5", json.dumps({**GOOD, "seed": -5}).encode(), 400),
    ("stream is a string", json.dumps({**GOOD, "stream": "yes"}).encode(), 400),
    ("response_format unknown", json.dumps({**GOOD, "response_format": {"type": "xml"}})
     .encode(), 400),
    ("invalid JSON schema", json.dumps({**GOOD, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}})
     .encode(), 400),
    ("schema too big for a grammar", json.dumps({**GOOD, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "string", "maxLength": 10**7}}}}).encode(), 400),
    ("unknown model", json.dumps({**GOOD, "model": "nope:1b"}).encode(), 404),
    ("9 MB body", json.dumps({**GOOD, "messages": [
        {"role": "user", "content": "x" * (9 * 2**20)}]}).encode(), 413),
]


def test_bad_inputs_get_4xx_in_the_openai_envelope(server: Server) -> None:
    mark = len(server.lines)
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for name, body, status in BAD_BODIES:
            r = http.post("/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, name
            assert error["message"], name
        bad_completion = {"model": GEMMA, "prompt": ["a", "b"], "max_tokens": 4}
        r = http.post("/v1/completions", json=bad_completion)
        assert r.status_code == 400 and r.json()["error"]["param"] is None
        assert http.get("/health").json()["status"] == "ok"
    assert not re.search(r"status=5\d\d", "\n".join(server.lines[mark:]))


def test_broken_model_fails_alone(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        _chat(client, "hi", model="broken")
    assert exc.value.code == "model_load_failed"
    assert _chat(client, "hi")  # the other model still serves (reloaded after LRU eviction)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def _model_processes(server: Server) -> list[Any]:
    import psutil

    return [c for c in psutil.Process(server.proc.pid).children(recursive=True)
            if "llmrun.server.child" in " ".join(c.cmdline())]


def test_a_dead_model_process_takes_only_its_requests_down(server: Server,
                                                          client: openai.OpenAI) -> None:
    """T17: a model runs in a child process, so when it dies (here SIGKILL, as the kernel's OOM
    killer would) the server stays up, fails that model's running request with a clear error,
    and loads the model afresh for the next one."""
    assert _chat(client, "hi")
    [child] = _model_processes(server)
    mark = len(server.lines)
    stream = client.completions.create(model=GEMMA, prompt="Count: 1, 2, 3, 4, 5,",
                                       max_tokens=400, temperature=0, stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            got.append(chunk.choices[0].text if chunk.choices else "")
            if len(got) == 3:
                child.kill()
    assert len(got) >= 3
    assert "died (killed by SIGKILL" in str(exc.value.message)
    server.wait_for(r"the process running gemma3:270m-base died \(killed by SIGKILL", after=mark)
    assert server.proc.poll() is None
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert _chat(client, "hi")  # loaded again, in a new process
    [again] = _model_processes(server)
    assert again.pid != child.pid


# ---- concurrency and disconnects ----------------------------------------------------------
def test_fifty_concurrent_clients(served_root: Path) -> None:
    """Every request either gets exactly its serial greedy output or a clean 503. One request
    at a time (--parallel 1): decoded together, greedy answers may differ from serial ones in
    llama.cpp's batch numerics (test_serve_faults.py covers batching under load)."""
    server = Server(served_root, "--ctx", "512", "--queue", "4", "--parallel", "1")
    try:
        _fifty_clients(server, server.client())
    finally:
        server.stop()


def _fifty_clients(server: Server, client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,"]
    expected = {p: _chat(client, p) for p in prompts}
    mark = len(server.lines)
    barrier = threading.Barrier(50)

    def one(i: int) -> tuple[Any, ...]:
        barrier.wait(timeout=60)
        prompt = prompts[i % 3]
        try:
            return ("ok", prompt, _chat(client, prompt, stream=i % 2 == 1))
        except openai.APIStatusError as exc:
            return (exc.status_code, exc.response.headers.get("retry-after"), exc.code)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50), timeout=600))
    done = [r for r in results if r[0] == "ok"]
    busy = [r for r in results if r[0] == 503]
    assert len(done) + len(busy) == 50, [r for r in results if r[0] not in ("ok", 503)]
    assert done and busy
    for _, prompt, text in done:
        assert text == expected[prompt], prompt
    assert all(r[1] and r[2] == "server_busy" for r in busy)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    logged = server.wait_lines(r"POST /v1/chat/completions", 50, after=mark)
    statuses = [re.findall(r"status=(\d+)", line)[0] for line in logged]
    assert statuses.count("503") == len(busy) and set(statuses) <= {"200", "503"}


def _stop_a_stream_early(server: Server, client: openai.OpenAI, model: str = GEMMA,
                         max_tokens: int = 400) -> str:
    """A long stream closed by its client after 3 chunks: the server's log line."""
    mark = len(server.lines)
    stream = client.completions.create(model=model, prompt="Count: 1, 2, 3, 4, 5,",
                                       max_tokens=max_tokens, temperature=0, stream=True)
    for n, _ in enumerate(stream, 1):
        if n == 3:
            break
    stream.close()
    return server.wait_for(r"POST /v1/completions .*cancelled", after=mark)


def test_disconnect_mid_stream_frees_the_model(server: Server, client: openai.OpenAI) -> None:
    line = _stop_a_stream_early(server, client)
    assert "status=200" in line and _tokens(line) < 100, line
    r = client.completions.create(model=GEMMA, prompt="Hi", max_tokens=4, timeout=120)
    assert r.choices[0].text and r.usage and r.usage.completion_tokens > 0


def test_one_at_a_time_a_stream_stopped_early_leaves_the_pipe_in_step(
        served_root: Path) -> None:
    """--parallel 1 (one sequence at a time): a stream stopped early ends in the model's
    process; every later answer is still its own (no piece of the stopped stream read as
    the next request's reply). The lockstep path of a projector: test_serve_images.py."""
    server = Server(served_root, "--ctx", "512", "--parallel", "1")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        args: dict[str, Any] = {"model": GEMMA, "prompt": "Hi", "max_tokens": 8,
                                "temperature": 0}
        before = client.completions.create(**args).choices[0].text
        for _ in range(2):
            line = _stop_a_stream_early(server, client)
            assert _tokens(line) < 100, line
            assert client.completions.create(**args).choices[0].text == before
        streamed = client.completions.create(**args, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == before
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]


def test_disconnect_mid_request_frees_the_model(server: Server, client: openai.OpenAI) -> None:
    mark = len(server.lines)
    body = json.dumps({"model": GEMMA, "prompt": "Count: 1, 2, 3, 4, 5,", "max_tokens": 400,
                       "temperature": 0}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    deadline = time.monotonic() + 120
    while not any(m["running"] for m in httpx.get(server.url + "/health").json()["models"]):
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)
    sock.close()
    line = server.wait_for(r"POST /v1/completions .*status=499.*cancelled", after=mark)
    assert _tokens(line) < 100, line
    r = client.completions.create(model=GEMMA, prompt="Hi", max_tokens=4, timeout=120)
    assert r.choices[0].text


# ---- security -----------------------------------------------------------------------------
def test_foreign_host_and_origin_are_refused(server: Server) -> None:
    for headers in ({"Host": "evil.example"}, {"Host": f"evil.example:{server.port}"},
                    {"Origin": "http://evil.example"}, {"Origin": "null"}):
        r = httpx.get(server.url + "/v1/models", headers=headers)
        assert r.status_code == 403, headers
        assert r.json()["error"]["code"] == "forbidden"
    for host in ("localhost", f"localhost:{server.port}", f"127.0.0.1:{server.port}",
                 f"[::1]:{server.port}"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200
    r = httpx.get(server.url + "/v1/models", headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = httpx.options(server.url + "/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_public_bind_needs_an_api_key(gemma_cli: Cli) -> None:
    proc = gemma_cli("serve", "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "API key" in proc.stderr and proc.stdout == ""


def test_api_key_cors_and_keep_alive(served_root: Path) -> None:
    srv = Server(served_root, "--cors-origin", "http://app.example", "--keep-alive", "1s",
                 "--ctx", "256", LLMRUN_API_KEY=KEY)
    try:
        url = srv.url + "/v1/models"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}):
            r = httpx.get(url, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/health").status_code == 200
        assert GEMMA in [m.id for m in srv.client(api_key=KEY).models.list()]
        with pytest.raises(openai.AuthenticationError):
            srv.client(api_key="nope").models.list()

        r = httpx.options(srv.url + "/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = httpx.get(url, headers={"Origin": "http://app.example",
                                    "Authorization": f"Bearer {KEY}"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        assert httpx.get(url, headers={"Origin": "http://evil.example"}).status_code == 403

        mark = len(srv.lines)
        assert _chat(srv.client(api_key=KEY), "hi", max_tokens=2)
        srv.wait_for(rf"unloaded {re.escape(GEMMA)}", after=mark, timeout=60)
        assert httpx.get(srv.url + "/health").json()["models"] == []

        # Ctrl-C ends a running stream at once, with an error event, instead of waiting for it
        body = {"model": GEMMA, "prompt": "Count: 1, 2, 3, 4, 5,", "max_tokens": 200,
                "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line).startswith("data: {")
            srv.proc.send_signal(signal.SIGINT)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["error"]["code"] == "server_shutdown"
        assert srv.proc.wait(timeout=60) in (0, 130)
    finally:
        srv.stop()
    assert srv.stdout == b"" and "Traceback" not in srv.log()


# ---- the pool, in-process, with a fake engine ---------------------------------------------
class FakeEngine:
    n_ctx = 64

    def __init__(self, name: str, gate: threading.Semaphore | None) -> None:
        self.name, self.gate, self.closed = name, gate, False

    def format_chat(self, messages: list[dict[str, str]]) -> str:
        return "".join(m["content"] for m in messages)

    def tokenize(self, text: str, *, templated: bool) -> list[int]:
        return [ord(c) for c in text]

    def chat_stops(self) -> list[str]:
        return []

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None:
        pass

    def generate(self, tokens: list[int], sampling: Sampling,
                 result: Result | None = None) -> Iterator[str]:
        res = result if result is not None else Result()
        res.prompt_tokens = len(tokens)
        for _ in range(sampling.max_tokens or 8):
            if self.gate is not None:
                assert self.gate.acquire(timeout=30)
            res.completion_tokens += 1
            res.text += "x"
            yield "x"
        res.finish_reason = "length"

    def close(self) -> None:
        self.closed = True


class FakeLoader:
    def __init__(self, gate: threading.Semaphore | None = None) -> None:
        self.gate = gate
        self.loaded: list[FakeEngine] = []

    def __call__(self, spec: ModelSpec) -> FakeEngine:
        if spec.name == "bad":
            raise ModelError("model file is corrupted")
        engine = FakeEngine(spec.name, self.gate)
        self.loaded.append(engine)
        return engine


def _prepare(n: int) -> Any:
    from llmrun.formats import text_deltas

    return lambda engine, result: text_deltas(
        engine.generate([1, 2, 3], Sampling(max_tokens=n), result))


async def _drain(job: Any) -> Any:
    while isinstance(ev := await asyncio.wait_for(job.events.get(), 30), Piece):
        pass
    return ev


def test_pool_lru_and_load_failure() -> None:
    async def main() -> None:
        loader = FakeLoader()
        pool = Pool(loader, max_loaded=1, queue_size=4, keep_alive=-1)
        a, b = ModelSpec("a", Path("a")), ModelSpec("b", Path("b"))
        done = await _drain(await pool.submit(a, _prepare(3)))
        assert isinstance(done, Done) and done.result.text == "xxx"
        assert isinstance(await _drain(await pool.submit(b, _prepare(2))), Done)
        assert [e.name for e in loader.loaded] == ["a", "b"] and loader.loaded[0].closed
        failed = await _drain(await pool.submit(ModelSpec("bad", Path("bad")), _prepare(2)))
        assert isinstance(failed, Failed) and isinstance(failed.error, ModelError)
        assert isinstance(await _drain(await pool.submit(a, _prepare(1))), Done)
        assert [s["name"] for s in pool.status()] == ["a"]
        await pool.shutdown()

    asyncio.run(main())


def test_pool_queue_bound_and_cancellation() -> None:
    async def main() -> None:
        gate = threading.Semaphore(0)
        pool = Pool(FakeLoader(gate), max_loaded=1, queue_size=1, keep_alive=-1)
        spec = ModelSpec("a", Path("a"))
        running = await pool.submit(spec, _prepare(50))
        gate.release()
        assert isinstance(await asyncio.wait_for(running.events.get(), 30), Piece)
        queued = await pool.submit(spec, _prepare(5))
        with pytest.raises(Busy):
            await pool.submit(spec, _prepare(5))
        pool.cancel(queued)  # a cancelled waiter frees its place at once
        third = await pool.submit(spec, _prepare(2))
        pool.cancel(running)  # stops at the next token
        gate.release(10)
        stopped = await _drain(running)
        assert isinstance(stopped, Done) and stopped.cancelled
        assert stopped.result.completion_tokens <= 3
        assert isinstance(await _drain(queued), Done)
        gate.release(10)
        last = await _drain(third)
        assert isinstance(last, Done) and last.result.text == "xx" and not last.cancelled
        await pool.shutdown()

    asyncio.run(main())


def test_a_burst_has_one_running_and_the_queue_admitted_before_any_starts() -> None:
    """Admission leaves out of the queue the job a free sequence takes at once, also before
    the worker has started it (here: still loading): with queue_size 2 a burst gets three
    admitted, one to run and two to wait, and the fourth is Busy (the 503)."""
    loading = threading.Event()

    class SlowLoader(FakeLoader):
        def __call__(self, spec: ModelSpec) -> FakeEngine:
            loading.wait(60)
            return super().__call__(spec)

    async def main() -> None:
        pool = Pool(SlowLoader(), max_loaded=1, queue_size=2, keep_alive=-1)
        spec = ModelSpec("a", Path("a"))
        jobs = [await pool.submit(spec, _prepare(1)) for _ in range(3)]
        with pytest.raises(Busy):
            await pool.submit(spec, _prepare(1))
        loading.set()
        for job in jobs:
            assert isinstance(await _drain(job), Done)
        await pool.shutdown()

    asyncio.run(main())


def test_pool_keep_alive_unloads_idle_models() -> None:
    async def main() -> None:
        loader = FakeLoader()
        pool = Pool(loader, max_loaded=2, queue_size=4, keep_alive=0.2)
        assert isinstance(await _drain(await pool.submit(ModelSpec("a", Path("a")),
                                                         _prepare(1))), Done)
        deadline = time.monotonic() + 30
        # the slot leaves the pool first; its worker thread closes the engine just after
        while pool.status() or not loader.loaded[0].closed:
            assert time.monotonic() < deadline, (pool.status(), loader.loaded[0].closed)
            await asyncio.sleep(0.05)
        await pool.shutdown()

    asyncio.run(main())


def test_run_and_chat_against_a_server_in_client_mode(server: Any, gemma_cli: Any) -> None:
    """`run --endpoint` / `chat --endpoint` talk to `llmrun serve` with the same flags and
    give the same greedy text as a local run."""
    url = server.url if hasattr(server, "url") else server
    args = ("--temperature", "0", "--seed", "1", "-n", "8")
    local = gemma_cli("run", GEMMA, *args, "--raw", "The three primary colors are")
    # a server of its own, with nothing cached: the module's server keeps earlier requests'
    # prefixes in its KV cache, and a prompt evaluated in other batches can differ in the
    # last bits of its logits, enough to change a greedy choice on some CPUs
    fresh = Server(gemma_cli.root)
    try:
        remote = gemma_cli("run", GEMMA, *args, "--raw", "--endpoint", fresh.url,
                           "The three primary colors are")
    finally:
        fresh.stop()
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    as_json = json.loads(gemma_cli("run", GEMMA, *args, "--json", "--endpoint", url,
                                   "Hello").stdout)
    assert as_json["usage"]["completion_tokens"] > 0 and as_json["finish_reason"]
    chat = gemma_cli("chat", GEMMA, *args, "--endpoint", url, input="Hi\nWhat is 2+2?\n")
    assert chat.returncode == 0 and len(chat.stdout.split("\n\n")) == 2
    missing = gemma_cli("run", "no-such:1b", "--endpoint", url, "hi")
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    down = gemma_cli("run", GEMMA, "--endpoint", "http://127.0.0.1:9", "hi")
    assert down.returncode == 4 and "cannot reach" in down.stderr


def test_exactly_one_listener_on_loopback(server: Server) -> None:
    """T33: the server opens one listening socket, on loopback, and nothing else (no RPC,
    no second admin port)."""
    import psutil

    proc = psutil.Process(server.proc.pid)
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") \
        else proc.connections(kind="inet")
    listening = [c for c in conns if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", server.port)]
    for path in ("/api/pull", "/api/delete", "/v1/admin", "/api/create"):
        assert httpx.post(server.url + path, json={}, timeout=30).status_code in (404, 405)
