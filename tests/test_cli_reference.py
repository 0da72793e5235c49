"""docs/reference.md is generated from the app (scripts/gen_cli_reference.py) and stays true:
`pytest` fails when it is stale, when a registered command is missing from it, and when a flag
that `--help` shows is not in it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import InProcess, make_env

from llmrun.cli import app

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gen_cli_reference.py"
REFERENCE = REPO / "docs" / "reference.md"
HEADING = re.compile(r"^#{2,4} `(llmrun(?: [^`]+)?)`$", re.MULTILINE)


def _script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=REPO, env=make_env(tmp_path, **env), timeout=120)


def _plain(value: Any) -> Any:
    """A Typer setting left unset is a DefaultPlaceholder holding the default."""
    return value.value if isinstance(value, typer.models.DefaultPlaceholder) else value


def _registered(group: typer.Typer, prefix: str = "llmrun") -> Iterator[tuple[str, bool]]:
    """Every command registered on the app, from its registration records (not from the walk
    the generator does): (`llmrun cache ls`, hidden)."""
    for info in group.registered_commands:
        assert info.callback is not None
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        yield f"{prefix} {name}", bool(info.hidden)
    for sub in group.registered_groups:
        inst = sub.typer_instance
        assert inst is not None
        name = _plain(sub.name) or _plain(inst.info.name)
        if name is None:
            callback = _plain(sub.callback) or _plain(inst.info.callback)
            name = typer.main.get_command_name(callback.__name__)
        hidden = bool(_plain(sub.hidden) or _plain(inst.info.hidden))
        yield f"{prefix} {name}", hidden
        for path, sub_hidden in _registered(inst, f"{prefix} {name}"):
            yield path, hidden or sub_hidden


def _sections(text: str) -> dict[str, str]:
    """The reference's sections by command path."""
    marks = list(HEADING.finditer(text))
    return {m.group(1): text[m.end():(marks[i + 1].start() if i + 1 < len(marks) else None)]
            for i, m in enumerate(marks)}


@pytest.mark.slow  # runs the generator script
def test_reference_is_current(tmp_path: Path) -> None:
    done = _script(tmp_path, "--check")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == ""


def test_every_registered_command_has_its_section() -> None:
    commands = dict(_registered(app))
    assert "llmrun run" in commands and "llmrun cache ls" in commands  # the walk works
    visible = {path for path, hidden in commands.items() if not hidden}
    hidden = {path for path, hidden in commands.items() if hidden} - visible
    assert "llmrun ls" in hidden  # the alias of `list`
    sections = set(_sections(REFERENCE.read_text(encoding="utf-8")))
    assert visible - sections == set(), "commands missing from docs/reference.md"
    assert sections - visible == {"llmrun"}, "sections for no visible command"
    assert hidden & sections == set()


def test_every_flag_that_help_shows_is_in_its_section(inproc: InProcess) -> None:
    sections = _sections(REFERENCE.read_text(encoding="utf-8"))
    assert len(sections) > 10
    for path, section in sections.items():
        helped = inproc(*path.split()[1:], "--help")
        assert helped.returncode == 0, helped.stderr
        # Option lines are indented by two spaces; their names end at the first wide gap.
        names = [re.split(r" {2,}", line.strip())[0]
                 for line in helped.stdout.splitlines() if line.startswith("  -")]
        flags = {flag for part in names for flag in re.findall(r"(?<![\w-])--?[\w-]+", part)}
        assert {"-h", "--help"} <= flags, path
        documented = set(re.findall(r"(?<![\w-])--?[\w-]+", section))
        assert flags - documented == set(), f"{path}: flags missing from docs/reference.md"
        usage = helped.stdout.splitlines()[0].removeprefix("Usage: ")
        assert f"```\n{usage}\n```" in section, path


@pytest.mark.slow  # runs the generator script
def test_stale_or_missing_file_fails_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "reference.md"
    regenerate = f"python scripts/gen_cli_reference.py --output {out}"
    missing = _script(tmp_path, "--check", "--output", str(out))
    assert missing.returncode == 1
    assert missing.stderr == f"{out} does not exist: run {regenerate}\n"
    assert not out.exists()  # --check writes nothing

    written = _script(tmp_path, "--output", str(out))
    assert written.returncode == 0, written.stderr
    assert _script(tmp_path, "--check", "--output", str(out)).returncode == 0

    out.write_text(out.read_text(encoding="utf-8").replace("`llmrun serve`", "`llmrun srv`"),
                   encoding="utf-8")
    stale_text = out.read_text(encoding="utf-8")
    stale = _script(tmp_path, "--check", "--output", str(out))
    assert stale.returncode == 1
    assert stale.stderr == f"{out} is stale: run {regenerate}\n"
    assert stale.stdout == ""
    assert out.read_text(encoding="utf-8") == stale_text


@pytest.mark.slow  # runs the generator script
def test_output_does_not_depend_on_the_terminal_or_environment(tmp_path: Path) -> None:
    plain, odd = tmp_path / "plain.md", tmp_path / "odd.md"
    assert _script(tmp_path, "--output", str(plain)).returncode == 0
    done = _script(tmp_path, "--output", str(odd), COLUMNS="30", LINES="5", TERM="dumb",
                   FORCE_COLOR="1", TYPER_USE_RICH="1", LLMRUN_CTX="64",
                   LLMRUN_HOST="0.0.0.0", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert done.returncode == 0, done.stderr
    assert odd.read_text(encoding="utf-8") == plain.read_text(encoding="utf-8")
