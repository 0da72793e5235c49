"""T17 in docs/reliability.md, "model too big": llmrun's pre-flight memory estimate
(llmrun.memory) against llama.cpp's own numbers on the real Gemma 3 270M, the policy on fake
limits, and `llmrun run` end to end under a real RLIMIT_AS set in the child before exec.

Every RLIMIT_AS below is derived from the estimate, not hard-coded: under it the pre-flight
must refuse (exit 5, one "Error:" line, the --ctx hint); a little above it the pre-flight lets
the load start and llama.cpp (or llama-cpp-python) runs out of address space itself, which must
end the same clean way: never a traceback, a signal or a core dump.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GEMMA, Cli

from llmrun import gguf_file, gguf_info, inuse, memory
from llmrun.engine import LoadOptions, Model
from llmrun.errors import ModelError
from llmrun.exit_codes import ExitCode

CTX = 32768  # Gemma 3 270M's trained context: a 604 MB KV cache for a 253 MB file
HINT = "Hint: try a smaller --ctx or a smaller quant"
MiB = 1 << 20
# `llmrun run` with one piece of llmrun.memory replaced in the child (for the two tests that
# need to get past the pre-flight, or to see its warning without really lacking RAM)
PATCHED = ("import sys, llmrun.memory as m; m.{name} = {value}; from llmrun.cli import main; "
           "sys.argv[0] = 'llmrun'; main()")


def _run(cli: Cli, *args: str, limit: int | None = None, patch: tuple[str, str] | None = None,
         ctx: int = CTX) -> subprocess.CompletedProcess[str]:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # never litter a core file
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    head = ["-c", PATCHED.format(name=patch[0], value=patch[1])] if patch else ["-m", "llmrun"]
    return subprocess.run(
        [sys.executable, *head, "run", GEMMA, "--raw", "-n", "4", "--ctx", str(ctx),
         "--gpu-layers", "0", *args, "Hi"],
        env=cli.env, capture_output=True, text=True, timeout=120, preexec_fn=limits,
        stdin=subprocess.DEVNULL)


def _estimate(cli: Cli, ctx: int = CTX) -> memory.Estimate:
    path = next((cli.root / "hub").rglob("*.gguf"))
    return memory.estimate(gguf_file.read_info(path), ctx)


def _clean_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 5, nothing on stdout, exactly an "Error:" line and the hint; returns the error."""
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.returncode == ExitCode.MODEL, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: "), lines
    assert lines[1].startswith(HINT), lines
    return lines[0]


# ---- the estimate against llama.cpp -------------------------------------------------------
def test_gemma_header_has_the_attention_shape(gemma_file: Path) -> None:
    info = gguf_file.read_info(gemma_file)
    assert info.block_count == 18
    assert info.head_count == [4] * 18 and info.head_count_kv == [1] * 18
    assert (info.key_length, info.value_length) == (256, 256)
    assert info.array_lengths[gguf_file.TOKENS_KEY] == 262144


