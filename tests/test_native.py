"""No native crash reaches the user (reliability.md T34, T35): the engine self-test, its
fallbacks and what it remembers; `doctor` and `bench`.

On machines whose llama.cpp does not crash, the self-test's child is made to die by SIGSEGV
with the test hook LLMRUN_TEST_NATIVE_FAULT (native_probe.py), so the fallback paths run on
every CI machine; on an AMX Xeon the real crash takes the same path."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import gguf
import pexpect
import pytest
from conftest import GEMMA, Cli, make_env
from test_serve import Server

from llmrun import gguf_file, native_check, tiny_model

PROMPT = ("--raw", "--temperature", "0", "-n", "8", "The three primary colors are")


def _state(cli: Cli) -> dict[str, object]:
    data = json.loads((cli.root / "home" / "state" / native_check.STATE_FILE).read_text())
    assert isinstance(data, dict)
    return data


def _one_check(cli: Cli) -> dict[str, object]:
    checks = _state(cli)["checks"]
    assert isinstance(checks, dict) and len(checks) == 1, checks
    check = next(iter(checks.values()))
    assert isinstance(check, dict)
    return check


def test_run_falls_back_when_the_extra_buffer_types_crash(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    fault = {"LLMRUN_TEST_NATIVE_FAULT": "extra-bufts"}
    (cli.root / "home" / "state" / native_check.STATE_FILE).unlink(missing_ok=True)
    first = cli("run", GEMMA, *PROMPT, env=fault)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip(), "no completion"
    notices = [ln for ln in first.stderr.splitlines() if ln.startswith("Notice:")]
    assert len(notices) == 1, first.stderr
    assert "SIGSEGV" in notices[0] and "without its extra CPU buffer types" in notices[0]
    assert "Segmentation fault" not in first.stderr and "Traceback" not in first.stderr
    check = _one_check(cli)
    assert check["config"] == {"extra_bufts": False, "preload": None}
    assert [a["outcome"] for a in check["attempts"]] == ["SIGSEGV", "ok"]  # type: ignore[index]
    state_file = cli.root / "home" / "state" / native_check.STATE_FILE
    before = state_file.stat().st_mtime_ns
    again = cli("run", GEMMA, *PROMPT, env=fault)  # remembered: no notice, no second check
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert "Notice:" not in again.stderr
    assert state_file.stat().st_mtime_ns == before


def test_nothing_works_is_one_line_and_exit_5(private_gemma_cli: Cli) -> None:
    proc = private_gemma_cli("run", GEMMA, *PROMPT, env={"LLMRUN_TEST_NATIVE_FAULT": "always"})
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("Error: the native engine (llama.cpp) crashed (SIGSEGV)"), lines
    assert lines[1:] == ["Hint: run `llmrun doctor` for the cause and the fix"]


def test_a_preloaded_system_libstdcxx_is_found_and_remembered(private_gemma_cli: Cli) -> None:
    lib = native_check.system_libstdcxx()
    assert lib is not None, "these tests run on Linux with the system's libstdc++"
    cli = private_gemma_cli
    env = {"LLMRUN_TEST_NATIVE_FAULT": "unless-preload"}
    proc = cli("run", GEMMA, *PROMPT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert f"with {lib} loaded first" in proc.stderr
    check = _one_check(cli)  # (on an AMX Xeon the extra buffer types go off as well)
    assert check["config"]["preload"] == lib  # type: ignore[index]
    again = cli("run", GEMMA, *PROMPT, env=env)  # the remembered preload, in process
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr


def test_setting_forces_the_extra_buffer_types(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    (cli.root / "home" / "state" / native_check.STATE_FILE).unlink(missing_ok=True)
    off = cli("run", GEMMA, *PROMPT, env={"LLMRUN_CPU_EXTRA_BUFFERS": "off"})
    assert off.returncode == 0 and off.stdout.strip(), off.stderr
    assert "Notice:" not in off.stderr
    keys = list(_state(cli)["checks"])  # type: ignore[call-overload]
    assert len(keys) == 1 and keys[0].startswith("off|")
    assert _one_check(cli)["config"] == {"extra_bufts": False, "preload": None}
    # forced on and crashing: no fallback to "off", one line, exit 5
    on = cli("run", GEMMA, *PROMPT, env={"LLMRUN_CPU_EXTRA_BUFFERS": "on",
                                         "LLMRUN_TEST_NATIVE_FAULT": "extra-bufts"})
    assert on.returncode == 5, on.stderr
    assert "crashed (SIGSEGV)" in on.stderr
    bad = cli("run", GEMMA, *PROMPT, env={"LLMRUN_CPU_EXTRA_BUFFERS": "maybe"})
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("Error: invalid LLMRUN_CPU_EXTRA_BUFFERS='maybe'")
    assert "Traceback" not in bad.stderr


def test_chat_and_serve_answer_under_the_fallback(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    env = {**cli.env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1",
           "LLMRUN_TEST_NATIVE_FAULT": "extra-bufts"}
    child = pexpect.spawn(sys.executable, ["-m", "llmrun", "chat", GEMMA, "--temperature", "0",
                                           "-n", "8"], env=env, encoding="utf-8", timeout=120,
                          dimensions=(40, 120))
    child.expect_exact("Notice: llama.cpp crashed (SIGSEGV)")
    child.expect_exact(">>>")  # prompt_toolkit draws the trailing space as a cursor move
    child.sendline("Name a color.")
    child.expect_exact("\x1b[?2004l")  # the message was taken (prompt_toolkit's paste mode off)
    child.expect_exact(">>>")
    reply = child.before or ""
    assert reply.replace("Name a color.", "").strip(), "no reply"
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    srv = Server(cli.root, "--ctx", "512", LLMRUN_TEST_NATIVE_FAULT="extra-bufts")
    try:
        # a model process of its own; its self-test is remembered already (chat ran it)
        r = srv.client().completions.create(model=GEMMA, prompt="The sky is", max_tokens=6,
                                            temperature=0)
        assert r.choices[0].text.strip()
    finally:
        srv.stop()
    assert "SIGSEGV" not in srv.log().replace("crashed (SIGSEGV) in llmrun's", "")


def test_self_test_writes_the_models_own_weight_types(tmp_path: Path, gemma_file: Path) -> None:
    info = gguf_file.read_info(gemma_file)
    types = native_check.matrix_types(info.matrix_samples)
    assert {"Q4_K", "Q6_K"} <= set(types)  # a Q4_K_M model: the AMX and repack kernels' types
    tiny = tmp_path / "tiny.gguf"
    tiny_model.write(tiny, types, source=gemma_file, samples=info.matrix_samples)
    written = gguf_file.read_info(tiny)
    assert set(types) <= set(written.tensor_types)
    assert tiny.stat().st_size < 16 << 20
    # a Q4_K matrix holds the model's own blocks
    reader = gguf.GGUFReader(tiny)
    q4k = next(t for t in reader.tensors if t.tensor_type.name == "Q4_K")
    offset, _ = info.matrix_samples["Q4_K"]
    with open(gemma_file, "rb") as f:
        f.seek(offset)
        head = f.read(144)
    assert bytes(q4k.data.tobytes()[:144]) == head
    # types gguf-py quantizes itself, without a source model
    plain = tmp_path / "plain.gguf"
    tiny_model.write(plain, ["F16", "Q4_0", "Q8_0"])
    assert {"F16", "Q4_0", "Q8_0"} <= set(gguf_file.read_info(plain).tensor_types)
    out = native_check.self_test(plain, ["F16", "Q4_0", "Q8_0"], {}, mode="auto", gpu=False,
                                 threads=None, flash_attn=None)
    *crashes, last = [a.outcome for a in out.attempts]
    assert last == "ok"
    assert crashes in ([], ["SIGSEGV"])  # SIGSEGV: an AMX Xeon, whose AMX kernel takes Q4_0


def test_fingerprint_follows_the_build_and_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    base = native_check.fingerprint()
    assert native_check.fingerprint() == base
    monkeypatch.setenv("LD_PRELOAD", "/nonexistent/lib.so")
    assert native_check.fingerprint() != base
    monkeypatch.delenv("LD_PRELOAD")
    real = native_check.cpu_summary
    monkeypatch.setattr(native_check, "cpu_summary",
                        lambda: {**real(), "flags": real()["flags"] + " amx_int8 amx_tile"})
    assert native_check.fingerprint() != base
    monkeypatch.setattr(native_check, "cpu_summary", real)
    build = native_check.llama_cpp_build()
    assert build["version"] and build["libraries"], build
    monkeypatch.setattr(native_check, "llama_cpp_build", lambda: {**build, "libraries": [
        [n, s + 1, m] for n, s, m in build["libraries"]]})  # a rebuilt library
    assert native_check.fingerprint() != base


# ---- doctor -------------------------------------------------------------------------------
DOCTOR_KEYS = {"llmrun", "python", "platform", "llama_cpp_python", "cpu", "build",
               "gpus_seen_by_driver", "self_test", "memory", "gpu_memory", "paths", "disk",
               "token", "hub", "remembered", "problems", "ok"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_doctor_json_offline_within_seconds(cli: Cli) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_doctorsecret123456"}
    start = time.monotonic()
    proc = cli("doctor", "--json", env=env)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert took < 20, f"doctor took {took:.1f}s with an unreachable Hub"
    report = json.loads(proc.stdout)
    assert set(report) == DOCTOR_KEYS
    assert report["ok"] is True
    st = report["self_test"]
    crashed_first = st["attempts"][0]["outcome"] != "ok"  # an AMX Xeon: a warning, with its fix
    assert [p["severity"] for p in report["problems"]] == (["warning"] if crashed_first else [])
    assert report["hub"]["endpoint"] == endpoint
    assert report["hub"]["reachable"] is False
    assert report["token"] == {"configured": True, "source": "HF_TOKEN"}
    assert "hf_doctorsecret123456" not in proc.stdout + proc.stderr
    assert st["works"] is True and st["types"] == ["F16", "Q4_0", "Q8_0"]
    assert st["attempts"][-1]["outcome"] == "ok"
    assert report["llama_cpp_python"] and report["build"]["system_info"]
    assert report["paths"]["llmrun_home"] == cli.env["LLMRUN_HOME"]
    assert report["paths"]["hf_cache"] == cli.env["HF_HUB_CACHE"]
    assert report["memory"]["total"] > 0 and report["disk"]["free"] > 0


def test_doctor_reports_a_broken_engine_without_crashing(cli: Cli) -> None:
    proc = cli("doctor", "--json", env={"LLMRUN_TEST_NATIVE_FAULT": "always",
                                        "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["hub"] == {"endpoint": report["hub"]["endpoint"], "reachable": False,
                             "detail": "offline mode (HF_HUB_OFFLINE)", "offline": True}
    outcomes = [a["outcome"] for a in report["self_test"]["attempts"]]
    assert outcomes and set(outcomes) == {"SIGSEGV"}
    (problem,) = report["problems"]
    assert problem["severity"] == "error" and "crashed (SIGSEGV)" in problem["problem"]
    assert "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python" in \
        problem["fix"]
    text = cli("doctor", env={"LLMRUN_TEST_NATIVE_FAULT": "always", "HF_HUB_OFFLINE": "1"})
    assert text.returncode == 1
    assert "engine self-test  FAILS" in text.stdout and "fix: " in text.stdout
    assert "Traceback" not in text.stderr


def test_doctor_warns_and_names_the_fallback(gemma_cli: Cli) -> None:
    proc = gemma_cli("doctor", GEMMA, "--json",
                     env={"LLMRUN_TEST_NATIVE_FAULT": "extra-bufts", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr  # llmrun works: a warning, not an error
    report = json.loads(proc.stdout)
    assert {"Q4_K", "Q6_K"} <= set(report["self_test"]["types"])
    (problem,) = report["problems"]
    assert problem["severity"] == "warning"
    assert "LLMRUN_CPU_EXTRA_BUFFERS=off" in problem["fix"]
    # the fix it names works: the engine runs with the setting and no fault path is taken
    run = gemma_cli("run", GEMMA, *PROMPT, env={"LLMRUN_CPU_EXTRA_BUFFERS": "off",
                                                "LLMRUN_TEST_NATIVE_FAULT": "extra-bufts"})
    assert run.returncode == 0 and run.stdout.strip(), run.stderr
    assert "Notice:" not in run.stderr


# ---- bench --------------------------------------------------------------------------------
def test_bench_json(gemma_cli: Cli) -> None:
    proc = gemma_cli("bench", GEMMA, "-p", "32", "-n", "8", "-r", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["test"] for r in data["results"]] == ["pp32", "tg8"]
    for r in data["results"]:
        t = r["tokens_per_s"]
        assert len(t["runs"]) == 2 and all(v > 0 for v in t["runs"])
        assert t["mean"] == pytest.approx(sum(t["runs"]) / 2, rel=1e-3)
    assert data["ttft_s"]["prompt_tokens"] == 32 and data["ttft_s"]["mean"] > 0
    assert data["peak_rss"] > 100 << 20  # the model's weights are resident
    assert data["gpu_layers"] == 0 or data["offload_supported"]
    assert data["quantization"] == "Q4_K_M" and data["n_ctx"] >= 33
    text = gemma_cli("bench", GEMMA, "-p", "16", "-n", "4", "-r", "1")
    assert text.returncode == 0, text.stderr
    assert [ln.split()[0] for ln in text.stdout.splitlines()] == [
        "model:", "pp16", "tg4", "ttft", "memory"]


def test_bench_bad_input(gemma_cli: Cli, cli: Cli) -> None:
    none = gemma_cli("bench", GEMMA, "-p", "0", "-n", "0")
    assert none.returncode == 2 and none.stderr.startswith("Error: nothing to measure")
    big = gemma_cli("bench", GEMMA, "-p", "600", "-n", "1", "--ctx", "256")
    assert big.returncode == 2, big.stderr
    assert "does not fit the context" in big.stderr and "Traceback" not in big.stderr
    missing = cli("bench", "gemma3:270m-base", "--no-pull")
    assert missing.returncode == 3 and "Hint: llmrun pull gemma3:270m-base" in missing.stderr


def test_the_fault_hook_is_off_unless_a_test_sets_it() -> None:
    """A guard on the suite itself: the test hook is not in the environment the tests run in,
    nor in the one make_env() gives llmrun, so only the tests above that set it see faults."""
    assert native_check.FAULT_ENV not in make_env(Path("/tmp"))
    assert os.environ.get(native_check.FAULT_ENV) is None


def test_after_a_crash_an_inconclusive_attempt_is_not_the_crashing_configuration(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A crash with the extra buffer types, then a timeout without them: the model loads
    without them (the timeout taught nothing, the crash did). Narrow: a fake child."""
    outcomes = iter(["SIGSEGV", "timeout"])

    def fake(model: Path, config: native_check.Config, **kw: object
             ) -> tuple[native_check.Attempt, dict[str, object]]:
        return native_check.Attempt(config, next(outcomes)), {}

    monkeypatch.setattr(native_check, "run_probe", fake)
    out = native_check.self_test(tmp_path / "none.gguf", ["F16"], {}, mode="auto", gpu=False,
                                 threads=None, flash_attn=None)
    assert [a.outcome for a in out.attempts] == ["SIGSEGV", "timeout"]
    assert out.config == native_check.Config(extra_bufts=False)
    assert not native_check.crashed(out)
