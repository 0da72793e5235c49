"""`llmrun ps` and `llmrun stop MODEL`: a running `llmrun serve`'s loaded models."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, gen, output


def ps_cmd(
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="the server (default: LLMRUN_ENDPOINT, else "
        "http://LLMRUN_HOST:LLMRUN_PORT)")] = None,
    api_key: gen.ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Show the models a running `llmrun serve` has loaded: requests running and queued,
    memory, and when each unloads."""
    from .. import admin

    s = common.settings()
    models = admin.ps(admin.server_url(s, endpoint), api_key or s.api_key)
    if as_json:
        output.write_json(models)
        return

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}s"

    output.table(["NAME", "STATE", "RUNNING", "PARALLEL", "QUEUED", "MEMORY", "IDLE",
                  "UNLOADS IN"],
                 [[m["name"], m["state"], str(m["running"]), str(m.get("parallel", 1)),
                   str(m["queued"]),
                   output.human_size(m["memory"]), seconds(m["idle_s"]),
                   "never" if m["idle_s"] is not None and m["unloads_in_s"] is None
                   else seconds(m["unloads_in_s"])] for m in models], right={2, 3, 4, 5})


def stop_cmd(
    model: Annotated[str, typer.Argument(help="a model the server has loaded")],
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="the server (default as for `llmrun ps`)")] = None,
    api_key: gen.ApiKey = None,
) -> None:
    """Unload a model from a running `llmrun serve` now (its requests end with a 503)."""
    from .. import admin

    s = common.settings()
    name = admin.stop(admin.server_url(s, endpoint), api_key or s.api_key, model)
    output.info(f"unloaded {name}")
