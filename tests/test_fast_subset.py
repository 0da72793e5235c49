"""The fast subset (`pytest -m "not model and not slow"`) stays fast: conftest refuses an
interpreter, llmrun or a shell started by a test marked neither `slow` nor `model`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def test_a_fast_test_may_not_start_an_interpreter() -> None:
    with pytest.raises(AssertionError, match=re.escape("mark it @pytest.mark.slow")):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(AssertionError, match=re.escape("mark it @pytest.mark.slow")):
        subprocess.run("bash -c true", shell=True, check=False)
    assert subprocess.run(["true"], check=False).returncode == 0  # a small tool is fine


@pytest.mark.slow
def test_a_slow_test_may() -> None:
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
