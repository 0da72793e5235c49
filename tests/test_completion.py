"""Shell completion (Typer's own), with model names: driven through Typer's completion
environment variables for each shell, and through a real bash reading keystrokes."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pexpect
from conftest import Cli

from llmrun import tiny_model


def _pulled_tiny(cli: Cli, tmp_path: Path, name: str = "mytiny:1b") -> None:
    path = tmp_path / "tiny.gguf"
    tiny_model.write(path, ["F16"])
    done = cli("import", str(path), "--name", name, "--link")
    assert done.returncode == 0, done.stderr


def _complete(cli: Cli, shell: str, line: str) -> list[str]:
    """What Typer's completion prints for `line` (the cursor at its end)."""
    env = {"_LLMRUN_COMPLETE": f"complete_{shell}"}
    if shell == "bash":  # as Typer's bash script passes them: words as bash split them,
        # joined by IFS, which the script sets to a newline
        words = re.findall(r"[^\s:]+|:", line) + ([""] if line.endswith(" ") else [])
        env |= {"COMP_WORDS": "\n".join(words), "COMP_CWORD": str(len(words) - 1)}
    else:
        env |= {"_TYPER_COMPLETE_ARGS": line}
        if shell == "fish":
            env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    done = cli(env=env)
    assert done.returncode == 0, done.stderr
    return [line.split("\t")[0] for line in done.stdout.splitlines()]  # fish: name<TAB>help


def test_model_names_complete_in_each_shell(cli: Cli, tmp_path: Path) -> None:
    _pulled_tiny(cli, tmp_path)
    # registry names and aliases, and pulled models, for commands that take any model
    assert {"qwen3:1.7b", "qwen3:4b"} <= set(_complete(cli, "fish", "llmrun run qwen3:"))
    assert "mytiny:1b" in _complete(cli, "fish", "llmrun chat my")
    assert "gemma3:270m-base" in _complete(cli, "fish", "llmrun pull gemma3")
    zsh = "\n".join(_complete(cli, "zsh", "llmrun show gemma3:2"))
    assert '"gemma3\\\\:270m-base"' in zsh
    # only pulled models where only they make sense
    assert _complete(cli, "fish", "llmrun rm ") == ["mytiny:1b"]
    assert not any(_complete(cli, "fish", "llmrun verify q"))
    # the flags people have in their fingers from llama.cpp complete too
    assert {"--temp", "--ctx-size", "-ngl"} <= set(_complete(cli, "fish", "llmrun run x -"))


def test_bash_gets_the_part_after_the_colon(cli: Cli, tmp_path: Path) -> None:
    """bash splits `qwen3:0` at the colon and replaces only `0`: the completion is `0.6b`."""
    _pulled_tiny(cli, tmp_path)
    assert _complete(cli, "bash", "llmrun run qwen3:0") == ["0.6b"]
    assert {"0.6b", "4b"} <= set(_complete(cli, "bash", "llmrun run qwen3:"))
    assert _complete(cli, "bash", "llmrun rm myt") == ["mytiny:1b"]
    assert "qwen3:4b" in _complete(cli, "bash", "llmrun run qw")


def test_a_broken_user_registry_still_completes_pulled_models(cli: Cli, tmp_path: Path) -> None:
    _pulled_tiny(cli, tmp_path)
    (cli.root / "home" / "models.yaml").write_text("schema: 1\nmodels: [not, a, mapping]\n")
    assert _complete(cli, "fish", "llmrun run my") == ["mytiny:1b"]


def _bash(cli: Cli, tmp_path: Path) -> pexpect.spawn:
    bindir = Path(sys.executable).parent
    assert (bindir / "llmrun").exists(), "the llmrun script sits next to the interpreter"
    env = {**cli.env, "HOME": str(tmp_path), "PATH": f"{bindir}:{os.environ['PATH']}",
           "PS1": "$ ", "TERM": "dumb", "INPUTRC": "/dev/null"}
    bash = shutil.which("bash")
    assert bash is not None
    child = pexpect.spawn(bash, ["--norc", "--noprofile"], env=env, encoding="utf-8",
                          timeout=60, dimensions=(40, 200))
    child.expect_exact("$ ")
    return child


def test_a_real_bash_completes_a_model_name(cli: Cli, tmp_path: Path) -> None:
    """The documented install (`llmrun --install-completion bash`), then Tab in a real bash:
    the line ends up with the whole name, colon and all."""
    _pulled_tiny(cli, tmp_path)
    installed = cli("--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert installed.returncode == 0, installed.stderr
    child = _bash(cli, tmp_path)
    child.sendline("source ~/.bashrc")  # what a new shell does
    child.expect_exact("$ ")
    child.send("llmrun show qwen3:0\t")
    child.send("\x01echo \r")  # Ctrl-A, then print the completed line instead of running it
    child.expect(r"llmrun show (\S+)\s*\r\n")
    assert child.match.group(1) == "qwen3:0.6b"
    child.expect_exact("$ ")
    for typed in ("myt", "mytiny:"):  # before the colon, and just after it
        child.send(f"llmrun rm {typed}\t")
        child.send("\x01echo \r")
        child.expect(r"llmrun rm (\S+)\s*\r\n")
        assert child.match.group(1) == "mytiny:1b"
        child.expect_exact("$ ")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_a_tab_does_not_load_the_engine(cli: Cli) -> None:
    """A completion runs on every Tab: registry and store names only, never llama.cpp, the
    Hub client or the server."""
    code = ("import os, sys\nsys.argv = ['llmrun']\nimport llmrun.cli as c\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
            "heavy = {'llama_cpp', 'huggingface_hub', 'fastapi', 'uvicorn', 'numpy'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}), file=sys.stderr)")
    env = {**cli.env, "_LLMRUN_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS":
           "llmrun run qwen3:", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert "qwen3:4b" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
