"""The CLI shell: version, help, start-up cost, the error boundary and exit codes."""

from __future__ import annotations

import subprocess
import sys

from conftest import Cli, InProcess


def test_version_and_help(inproc: InProcess) -> None:
    version = inproc("--version")
    assert version.returncode == 0 and version.stdout.startswith("llmrun ")
    for flag in ("-h", "--help"):
        helped = inproc(flag)
        assert helped.returncode == 0
        for command in ("run", "chat", "pull", "list", "show", "rm", "serve", "catalog",
                        "import", "verify", "prune", "doctor", "bench"):
            assert f"  {command} " in helped.stdout
        text = " ".join(helped.stdout.split())
        assert ("Exit codes: 0 ok, 1 error, 2 usage, 3 model not found, 4 download/network, "
                "5 model load or context, 130 interrupted.") in text


def test_help_does_not_import_heavy_libraries(cli: Cli) -> None:
    code = ("import sys\nsys.argv = ['llmrun', '--help']\nimport llmrun.cli as c\n"
            "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
            "heavy = {'llama_cpp', 'huggingface_hub', 'fastapi', 'uvicorn', 'rich', 'pydantic'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], env=cli.env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stderr.strip() == "[]"


def test_usage_errors_exit_2_without_traceback(inproc: InProcess) -> None:
    for args in (("no-such-command",), ("run",), ("pull",), ("run", "x", "--temperature",
                                                             "hot")):
        proc = inproc(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_setting_is_one_line(inproc: InProcess) -> None:
    """Only a command that reads the bad setting fails, with one line naming it."""
    unaffected = inproc("list", env={"LLMRUN_PORT": "abc"})
    assert unaffected.returncode == 0, unaffected.stderr
    proc = inproc("serve", env={"LLMRUN_PORT": "abc"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: invalid LLMRUN_PORT='abc': Input should be a valid integer, unable to parse "
        "string as an integer"]


def test_debug_shows_a_traceback(cli: Cli) -> None:
    quiet = cli("verify", "no-such-model:1b")
    assert quiet.returncode == 3 and "Traceback" not in quiet.stderr
    loud = cli("verify", "no-such-model:1b", env={"LLMRUN_DEBUG": "1"})
    assert loud.returncode == 3 and "Traceback" in loud.stderr


def test_a_mistyped_tag_gets_did_you_mean(inproc: InProcess) -> None:
    proc = inproc("run", "gemma3:270m-bse", "--no-pull", "hi")
    assert proc.returncode == 3
    assert "did you mean gemma3:270m-base" in proc.stderr


def test_catalog_with_no_match_says_so(inproc: InProcess) -> None:
    proc = inproc("catalog", "zzz-no-such-model")
    assert proc.returncode == 3 and proc.stdout == ""
    assert "no model in the registry matches 'zzz-no-such-model'" in proc.stderr
    listed = inproc("catalog")  # the hint's command works
    assert listed.returncode == 0 and "gemma3:270m-base" in listed.stdout



def test_a_missing_local_file_is_not_called_damaged(inproc: InProcess) -> None:
    proc = inproc("run", str(inproc.root / "missing.gguf"), "--raw", "hi")
    assert proc.returncode == 3
    assert proc.stderr.startswith("Error: model file not found:")
    assert "damaged" not in proc.stderr and "Hint" not in proc.stderr
