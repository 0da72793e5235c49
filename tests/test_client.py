"""Client mode (`run --endpoint`) against real OpenAI-compatible servers: `llmrun serve` and
llama-cpp-python's own server (which takes a schema only as `json_object`, sends no usage in
streams and answers 500 to what it cannot validate). A recording server of a few lines checks
the narrow question of what llmrun sends."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import GEMMA, Cli
from test_serve import Server

SCHEMA = '{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_cpp_server(gemma_file: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gemma_file), "--port",
         str(port), "--n_ctx", "1024", "--model_alias", GEMMA],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # uvicorn says when it listens
        seen.append(line)
        if "Uvicorn running on" in line:
            break
    else:
        raise AssertionError("llama_cpp.server did not start:\n" + "".join(seen[-20:]))
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def llmrun_server(pulled_root: Path) -> Iterator[str]:
    srv = Server(pulled_root, "--ctx", "1024")
    yield srv.url
    srv.stop()


RAW = ("--raw", "--temperature", "0", "-n", "6", "The three primary colors are")


@pytest.mark.parametrize("which", ["llmrun", "llama_cpp"])
def test_base_url_with_or_without_v1(which: str, gemma_cli: Cli, request: Any) -> None:
    url = request.getfixturevalue(f"{which}_server")
    outputs = []
    for endpoint in (url, url + "/v1", url + "/v1/"):
        proc = gemma_cli("run", GEMMA, "--endpoint", endpoint, *RAW)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0].strip() and outputs[0] == outputs[1] == outputs[2]


def test_usage_is_null_when_the_server_does_not_say(llama_cpp_server: str, llmrun_server: str,
                                                    gemma_cli: Cli) -> None:
    theirs = json.loads(gemma_cli("run", GEMMA, "--endpoint", llama_cpp_server, "--json",
                                  *RAW).stdout)
    assert theirs["text"]
    assert theirs["usage"] == {"prompt_tokens": None, "completion_tokens": None,
                               "total_tokens": None}
    ours = json.loads(gemma_cli("run", GEMMA, "--endpoint", llmrun_server, "--json",
                                *RAW).stdout)
    assert ours["usage"]["completion_tokens"] == 6 and ours["usage"]["prompt_tokens"] > 0
    verbose = gemma_cli("run", GEMMA, "--endpoint", llama_cpp_server, "-v", *RAW)
    assert verbose.returncode == 0 and "eval count:           unknown" in verbose.stderr
    # llmrun serve says how much of the prompt came from its cache (prompt_tokens_details):
    # the same prompt again evaluates only its last token
    for _ in range(2):
        verbose = gemma_cli("run", GEMMA, "--endpoint", llmrun_server, "-v", *RAW)
    found = re.search(r"prompt eval count:\s+(\d+) token\(s\) \((\d+) evaluated\)",
                      verbose.stderr)
    assert found, verbose.stderr
    assert int(found[2]) == 1 < int(found[1]) == ours["usage"]["prompt_tokens"]


@pytest.mark.parametrize("which", ["llmrun", "llama_cpp"])
def test_schema_reaches_either_server(which: str, gemma_cli: Cli, request: Any) -> None:
    """llama-cpp-python's server refuses `json_schema` (with a 500): llmrun sends the schema
    again as `json_object` with a schema, which it takes; the output is constrained JSON."""
    url = request.getfixturevalue(f"{which}_server")
    proc = gemma_cli("run", GEMMA, "--endpoint", url, "--schema", SCHEMA, "--temperature", "0",
                     "-n", "12", "Give me a number as JSON.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.lstrip().startswith('{ "n"') or proc.stdout.lstrip().startswith('{"n"')
    assert "re-run" not in proc.stderr


# ---- what llmrun sends, and what it makes of refusals: a recording server ----------------
class _Recorder(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []
    reply: ClassVar[tuple[int, str] | None] = None  # a fixed refusal instead of an answer
    refuse_extra: ClassVar[bool] = False  # refuse top_k etc. the way OpenAI's API does

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        refused = [k for k in ("top_k", "min_p", "repeat_penalty") if k in body]
        if self.refuse_extra and refused:
            return self._send(400, json.dumps({"error": {
                "message": f"Unrecognized request argument supplied: {refused[0]}"}}))
        if self.reply is not None:
            return self._send(*self.reply)
        chunk = {"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}
        self._send(200, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n", "text/event-stream")

    def _send(self, status: int, text: str, kind: str = "application/json") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"bodies": [], "reply": None,
                                              "refuse_extra": False})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


SAMPLING = {"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"}


def test_only_what_the_user_set_is_sent(recorder: tuple[str, type[_Recorder]],
                                        cli: Cli) -> None:
    url, rec = recorder
    assert cli("run", "some-model", "--endpoint", url, "--raw", "hi").returncode == 0
    assert not SAMPLING & set(rec.bodies[-1]), rec.bodies[-1]  # the server's defaults stand
    assert rec.bodies[-1]["stream_options"] == {"include_usage": True}
    proc = cli("run", "some-model", "--endpoint", url, "--raw", "--temperature", "0", "--top-k",
               "5", "--min-p", "0.1", "--repeat-penalty", "1.1", "--seed", "3", "hi")
    assert proc.returncode == 0, proc.stderr
    sent = rec.bodies[-1]
    assert {k: sent[k] for k in SAMPLING & set(sent)} == {
        "temperature": 0.0, "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1, "seed": 3}


def test_refused_sampling_fields_are_dropped_with_one_warning(
        recorder: tuple[str, type[_Recorder]], cli: Cli) -> None:
    url, rec = recorder
    rec.refuse_extra = True
    proc = cli("run", "some-model", "--endpoint", url, "--raw", "--top-k", "5", "--min-p", "0.1",
               "--temperature", "0", "hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("Warning:")]
    assert warnings == ["Warning: the server does not take top_k, min_p; sent without"]
    assert "top_k" not in rec.bodies[-1] and "min_p" not in rec.bodies[-1]
    assert rec.bodies[-1]["temperature"] == 0.0


@pytest.mark.parametrize(("status", "code", "hint"), [
    (400, 2, None), (422, 2, None), (500, 1, None), (503, 4, "re-run to retry"),
    (429, 4, "re-run to retry"), (401, 4, "--api-key"), (404, 3, "/v1/models")])
def test_a_refusal_is_not_a_network_fault(status: int, code: int, hint: str | None,
                                          recorder: tuple[str, type[_Recorder]],
                                          cli: Cli) -> None:
    url, rec = recorder
    rec.reply = (status, json.dumps({"error": {"message": f"the server says no ({status})"}}))
    proc = cli("run", "some-model", "--endpoint", url, "--raw", "hi")
    assert proc.returncode == code, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("Error: ") and f"the server says no ({status})" in first
    if hint:
        assert hint in proc.stderr
    else:
        assert "Hint" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_temperature_range_is_the_servers(cli: Cli) -> None:
    proc = cli("run", "some-model", "--endpoint", "http://127.0.0.1:9", "--temperature", "2.5",
               "hi")
    assert proc.returncode == 2 and "less than or equal to 2" in proc.stderr


# ---- OPENAI_BASE_URL / OPENAI_API_KEY: honoured when llmrun has no setting of its own -------
def test_openai_base_url_is_used_and_said(recorder: tuple[str, type[_Recorder]],
                                         cli: Cli) -> None:
    url, rec = recorder
    auth: list[str | None] = []
    rec.do_POST = _recording_auth(rec.do_POST, auth)  # type: ignore[method-assign]
    env = {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": "sk-test-secret"}
    proc = cli("run", "some-model", "--raw", "hi", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n" and len(rec.bodies) == 1
    assert auth == ["Bearer sk-test-secret"]  # the key goes where the SDK would send it
    assert f"sending to {url}/v1 (OPENAI_BASE_URL)" in proc.stderr
    assert "sk-test-secret" not in proc.stderr + proc.stdout


def test_openai_api_key_never_goes_to_another_server(recorder: tuple[str, type[_Recorder]],
                                                     cli: Cli) -> None:
    url, rec = recorder
    auth: list[str | None] = []
    rec.do_POST = _recording_auth(rec.do_POST, auth)  # type: ignore[method-assign]
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-test-secret"}
    for extra in ({"LLMRUN_ENDPOINT": url}, {}):  # llmrun's setting, then its flag, win
        args = () if extra else ("--endpoint", url)
        proc = cli("run", "some-model", "--raw", *args, "hi", env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        assert "OPENAI_BASE_URL" not in proc.stderr
    assert auth == [None, None]
    proc = cli("run", "some-model", "--raw", "--endpoint", url, "--api-key", "mine", "hi",
               env=env)
    assert proc.returncode == 0 and auth[-1] == "Bearer mine"


def test_empty_llmrun_endpoint_keeps_a_run_local(cli: Cli) -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "LLMRUN_ENDPOINT": ""}
    proc = cli("run", "gemma3:270m-base", "--no-pull", "hi", env=env)  # the notice's hint works
    assert proc.returncode == 3 and "not pulled" in proc.stderr, proc.stderr
    assert "OPENAI_BASE_URL" not in proc.stderr and "127.0.0.1:9" not in proc.stderr


def test_a_bad_openai_base_url_is_named(cli: Cli) -> None:
    proc = cli("run", "some-model", "hi", env={"OPENAI_BASE_URL": "localhost:8000"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        "Error: OPENAI_BASE_URL must be an http(s) URL, got 'localhost:8000'")


def _recording_auth(post: Any, seen: list[str | None]) -> Any:
    def do_post(self: BaseHTTPRequestHandler) -> None:
        seen.append(self.headers.get("Authorization"))
        post(self)
    return do_post
