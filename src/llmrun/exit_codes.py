"""The one table of llmrun's exit codes (documented in docs/cli.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # anything not covered below
    USAGE = 2  # bad flags, bad model reference, bad input
    NOT_FOUND = 3  # model not in the registry / not pulled / no such file
    NETWORK = 4  # network, download or verification failure
    MODEL = 5  # model load, corrupt model file, context overflow
    INTERRUPTED = 130  # Ctrl-C / SIGINT
