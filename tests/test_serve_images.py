"""`image_url` content parts in `llmrun serve` (issue 15): the official `openai` client against a
real server, with the tiny vision pair (tiny_vision.py) pulled from the Hub double with its
projector, and the real Gemma 3 270M (no projector) beside it. Images are checked in the
server's process (image_parts.py) before the model's process or native code sees them."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest
from conftest import GEMMA, Cli, copy_store, make_env
from test_images import VNAME, _bomb, _image, vision_root  # noqa: F401  (a fixture)
from test_serve import Server, _stop_a_stream_early, _tokens

from llmrun.tiny_vision import TINY

# the image's positions, <start_of_image> and <end_of_image> around them, and the line after
# the image's place (as test_images measured for `run --image`)
PER_IMAGE = TINY.image_tokens + 3


def _merge(src: Path, dst: Path) -> None:
    """Add the models pulled under ``src`` to the store at ``dst`` (weights hard-linked)."""
    shutil.copytree(src / "hub", dst / "hub", symlinks=True, copy_function=os.link,
                    dirs_exist_ok=True)
    for manifest in (src / "home" / "state" / "manifests").glob("*.json"):
        (dst / "home" / "state" / "manifests" / manifest.name).write_text(
            manifest.read_text().replace(str(src), str(dst)))


@pytest.fixture(scope="module")
def vroot(pulled_root: Path, vision_root: Path,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M (no projector) and the tiny vision pair in one store."""
    root = copy_store(pulled_root, tmp_path_factory.mktemp("serve-images") / "root")
    _merge(vision_root, root)
    return root


def _stop(srv: Server) -> None:
    code = srv.stop()
    assert srv.stdout == b"", "serve wrote to stdout"
    assert code in (0, -signal.SIGTERM), srv.log()
    assert "Traceback" not in srv.log()


@pytest.fixture(scope="module")
def vserver(vroot: Path) -> Iterator[Server]:
    srv = Server(vroot, "--ctx", "1024", HF_HUB_OFFLINE="1")
    yield srv
    _stop(srv)


@pytest.fixture
def vclient(vserver: Server) -> openai.OpenAI:
    return vserver.client()


def _png(tmp_path: Path, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    return _image(tmp_path / f"img.{fmt.lower()}", fmt, size).read_bytes()


def _data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode()


def _ask(url: str, text: str = "What is in it?") -> Any:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


ARGS: dict[str, Any] = {"model": VNAME, "max_tokens": 3, "temperature": 0, "seed": 1}


class Refusal:
    def __init__(self, body: dict[str, Any]) -> None:
        self.message, self.param, self.code = body["message"], body["param"], body["code"]


def _refused(client: openai.OpenAI, messages: Any, **kw: Any) -> Refusal:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(messages=messages, **{**ARGS, **kw})
    assert exc.value.status_code == 400
    body: Any = exc.value.body
    assert set(body) == {"message", "type", "param", "code"}, body  # OpenAI's error shape
    assert body["type"] == "invalid_request_error" and "\n" not in body["message"]
    assert exc.value.code == body["code"] and exc.value.param == body["param"]
    return Refusal(body)


# ---- a data: URL image, whole and streamed ---------------------------------------------------
def test_an_image_adds_its_tokens_and_the_reply_comes(vclient: openai.OpenAI,
                                                      tmp_path: Path) -> None:
    text_only = vclient.chat.completions.create(
        messages=[{"role": "user", "content": "What is in it?"}], **ARGS)
    url = _data_url(_png(tmp_path))
    one = vclient.chat.completions.create(messages=_ask(url), **ARGS)
    assert one.usage is not None and text_only.usage is not None
    assert one.usage.prompt_tokens == text_only.usage.prompt_tokens + PER_IMAGE
    assert one.usage.completion_tokens == 3 and one.choices[0].message.content
    assert one.choices[0].finish_reason == "length"

    # two images, one as a plain string (as some clients send it), and a JPEG
    jpeg = _data_url(_png(tmp_path, fmt="JPEG"), "image/jpeg")
    two_msgs: Any = [{"role": "user", "content": [
        {"type": "image_url", "image_url": url}, {"type": "text", "text": "What is in it?"},
        {"type": "image_url", "image_url": {"url": jpeg, "detail": "low"}}]}]
    two = vclient.chat.completions.create(messages=two_msgs, **ARGS)
    assert two.usage is not None
    assert two.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 * PER_IMAGE

    # streamed: the same text and the same usage as whole (the same path)
    chunks = list(vclient.chat.completions.create(
        messages=_ask(url), stream=True, stream_options={"include_usage": True},
        **ARGS))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        one.choices[0].message.content)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == one.usage.prompt_tokens


