"""llmrun's typed errors. Library modules raise these; only cli.main() turns them into output."""

from __future__ import annotations

from .exit_codes import ExitCode


class LlmrunError(Exception):
    """An error with a one-line message, an optional hint and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(LlmrunError):
    exit_code = ExitCode.USAGE


class InvalidReference(UsageError):
    """A model reference that fails validation (checked before any disk or network access)."""


class NotFound(LlmrunError):
    exit_code = ExitCode.NOT_FOUND


class ModelNotPulled(NotFound):
    pass


class NetworkError(LlmrunError):
    exit_code = ExitCode.NETWORK


class AuthError(NetworkError):
    pass


class ChecksumMismatch(NetworkError):
    pass


class DiskFull(LlmrunError):
    exit_code = ExitCode.NETWORK  # a download that cannot finish


class ModelError(LlmrunError):
    exit_code = ExitCode.MODEL


class CorruptModel(ModelError):
    pass


class ContextOverflow(ModelError):
    pass


class TemplateError(ModelError):
    pass


class InUse(LlmrunError):
    """A model another running llmrun process has loaded (rm and prune leave it alone)."""


class RegistryError(LlmrunError):
    exit_code = ExitCode.ERROR


def context_overflow(n_prompt: int, n_ctx: int, trained: int | None) -> ContextOverflow:
    """The error for a prompt of ``n_prompt`` tokens that does not fit ``n_ctx``."""
    return ContextOverflow(
        f"prompt is {n_prompt} tokens, context is {n_ctx}",
        hint="shorten the input or raise --ctx"
             + (f" (this model was trained on {trained})" if trained else ""))
