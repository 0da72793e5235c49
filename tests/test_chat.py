"""`llmrun chat` driven through a real pseudo-terminal (pexpect), and as a pipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pexpect
from conftest import GEMMA, Cli

PROMPT = ">>>"  # prompt_toolkit draws the trailing space as a cursor move
INPUT_DONE = "\x1b[?2004l"  # prompt_toolkit ends bracketed paste when it returns the input


def _spawn(cli: Cli, *args: str, **extra_env: str) -> pexpect.spawn:
    env = {**cli.env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "120",
           **extra_env}
    child = pexpect.spawn(sys.executable, ["-m", "llmrun", "chat", GEMMA, *args], env=env,
                          encoding="utf-8", timeout=60, dimensions=(40, 120))
    child.expect_exact(PROMPT)
    return child


def test_chat_turns_and_slash_commands(private_gemma_cli: Cli, tmp_path: Path) -> None:
    cli = private_gemma_cli
    child = _spawn(cli, "--temperature", "0", "-n", "24")
    child.sendline("/show")
    child.expect("context: +0 of 4096 tokens used")
    child.expect("template: +registry format gemma")
    child.expect_exact(PROMPT)
    child.sendline("What is the capital of France?")
    child.expect_exact(PROMPT)
    reply = child.before
    assert reply.strip()
    child.sendline("/show")
    child.expect(r"context: +(\d+) of 4096")
    assert int(child.match.group(1)) > 10
    child.expect_exact(PROMPT)
    child.sendline("/set temperature 0.5")
    child.expect_exact("temperature = 0.5")
    child.sendline("/set nonsense 1")
    child.expect_exact("unknown parameter")
    saved = tmp_path / "conv.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("saved 2 message(s)")
    child.sendline("/clear")
    child.expect_exact("conversation cleared")
    child.sendline(f"/load {saved}")
    child.expect_exact("loaded 2 message(s)")
    child.sendline("/stats")
    child.expect_exact("eval rate")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == "What is the capital of France?"
    history = (cli.root / "home" / "chat_history").read_text()
    assert "What is the capital of France?" in history


def test_chat_reads_ahead_while_the_message_is_typed(private_gemma_cli: Cli) -> None:
    """Keystrokes reach the read-ahead thread: once typing pauses, the whole prompt is in the
    KV cache before Enter, and Enter evaluates nothing. LLMRUN_DEBUG's log line is the signal
    that the read-ahead is done; -v's timing block counts what was evaluated after Enter."""
    child = _spawn(private_gemma_cli, "-v", "--temperature", "0", "-n", "8", LLMRUN_DEBUG="1")
    for message in ("What is the capital of France?", "And of Italy?"):
        child.send(message)  # typed, Enter not pressed yet
        child.expect(r"read ahead the whole message: \d+ new of (\d+) tokens")
        ahead = int(child.match.group(1))
        child.send("\r")
        child.expect(r"prompt eval count: +(\d+) token\(s\) \((\d+) evaluated\)")
        assert int(child.match.group(1)) == ahead
        assert int(child.match.group(2)) == 0
        child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_not_the_session(private_gemma_cli: Cli) -> None:
    child = _spawn(private_gemma_cli, "-n", "3000", "--temperature", "1.0")
    child.sendline("Tell me a very long story about dragons.")
    child.expect_exact("\x1b[?2004l")  # prompt_toolkit has handed the terminal back
    child.expect(r"\w\w")  # and the reply is streaming
    child.sendintr()
    child.expect_exact("(reply stopped)")
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect_exact("2 message(s)")  # the partial reply was kept
    child.expect_exact(PROMPT)
    child.sendintr()
    child.expect_exact("Ctrl-C again")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130


def test_ctrl_d_exits_cleanly_and_continue_resumes(private_gemma_cli: Cli) -> None:
    child = _spawn(private_gemma_cli, "--temperature", "0", "-n", "8")
    child.sendline("Remember the word banana.")
    child.expect_exact(INPUT_DONE)  # the message was taken; then the next prompt, after the reply
    child.expect_exact(PROMPT)  # (the prompt's redraws while typing come before INPUT_DONE)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    again = _spawn(private_gemma_cli, "--continue")
    again.sendline("/stats")
    again.expect_exact("2 message(s)")
    again.sendline("/exit")
    again.expect(pexpect.EOF)