def test_a_json_schema_holds_after_an_image(vclient: openai.OpenAI, tmp_path: Path) -> None:
    """The grammar, stops and reply parsing are the text path's (the image only changes how
    the prompt enters the cache): the random-weight model still writes schema-valid JSON."""
    schema = {"type": "object", "additionalProperties": False, "required": ["color"],
              "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}}}
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    r = vclient.chat.completions.create(
        messages=_ask(_data_url(_png(tmp_path)), "Which colour? JSON."),
        response_format=fmt, **{**ARGS, "max_tokens": 200})
    assert r.choices[0].finish_reason == "stop"
    assert json.loads(r.choices[0].message.content or "")["color"] in ("red", "green", "blue")


def test_serve_counts_the_prompt_as_run_image_does(vclient: openai.OpenAI, vroot: Path,
                                                   tmp_path: Path) -> None:
    """The same image and text through `run --image` and through serve: the same prompt."""
    png = _image(tmp_path / "a.png")
    run = Cli(make_env(vroot, HF_HUB_OFFLINE="1"), vroot)(
        "run", VNAME, "--json", "-n", "1", "--temperature", "0", "--image", str(png),
        "Describe it")
    assert run.returncode == 0, run.stderr
    served = vclient.chat.completions.create(
        messages=_ask(_data_url(png.read_bytes()), "Describe it"), **{**ARGS, "max_tokens": 1})
    assert served.usage is not None
    assert served.usage.prompt_tokens == json.loads(run.stdout)["usage"]["prompt_tokens"]


def test_text_cannot_stand_for_an_image(vclient: openai.OpenAI, tmp_path: Path) -> None:
    url = _data_url(_png(tmp_path))
    plain = vclient.chat.completions.create(messages=_ask(url, " two "), **ARGS)
    marked = vclient.chat.completions.create(
        messages=_ask(url, "<__media__> two <__media__>"), **ARGS)
    assert plain.usage is not None and marked.usage is not None
    assert marked.usage.prompt_tokens == plain.usage.prompt_tokens


# ---- refused, and the server keeps serving -------------------------------------------------
def test_a_bad_image_is_a_400_and_the_server_goes_on(vserver: Server, vclient: openai.OpenAI,
                                                     tmp_path: Path) -> None:
    good = _png(tmp_path)
    where = "messages[0].content[0].image_url"
    cases = [
        (_data_url(good[:60]), "is corrupt or truncated"),
        (_data_url(b"\x00" * 64), "is not a PNG, JPEG or WebP image"),
        (_data_url(_image(tmp_path / "x.gif", "GIF").read_bytes(), "image/gif"),
         "is not a PNG, JPEG or WebP image"),
        (_data_url(_bomb(tmp_path / "bomb.png", 10_000, 10_000).read_bytes()),
         "10000x10000 pixels; the limit is 50 megapixels"),
        ("data:image/png;base64,not base64!", "not valid base64"),
        (_data_url(good, "text/plain"), "not an image"),
    ]
    for url, message in cases:
        err = _refused(vclient, _ask(url))
        assert message in err.message and err.param == where and err.code == "invalid_image"
        assert err.message.startswith("image messages[0].content[0]")
    after = vclient.chat.completions.create(messages=_ask(_data_url(good)), **ARGS)
    assert after.choices[0].message.content and after.usage is not None


def test_remote_and_local_urls_are_refused_by_default(vclient: openai.OpenAI) -> None:
    err = _refused(vclient, _ask("http://127.0.0.1:9/a.png"))
    assert "--allow-image-urls" in err.message and err.code == "image_url_not_allowed"
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/a.png", "/etc/passwd"):
        err = _refused(vclient, _ask(url))
        assert err.code == "invalid_image_url" and "only data: URLs" in err.message, url


def test_requests_that_cannot_carry_images(vclient: openai.OpenAI, tmp_path: Path) -> None:
    url = _data_url(_png(tmp_path, (8, 8)))
    err = _refused(vclient, _ask(url), model=GEMMA)  # loaded or not, it has no projector
    assert err.message == f"model {GEMMA} has no vision projector: it cannot take images"
    assert err.code == "model_has_no_vision"

    err = _refused(vclient, _ask(url) * 17)  # per-request cap
    assert "17 images in one request; the limit is 16" in err.message

    messages: Any = [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": [
                         {"type": "image_url", "image_url": {"url": url}}]}]
    err = _refused(vclient, messages)
    assert "only user messages can carry images" in err.message and err.param == "messages.1"

    unknown: Any = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    err = _refused(vclient, unknown)
    assert err.message == ("messages.0.content: content[0]: parts of type 'input_audio' are not "
                           "supported (text and image_url are)")


