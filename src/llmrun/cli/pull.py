"""`llmrun pull NAME`."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, output
from .progress import PullEvents


def pull_cmd(
    names: Annotated[list[str], typer.Argument(help="registry name, hf.co/ORG/REPO[:QUANT]")],
    force: Annotated[bool, typer.Option("--force", help="download again and re-verify")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="print only the model path on stdout")] = False,
) -> None:
    """Download a model (resumable, sha256-verified) into the Hugging Face cache."""
    from ..pull import pull

    refs = [common.parse_ref(n) for n in names]  # validate all before downloading any
    for ref in refs:
        events = PullEvents(quiet)
        try:
            manifest = pull(ref, common.settings(), events, force=force)
        except KeyboardInterrupt:
            events.close()
            output.info(f"interrupted: what was downloaded is kept; `llmrun pull "
                        f"{ref.display}` resumes it")
            raise
        finally:
            events.close()
        if quiet:
            output.write(f"{manifest.model_path}\n")
        else:
            output.info(f"pulled {manifest.name} ({output.human_size(manifest.size)}): "
                        f"{manifest.model_path}")