def test_chat_reads_one_message_per_line_from_a_pipe(gemma_cli: Cli) -> None:
    proc = gemma_cli("chat", GEMMA, "--temperature", "0", "-n", "10",
                     input="Hello there\nWhat is 2+2?\n")
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.split("\n\n")
    assert len(answers) == 2 and all(a.strip() for a in answers)
    assert "\x1b[" not in proc.stdout  # no terminal codes when not a terminal


def test_context_full_drops_oldest_turns_with_notice(gemma_cli: Cli) -> None:
    lines = "\n".join(f"Message number {i}: " + "word " * 40 for i in range(6))
    proc = gemma_cli("chat", GEMMA, "--ctx", "256", "--temperature", "0", "-n", "8",
                     "--system", "Be brief.", input=lines + "\n")
    assert proc.returncode == 0, proc.stderr
    assert "dropped the" in proc.stderr and "oldest exchange" in proc.stderr


def test_help_and_system_prompt_in_a_terminal(private_gemma_cli: Cli) -> None:
    child = _spawn(private_gemma_cli, "--temperature", "0", "-n", "8")
    child.sendline("/help")
    for command in ("/bye", "/clear", "/system TEXT", "/set PARAM VALUE", "/show", "/save FILE",
                    "/load FILE", "/stats"):
        child.expect_exact(command)
    child.expect_exact(PROMPT)
    child.sendline("/system You answer like a pirate.")
    child.expect_exact("system prompt set")
    child.expect_exact(PROMPT)
    child.sendline("/show")
    child.expect(r"context: +(\d+) of 4096 tokens used")
    assert int(child.match.group(1)) > 5  # the system prompt counts before any message
    child.expect_exact("system:      You answer like a pirate.")
    child.expect_exact(PROMPT)
    child.sendline("Hello")
    child.expect_exact(PROMPT)
    child.sendline("/system")
    child.expect_exact("system prompt cleared")
    child.sendline("/save " + str(private_gemma_cli.root / "pirate.json"))
    child.expect_exact("saved 2 message(s)")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads((private_gemma_cli.root / "pirate.json").read_text())
    assert saved["system"] is None and saved["messages"][0]["content"] == "Hello"


def test_markdown_is_rendered_on_a_terminal(private_gemma_cli: Cli) -> None:
    """The screen, as a terminal emulator (pyte) draws it, shows the reply's Markdown rendered:
    bold text in bold, without its asterisks. The base model echoes its input, so a message
    with Markdown in it gets a reply with Markdown in it (checked in the saved transcript)."""
    import io

    import pyte

    child = _spawn(private_gemma_cli, "--markdown", "--temperature", "0", "-n", "8")
    screen_log = io.StringIO()
    child.logfile_read = screen_log
    child.sendline("**Bananas** are yellow.")
    child.expect_exact(PROMPT)
    saved = private_gemma_cli.root / "md.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("saved 2 message(s)")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    reply = json.loads(saved.read_text())["messages"][1]["content"]
    assert "**Bananas**" in reply  # the premise: the model's own text has Markdown in it
    screen = pyte.Screen(120, 40)
    pyte.Stream(screen).feed(screen_log.getvalue())
    rendered = [(y, line) for y, line in enumerate(screen.display)
                if "Bananas are yellow" in line and "**" not in line]
    assert rendered, "\n".join(screen.display)
    y, line = rendered[0]
    x = line.index("Bananas")
    assert all(screen.buffer[y][x + i].bold for i in range(len("Bananas")))
    assert not screen.buffer[y][x + len("Bananas are ")].bold  # only the marked word


def test_markdown_flag_is_plain_text_in_a_pipe(gemma_cli: Cli) -> None:
    args = ("chat", GEMMA, "--temperature", "0", "-n", "8")
    plain = gemma_cli(*args, input="**Bananas** are yellow.\n")
    marked = gemma_cli(*args, "--markdown", input="**Bananas** are yellow.\n")
    assert marked.returncode == 0, marked.stderr
    assert "**Bananas**" in marked.stdout and marked.stdout == plain.stdout
    assert "\x1b[" not in marked.stdout


def test_chat_without_a_template_names_a_command_that_works(gemma_cli: Cli,
                                                            gemma_file: Path) -> None:
    proc = gemma_cli("chat", str(gemma_file), input="hi\n")
    assert proc.returncode == 5
    assert f"Error: {gemma_file} has no chat template, which chat needs" in proc.stderr
    hint = f'plain completion needs none: llmrun run {gemma_file} --raw "TEXT"'
    assert hint in proc.stderr
    ran = gemma_cli("run", str(gemma_file), "--raw", "-n", "3", "TEXT")
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