# ---- --allow-image-urls ----------------------------------------------------------------------
class _Images(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_host(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server with /a.png (an image) and /bad.png (not one)."""
    _Images.files = {"/a.png": _png(tmp_path), "/bad.png": b"\x89PNG nope"}
    _Images.asked = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    thread.join()


def test_allow_image_urls_fetches_http_but_never_files(vroot: Path, image_host: str,
                                                       tmp_path: Path) -> None:
    srv = Server(vroot, "--ctx", "1024", "--allow-image-urls", HF_HUB_OFFLINE="1")
    try:
        client = srv.client()
        fetched = client.chat.completions.create(messages=_ask(f"{image_host}/a.png"), **ARGS)
        inline = client.chat.completions.create(
            messages=_ask(_data_url(_png(tmp_path))), **ARGS)
        assert _Images.asked == ["/a.png"]
        assert fetched.usage is not None and inline.usage is not None
        assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens  # the same image
        assert fetched.choices[0].message.content == inline.choices[0].message.content

        err = _refused(client, _ask(f"{image_host}/bad.png"))
        assert err.code == "invalid_image" and "bad.png" not in err.message  # named by place
        err = _refused(client, _ask(f"{image_host}/missing.png"))
        assert "the server answered 404" in err.message
        err = _refused(client, _ask("file:///etc/passwd"))
        assert err.code == "invalid_image_url"
    finally:
        _stop(srv)


def test_parallel_refuses_images_with_a_clear_400(vroot: Path, tmp_path: Path) -> None:
    srv = Server(vroot, "--ctx", "1024", "--parallel", "2", HF_HUB_OFFLINE="1")
    try:
        client = srv.client()
        err = _refused(client, _ask(_data_url(_png(tmp_path))))
        assert "not supported with --parallel 2" in err.message
        assert err.code == "unsupported_content"
        text = client.chat.completions.create(
            messages=[{"role": "user", "content": "hi"}], **ARGS)
        assert text.choices[0].message.content is not None  # text requests are served
    finally:
        _stop(srv)


# ---- the pipe to the model's process carries long lines (a request's images) whole ---------
def test_the_childs_line_reader_keeps_long_lines_whole() -> None:
    from llmrun.server.child import _Lines

    read, write = os.pipe()
    big = b"x" * (5 << 20)
    def send() -> None:
        os.write(write, b"a\nb" + big + b"\nc\n")
        os.close(write)

    writer = threading.Thread(target=send)
    writer.start()
    lines = _Lines(read)
    got = [lines.next(), lines.next(), lines.next(), lines.next()]
    writer.join()
    os.close(read)
    assert got[0] == "a" and got[1] == "b" + big.decode() and got[2:] == ["c", None]



def test_a_stream_stopped_early_leaves_the_projector_models_pipe_in_step(
        vserver: Server, vclient: openai.OpenAI) -> None:
    """A model with its projector generates one request at a time through its own context,
    the child streaming pieces until the end or the server's stop: a stream closed after three
    chunks ends there, and later answers are still their own (no piece of the stopped stream
    read as the next request's reply)."""
    args: dict[str, Any] = {"model": VNAME, "prompt": "Hi", "max_tokens": 8, "temperature": 0}
    before = vclient.completions.create(**args).choices[0].text
    for _ in range(2):
        line = _stop_a_stream_early(vserver, vclient, VNAME, max_tokens=1000)
        assert "status=200" in line and _tokens(line) < 1000, line  # (a tiny model is fast)
        assert vclient.completions.create(**args).choices[0].text == before
