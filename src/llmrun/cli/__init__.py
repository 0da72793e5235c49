"""The command line: wiring and the one error boundary. Commands live one per module."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .. import __version__
from ..errors import LlmrunError
from ..exit_codes import ExitCode
from . import output
from .bench import bench_cmd
from .cache import cache_app
from .catalog import catalog_cmd
from .chat import chat_cmd
from .doctor import doctor_cmd
from .embed import embed_cmd
from .import_ import import_cmd
from .list_ import list_cmd
from .outdated import outdated_cmd
from .prune import prune_cmd
from .ps import ps_cmd, stop_cmd
from .pull import pull_cmd
from .rm import rm_cmd
from .run import run_cmd
from .serve import serve_cmd
from .show import show_cmd
from .verify import verify_cmd

app = typer.Typer(
    name="llmrun",
    help="Run open large language models locally.",
    epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 model not found, 4 download/network, "
           "5 model load or context, 130 interrupted. `llmrun doctor` checks this machine.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        output.write(f"llmrun {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Run open large language models locally. Exit codes: 0 ok, 1 error, 2 usage,
    3 model not found, 4 download/network, 5 model load or context, 130 interrupted."""


app.command("run")(run_cmd)
app.command("chat")(chat_cmd)
app.command("embed")(embed_cmd)
app.command("pull")(pull_cmd)
app.command("list")(list_cmd)
app.command("ls", hidden=True)(list_cmd)
app.command("show")(show_cmd)
app.command("rm")(rm_cmd)
app.command("catalog")(catalog_cmd)
app.command("import")(import_cmd)
app.command("verify")(verify_cmd)
app.command("outdated")(outdated_cmd)
app.command("prune")(prune_cmd)
app.command("serve")(serve_cmd)
app.command("ps")(ps_cmd)
app.command("stop")(stop_cmd)
app.add_typer(cache_app, name="cache")
app.command("doctor")(doctor_cmd)
app.command("bench")(bench_cmd)

def _debug() -> bool:
    return os.environ.get("LLMRUN_DEBUG", "").lower() in ("1", "true", "yes")


def main() -> None:
    """Entry point: run the app and map every failure to one line and an exit code."""
    code: int = ExitCode.OK
    from .context import fresh

    fresh()  # this invocation's settings, registry and store, made when first needed
    from . import complete

    if head := complete.bash_colon_head():  # a Tab in bash after `gemma3:`
        complete.trimmed(lambda: app(standalone_mode=False, prog_name="llmrun"), head)
    if _debug():  # llmrun's own debug log (serve has its own handler)
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("llmrun: %(message)s"))
        logging.getLogger("llmrun").addHandler(handler)
        logging.getLogger("llmrun").setLevel(logging.DEBUG)
    try:
        result = app(standalone_mode=False, prog_name="llmrun")
        code = result if isinstance(result, int) else ExitCode.OK
    except LlmrunError as exc:
        if _debug():
            import traceback

            traceback.print_exc()
        output.error(exc.message, exc.hint)
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors from the parser
        exc.show()  # type: ignore[attr-defined]
        code = getattr(exc, "exit_code", ExitCode.USAGE)
    except (typer.Abort, KeyboardInterrupt):
        output.err().print()
        code = ExitCode.INTERRUPTED
    except (output.OutputClosed, BrokenPipeError):
        code = _quiet_broken_pipe()
    except Exception as exc:
        if _debug():
            raise
        output.error(f"unexpected {type(exc).__name__}: {exc}".splitlines()[0][:300],
                     "set LLMRUN_DEBUG=1 for a traceback")
        code = ExitCode.ERROR
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        code = _quiet_broken_pipe() if code == ExitCode.OK else code
    sys.exit(code)


def _quiet_broken_pipe() -> int:
    """`llmrun run … | head -c1`: stop quietly, with no 'Exception ignored' line at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return ExitCode.OK