@pytest.mark.parametrize("ctx", [1000, CTX])
def test_kv_estimate_matches_llama_cpp(gemma_cli: Cli, gemma_file: Path, ctx: int) -> None:
    """llama.cpp logs its KV cache (one line per cache: global and sliding-window layers)
    and its compute buffer, which holds n_batch rows of logits, half the estimate's buffers."""
    proc = gemma_cli("run", GEMMA, "--raw", "-n", "1", "--ctx", str(ctx), "--gpu-layers", "0",
                     "Hi", env={"LLMRUN_DEBUG": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kv_lines = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", proc.stderr)
    compute = re.findall(r"CPU compute buffer size =\s*([\d.]+) MiB", proc.stderr)
    assert kv_lines and compute, proc.stderr[-3000:]
    llama_kv = sum(float(x) for x in kv_lines) * MiB
    est = memory.estimate(gguf_file.read_info(gemma_file), ctx)
    print(f"\nctx {ctx}: KV estimate {est.kv_cache / MiB:.2f} MiB, llama.cpp {llama_kv / MiB:.2f}"
          f" MiB; logits reserve {est.buffers / 2 / MiB:.2f} MiB, compute buffer "
          f"{float(compute[0]):.2f} MiB")
    assert abs(est.kv_cache - llama_kv) <= 0.10 * llama_kv
    assert est.buffers / 2 <= float(compute[0]) * MiB <= 1.10 * est.buffers / 2


def test_estimate_parts(gemma_file: Path) -> None:
    info = gguf_file.read_info(gemma_file)
    per_cell = 18 * 1 * (256 + 256) * 2
    assert memory.kv_cache_bytes(info, 4096) == 4096 * per_cell
    assert memory.kv_cache_bytes(info, 1000) == 1024 * per_cell  # padded to 256 like llama.cpp
    est = memory.estimate(info, 100, n_batch=512, weights=10**9)
    assert est.weights == 10**9 and est.kv_cache == 256 * per_cell
    assert est.buffers == 2 * 100 * 262144 * 4  # a batch is never longer than the context
    assert est.resident == est.weights + est.kv_cache
    assert est.address_space == est.resident + est.buffers


def _info(tmp_path: Path, **meta: object) -> gguf_info.GGUFInfo:
    return gguf_info.GGUFInfo(path=tmp_path / "m.gguf", file_size=1000, version=3, n_tensors=0,
                              metadata={"general.architecture": "x", "x.block_count": 2,
                                        **meta},  # type: ignore[dict-item]
                              array_lengths={gguf_file.TOKENS_KEY: 10})


def test_estimate_from_other_headers(tmp_path: Path) -> None:
    # one number per layer (a hybrid: no KV heads on the recurrent layer), defaults for the rest
    hybrid = _info(tmp_path, **{"x.attention.head_count": 4, "x.attention.head_count_kv": [0, 2],
                                "x.embedding_length": 64})
    assert memory.kv_cache_bytes(hybrid, 256) == 256 * (0 + 2 * (16 + 16)) * 2
    assert memory.kv_cache_bytes(_info(tmp_path), 256) == 0  # no attention heads at all
    mla = _info(tmp_path, **{"x.attention.head_count": 4, "x.attention.kv_lora_rank": 512})
    assert memory.kv_cache_bytes(mla, 256) == 0  # not a size this formula knows
    assert memory.estimate(mla, 100, n_batch=64).buffers == 2 * 64 * 10 * 4
    parts = [tmp_path / "a-00001-of-00002.gguf", tmp_path / "a-00002-of-00002.gguf"]
    for i, part in enumerate(parts):
        part.write_bytes(b"x" * (100 + i))
    assert memory.files_size(mla, parts) == 201
    assert memory.files_size(mla, parts[:1]) == 1000  # unsplit: the header's own size


# ---- the policy ---------------------------------------------------------------------------
EST = memory.Estimate(weights=300_000_000, kv_cache=600_000_000, n_ctx=CTX, buffers=1_000_000_000)


def test_policy_refuses_above_the_address_space_limit() -> None:
    with pytest.raises(ModelError) as exc:
        memory.check(EST, limit=EST.address_space - 1, available=None, name="m")
    assert exc.value.exit_code == ExitCode.MODEL
    assert exc.value.message == (
        "cannot load m: it needs about 1.90 GB (weights 300.0 MB + KV cache 600.0 MB at "
        "context 32768 + logits buffers 1.00 GB), the memory limit is 1.90 GB")
    assert exc.value.hint == "try a smaller --ctx or a smaller quant"
    with pytest.raises(ModelError):  # the limit wins even with plenty of RAM
        memory.check(EST, limit=EST.resident, available=10**12, name="m")
    assert memory.check(EST, limit=EST.address_space, available=None, name="m") is None
    assert memory.check(EST, limit=None, available=None, name="m") is None


def test_policy_only_warns_above_available_ram() -> None:
    warning = memory.check(EST, limit=None, available=EST.resident - 1, name="m")
    assert warning == (
        "m needs about 900.0 MB (weights 300.0 MB + KV cache 600.0 MB at context 32768) but "
        "only 900.0 MB of memory is available: expect swapping or an out-of-memory kill; "
        "try a smaller --ctx or a smaller quant")
    # the logits buffers are address space, hardly touched: they do not count against RAM
    assert memory.check(EST, limit=None, available=EST.resident, name="m") is None
    assert memory.check(EST, limit=10**12, available=EST.resident, name="m") is None


def test_preflight_reads_this_processes_limits(gemma_file: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    info = gguf_file.read_info(gemma_file)
    est = memory.estimate(info, CTX)
    real = resource.getrlimit(resource.RLIMIT_AS)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (est.address_space - 1, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS
        else real))
    with pytest.raises(ModelError) as exc:
        memory.preflight(info, CTX, [gemma_file], name="g")
    limit = memory.human_size(est.address_space - 1)
    assert exc.value.message.endswith(f"the memory limit is {limit}")
    monkeypatch.setattr(resource, "getrlimit", lambda which: real)

    class Mem:
        available = est.resident - 1

    monkeypatch.setattr("psutil.virtual_memory", lambda: Mem)
    warning = memory.preflight(info, CTX, [gemma_file], name="g")
    assert warning is not None and warning.startswith(f"g needs {est.describe()} but only ")
    monkeypatch.undo()
    assert memory.address_space_limit() == (None if real[0] == resource.RLIM_INFINITY
                                            else real[0])


def test_model_refuses_before_llama_cpp_is_called(gemma_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    def no_load(*args: object, **kw: object) -> None:
        raise AssertionError("llama.cpp was asked to load the model")

    monkeypatch.setattr(llama_cpp, "Llama", no_load)
    monkeypatch.setattr(memory, "address_space_limit", lambda: 500_000_000)
    with pytest.raises(ModelError, match="cannot load g: it needs about") as exc:
        Model(gemma_file, LoadOptions(n_ctx=CTX, n_gpu_layers=0), name="g")
    assert exc.value.exit_code == ExitCode.MODEL
    with inuse.exclusive([gemma_file]) as busy:  # the refused model holds no lock
        assert busy == []


# ---- end to end under a real RLIMIT_AS -----------------------------------------------------
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.97])
def test_refused_before_loading_under_the_estimate(gemma_cli: Cli, fraction: float) -> None:
    """Limits between the file size (plus a little) and the estimate: the pre-flight says
    what is needed and what the limit is, before llama.cpp allocates anything."""
    est = _estimate(gemma_cli)
    limit = int(est.weights + fraction * (est.address_space - est.weights))
    error = _clean_failure(_run(gemma_cli, limit=limit))
    assert error == (f"Error: cannot load {GEMMA}: it needs {est.describe(buffers=True)}, the "
                     f"memory limit is {memory.human_size(limit)}")


@pytest.mark.parametrize("over", [1.02, 1.06])
def test_native_failure_past_the_estimate_is_clean(gemma_cli: Cli, over: float) -> None:
    """Just above the estimate the pre-flight lets the load start (the estimate is a lower
    bound: Python itself, threads and llama.cpp's other buffers are not in it), and the
    allocation that fails is a native one: still exit 5 with the hint."""
    est = _estimate(gemma_cli)
    error = _clean_failure(_run(gemma_cli, limit=int(est.address_space * over)))
    assert re.fullmatch(rf"Error: could not load {re.escape(GEMMA)}: "
                        r"(out of memory|Failed to create llama_context)", error), error


def test_llama_cpp_context_failure_is_mapped(gemma_cli: Cli) -> None:
    """With the pre-flight switched off in the child, a limit that holds the weights but not
    the KV cache makes llama.cpp itself fail (ValueError "Failed to create llama_context"),
    which engine.Model turns into the same exit 5 and hint."""
    est = _estimate(gemma_cli)
    limit = est.weights + est.kv_cache // 2 + 200_000_000
    error = _clean_failure(_run(gemma_cli, limit=limit,
                                patch=("preflight", "lambda *a, **k: None")))
    assert error == f"Error: could not load {GEMMA}: Failed to create llama_context"


def test_low_ram_is_one_warning_line(gemma_cli: Cli) -> None:
    est = _estimate(gemma_cli, 512)
    proc = _run(gemma_cli, patch=("available_memory", "lambda: 1000"), ctx=512)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
    assert proc.stderr.splitlines() == [
        f"Warning: {GEMMA} needs {est.describe()} but only 1.0 KB of memory is available: "
        "expect swapping or an out-of-memory kill; try a smaller --ctx or a smaller quant"]


def test_a_registry_default_context_shrinks_to_fit_memory(
        gemma_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reasoning model's preferred context (the registry's `ctx`) is halved until llmrun's
    estimate fits the memory available, never below the usual 4096."""
    from llmrun.engine.model import DEFAULT_CTX, _affordable_ctx

    info = gguf_file.read_info(gemma_file)
    need = {ctx: memory.estimate(info, ctx, weights=info.file_size).resident
            for ctx in (4096, 8192, 16384)}
    monkeypatch.setattr(memory, "address_space_limit", lambda: None)
    for available, expected in ((None, 16384), (need[16384], 16384),
                                (need[16384] - 1, 8192), (need[8192] - 1, DEFAULT_CTX),
                                (1, DEFAULT_CTX)):
        monkeypatch.setattr(memory, "available_memory", lambda a=available: a)
        assert _affordable_ctx(info, 16384, [gemma_file], 512) == expected, available
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    assert _affordable_ctx(info, 2048, [gemma_file], 512) == 2048  # a smaller preference


def test_the_registry_context_is_used_and_the_flag_wins(gemma_file: Path) -> None:
    model = Model(gemma_file, LoadOptions(ctx_default=8192))
    try:
        assert model.n_ctx == 8192  # (the estimate is ~0.3 GB: it fits any test machine)
    finally:
        model.close()
    model = Model(gemma_file, LoadOptions(n_ctx=1024, ctx_default=8192))
    try:
        assert model.n_ctx == 1024
    finally:
        model.close()
