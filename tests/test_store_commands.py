"""list, show, rm, import, verify and catalog on a real store holding the real model."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

from conftest import GEMMA, GEMMA_SIZE, Cli


def test_list_is_tab_separated_on_a_pipe_and_json_is_stable(gemma_cli: Cli) -> None:
    proc = gemma_cli("list")
    assert proc.returncode == 0
    header, row = proc.stdout.splitlines()
    assert header.split("\t") == ["NAME", "QUANT", "SIZE", "MODIFIED"]
    assert row.split("\t")[:3] == [GEMMA, "Q4_K_M", "253.1 MB"]
    assert "\x1b[" not in proc.stdout and proc.stderr == ""
    data = json.loads(gemma_cli("ls", "--json").stdout)
    assert data[0]["name"] == GEMMA and data[0]["size"] == GEMMA_SIZE
    assert data[0]["source"] == "package"
    assert set(data[0]) == {"name", "quant", "size", "modified", "source", "repo", "revision",
                            "path", "files"}


def test_show_reads_the_header(gemma_cli: Cli) -> None:
    data = json.loads(gemma_cli("show", GEMMA, "--json").stdout)
    assert data["architecture"] == "gemma3"
    assert data["context_length"] == 32768
    assert data["quantization"] == "Q4_K_M"
    assert 260e6 < data["parameters"] < 280e6
    assert data["chat_template"] == "registry format gemma"
    assert data["size"] == GEMMA_SIZE and data["license"] == "gemma"
    text = gemma_cli("show", GEMMA).stdout
    assert "architecture    gemma3" in text
    tmpl = gemma_cli("show", GEMMA, "--template")
    assert "<start_of_turn>" in tmpl.stdout


def test_show_unpulled_is_exit_3(cli: Cli) -> None:
    proc = cli("show", GEMMA)
    assert proc.returncode == 3 and "llmrun pull" in proc.stderr


def test_import_copies_validates_and_runs(cli: Cli, gemma_file: Path, tmp_path: Path) -> None:
    proc = cli("import", str(gemma_file), "--name", "my-gemma")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["name"] == "my-gemma" and listed[0]["source"] == "import"
    copied = Path(listed[0]["path"])
    assert copied != gemma_file and copied.stat().st_size == GEMMA_SIZE
    run = cli("run", "my-gemma", "--raw", "--temperature", "0", "-n", "3", "Hello")
    assert run.returncode == 0, run.stderr
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\xff" * 100)
    bad = cli("import", str(bogus), "--name", "bogus")
    assert bad.returncode == 5 and "corrupt or incomplete" in bad.stderr
    taken = cli("import", str(gemma_file), "--name", GEMMA)
    assert taken.returncode == 2 and "registry name" in taken.stderr


def test_verify_catches_bit_rot(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    ok = cli("verify")
    assert ok.returncode == 0 and ok.stdout.startswith("ok\t" + GEMMA)
    path = Path(json.loads(cli("list", "--json").stdout)[0]["path"]).resolve()
    # the copy shares the blob with the session store through a hard link: replace it first
    data = bytearray(path.read_bytes())
    data[GEMMA_SIZE // 2] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))
    bad = cli("verify", GEMMA)
    assert bad.returncode == 4
    assert bad.stdout.startswith("MISMATCH") and "failed verification" in bad.stderr
    assert f"Hint: repair with: llmrun pull --force {GEMMA}" in bad.stderr


def test_verify_of_a_changed_linked_import_names_a_repair_that_works(cli: Cli,
                                                                    gemma_file: Path,
                                                                    tmp_path: Path) -> None:
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(gemma_file.read_bytes())
    assert cli("import", str(mine), "--name", "mine", "--link").returncode == 0
    data = bytearray(mine.read_bytes())
    data[GEMMA_SIZE // 2] ^= 0x01  # the user changed the file (or it rotted) in place
    mine.write_bytes(bytes(data))
    bad = cli("verify", "mine")
    assert bad.returncode == 4
    hint = bad.stderr.split("Hint: repair with: ", 1)[1].strip()
    assert hint == f"llmrun rm -y mine && llmrun import {mine.resolve()} --name mine --link"
    for step in hint.split(" && "):
        done = cli(*step.split()[1:])
        assert done.returncode == 0, (step, done.stderr)
    assert cli("verify", "mine").returncode == 0


def test_rm_asks_dry_runs_and_frees(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    refused = cli("rm", GEMMA)  # not a terminal and no -y
    assert refused.returncode == 2 and "-y" in refused.stderr
    dry = cli("rm", "--dry-run", GEMMA)
    assert dry.returncode == 0 and "would remove" in dry.stderr
    assert json.loads(cli("list", "--json").stdout)
    gone = cli("rm", "-y", GEMMA)
    assert gone.returncode == 0 and "freed 253.1 MB" in gone.stderr
    assert json.loads(cli("list", "--json").stdout) == []
    repo = cli.root / "hub" / "models--hugginllam--gemma-3-270m-Q4_K_M-GGUF"
    assert not repo.exists()
    again = cli("rm", "-y", GEMMA)
    assert again.returncode == 3


def test_rm_leaves_other_models_alone(private_gemma_cli: Cli, gemma_file: Path) -> None:
    cli = private_gemma_cli
    assert cli("import", str(gemma_file), "--name", "other").returncode == 0
    assert cli("rm", "-y", "other").returncode == 0
    remaining = json.loads(cli("list", "--json").stdout)
    assert [m["name"] for m in remaining] == [GEMMA]
    assert Path(remaining[0]["path"]).exists()


def test_catalog_filters_and_marks_pulled(gemma_cli: Cli) -> None:
    rows = json.loads(gemma_cli("catalog", "gemma3", "--json").stdout)
    names = {r["name"]: r for r in rows}
    assert names[GEMMA]["pulled"] is True and names[GEMMA]["fits"] is True
    assert all("gemma3" in n or "gemma3" in r["title"].lower() for n, r in names.items())
    table = gemma_cli("catalog").stdout.splitlines()
    assert table[0].split("\t")[0] == "NAME" and len(table) > 25


def test_blob_replaced_by_fifo_is_refused_without_reading(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    path = Path(json.loads(cli("list", "--json").stdout)[0]["path"]).resolve()
    path.unlink()
    os.mkfifo(path)  # opening it for reading would block forever
    proc = cli("run", GEMMA, "--raw", "-n", "2", "hi", timeout=60)
    assert proc.returncode == 5 and "not a regular file (a FIFO)" in proc.stderr
    assert f"llmrun pull --force {GEMMA}" in proc.stderr


def test_snapshot_pointing_outside_the_store_is_refused(private_gemma_cli: Cli,
                                                        tmp_path: Path) -> None:
    cli = private_gemma_cli
    link = Path(json.loads(cli("list", "--json").stdout)[0]["path"])
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(b"GGUF-not-really")
    secret.chmod(0)  # reading it would fail loudly with another error
    link.unlink()
    link.symlink_to(secret)
    proc = cli("run", GEMMA, "--raw", "-n", "2", "hi")
    assert proc.returncode == 5 and "resolves outside the model store" in proc.stderr


def test_linked_import_stays_in_place(cli: Cli, gemma_file: Path) -> None:
    assert cli("import", str(gemma_file), "--name", "linked", "--link").returncode == 0
    listed = json.loads(cli("list", "--json").stdout)[0]
    assert Path(listed["path"]) == gemma_file.resolve() and listed["source"] == "link"
    assert cli("show", "linked", "--json").returncode == 0


def _read_reply(proc: subprocess.Popen[bytes], timeout: float = 120) -> bytes:
    """Read a piped chat's stdout until its reply's newline (the model is loaded by then)."""
    assert proc.stdout is not None
    got = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in got:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, got
        if select.select([proc.stdout], [], [], left)[0]:
            got += os.read(proc.stdout.fileno(), 4096)
    return got


def _chat_with_model_loaded(cli: Cli) -> subprocess.Popen[bytes]:
    """A piped chat that has answered one message: its model is loaded and stays so."""
    chat = cli.popen("chat", GEMMA, "--temperature", "0", "-n", "4", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert chat.stdin is not None
    chat.stdin.write(b"Hello\n")
    chat.stdin.flush()
    _read_reply(chat)
    return chat


def test_rm_refuses_a_model_a_running_chat_has_loaded(private_gemma_cli: Cli) -> None:
    """T18: `rm` leaves a loaded model alone and names the process; once it exits, rm works."""
    cli = private_gemma_cli
    blob = Path(json.loads(cli("list", "--json").stdout)[0]["path"]).resolve()
    chat = _chat_with_model_loaded(cli)
    assert chat.stdin is not None
    try:
        refused = cli("rm", "-y", GEMMA)
        assert refused.returncode == 1
        assert f"is loaded by a running llmrun process (pid {chat.pid})" in refused.stderr
        assert "--force" in refused.stderr and "Traceback" not in refused.stderr
        assert blob.is_file() and len(json.loads(cli("list", "--json").stdout)) == 1
    finally:
        chat.stdin.close()
        assert chat.wait(timeout=60) == 0
    done = cli("rm", "-y", GEMMA)  # the lock went with the process
    assert done.returncode == 0, done.stderr
    assert not blob.exists() and json.loads(cli("list", "--json").stdout) == []


def test_rm_force_removes_a_loaded_model_and_the_chat_carries_on(private_gemma_cli: Cli) -> None:
    cli = private_gemma_cli
    blob = Path(json.loads(cli("list", "--json").stdout)[0]["path"]).resolve()
    chat = _chat_with_model_loaded(cli)
    assert chat.stdin is not None
    forced = cli("rm", "-y", "--force", GEMMA)
    assert forced.returncode == 0, forced.stderr
    assert not blob.exists()
    chat.stdin.write(b"And again?\n")  # its mapping of the deleted file still works
    chat.stdin.flush()
    chat.stdin.close()
    assert chat.wait(timeout=60) == 0
    assert chat.stdout is not None and chat.stdout.read().strip()


def test_prune_keeps_an_orphaned_blob_that_is_in_use(private_gemma_cli: Cli,
                                                     gemma_file: Path) -> None:
    """A blob nothing refers to any more, but which a process still has loaded (this test
    process holds the same lock a loaded model holds), is kept until it is let go."""
    from llmrun.inuse import Hold

    cli = private_gemma_cli
    orphan = cli.root / "home" / "blobs" / f"sha256-{'0' * 64}.gguf"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    os.link(gemma_file, orphan)
    hold = Hold([orphan])
    kept = cli("prune")
    assert kept.returncode == 0, kept.stderr
    assert f"keeping {orphan}: loaded by a running llmrun process (pid {os.getpid()})" \
        in kept.stderr
    assert orphan.exists()
    hold.release()
    pruned = cli("prune")
    assert f"removing {orphan}" in pruned.stderr and not orphan.exists()
