"""`llmrun ps` and `llmrun stop` against a real `llmrun serve` with the real model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GEMMA, Cli, copy_store, make_env
from test_serve import Server


@pytest.fixture
def ps_root(pulled_root: Path, tmp_path: Path) -> Path:
    return copy_store(pulled_root, tmp_path / "root")


@pytest.fixture
def ps_server(ps_root: Path) -> Iterator[Server]:
    srv = Server(ps_root, "--ctx", "512", "--api-key", "sekrit")
    yield srv
    srv.stop()


def _cli(root: Path, srv: Server) -> Cli:
    return Cli(make_env(root, LLMRUN_API_KEY="sekrit"), root)


def test_ps_shows_what_is_loaded_and_stop_unloads_it(ps_root: Path, ps_server: Server) -> None:
    from openai import OpenAI

    cli = _cli(ps_root, ps_server)
    where = ("--endpoint", ps_server.url)
    assert json.loads(cli("ps", *where, "--json").stdout) == []
    client = OpenAI(base_url=ps_server.url + "/v1", api_key="sekrit", max_retries=0)
    client.completions.create(model=GEMMA, prompt="Hi", max_tokens=2)
    [model] = json.loads(cli("ps", *where, "--json").stdout)
    assert (model["name"], model["state"], model["running"], model["queued"]) == (
        GEMMA, "ready", 0, 0)
    assert model["parallel"] == 4  # serve's default: as many as memory allows, up to 4
    assert model["memory"] > 100 * 2**20  # the model's own process
    assert model["idle_s"] >= 0 and 0 < model["unloads_in_s"] <= 300
    table = cli("ps", *where).stdout.splitlines()
    assert table[0].split("\t")[:3] == ["NAME", "STATE", "RUNNING"] and GEMMA in table[1]
    proc = cli("stop", GEMMA, *where)
    assert proc.returncode == 0 and f"unloaded {GEMMA}" in proc.stderr
    assert json.loads(cli("ps", *where, "--json").stdout) == []
    again = cli("stop", GEMMA, *where)
    assert again.returncode == 3 and "is not loaded" in again.stderr


def test_stop_ends_a_running_stream_with_a_reason(ps_root: Path, ps_server: Server) -> None:
    import openai

    cli = _cli(ps_root, ps_server)
    client = openai.OpenAI(base_url=ps_server.url + "/v1", api_key="sekrit", max_retries=0)
    stream = client.completions.create(model=GEMMA, prompt="Once upon a time",
                                       max_tokens=400, temperature=0, stream=True)
    next(iter(stream))  # it is generating
    assert cli("stop", GEMMA, "--endpoint", ps_server.url).returncode == 0
    with pytest.raises(openai.APIError, match="was unloaded"):
        for _ in stream:
            pass
    # the next request loads the model again
    assert client.completions.create(model=GEMMA, prompt="Hi", max_tokens=2).choices


def test_ps_needs_the_key_and_a_server(ps_root: Path, ps_server: Server, tmp_path: Path) -> None:
    keyless = Cli(make_env(ps_root), ps_root)
    proc = keyless("ps", "--endpoint", ps_server.url)
    assert proc.returncode == 4 and "--api-key" in proc.stderr
    assert keyless("ps", "--endpoint", ps_server.url, "--api-key", "sekrit").returncode == 0
    down = keyless("ps", "--endpoint", "http://127.0.0.1:9")
    assert down.returncode == 4 and "cannot reach llmrun serve" in down.stderr
    # the default address is the one `serve` uses: LLMRUN_HOST and LLMRUN_PORT
    env = Cli(make_env(ps_root, LLMRUN_PORT=str(ps_server.port), LLMRUN_API_KEY="sekrit"),
              ps_root)
    assert env("ps", "--json").returncode == 0


def test_metrics_in_prometheus_text(ps_root: Path, ps_server: Server) -> None:
    import httpx
    from openai import OpenAI

    assert httpx.get(ps_server.url + "/metrics", timeout=30).status_code == 401
    client = OpenAI(base_url=ps_server.url + "/v1", api_key="sekrit", max_retries=0)
    client.completions.create(model=GEMMA, prompt="Hi", max_tokens=3, temperature=0)
    resp = httpx.get(ps_server.url + "/metrics", timeout=30,
                     headers={"Authorization": "Bearer sekrit"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in resp.text.splitlines() if line and not line.startswith("#")}
    assert values['llmrun_requests_total{route="/v1/completions",status="200"}'] == 1
    assert values["llmrun_completion_tokens_total"] == 3
    assert values["llmrun_models_loaded"] == 1
    assert values[f'llmrun_running{{model="{GEMMA}"}}'] == 0
    assert values[f'llmrun_model_memory_bytes{{model="{GEMMA}"}}'] > 100 * 2**20
