"""`llmrun pull NAME`."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common, complete, output
from .progress import pull_with_progress


def pull_cmd(
    names: Annotated[list[str], typer.Argument(
        help="registry name, hf.co/ORG/REPO[:QUANT]", autocompletion=complete.any_model)],
    force: Annotated[bool, typer.Option("--force", help="download again and re-verify")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="print only the model path on stdout")] = False,
    no_mmproj: Annotated[bool, typer.Option(
        "--no-mmproj", help="leave out the vision projector (mmproj): text only")] = False,
) -> None:
    """Download a model (resumable, sha256-verified) into the Hugging Face cache."""
    refs = [common.parse_ref(n) for n in names]  # validate all before downloading any
    for ref in refs:
        manifest = pull_with_progress(ref, common.settings(), quiet=quiet, force=force,
                                      mmproj=not no_mmproj)
        if quiet:
            output.write(f"{manifest.model_path}\n")
        else:
            output.info(f"pulled {manifest.name} ({output.human_size(manifest.size)}): "
                        f"{manifest.model_path}")
            if manifest.mmproj_path is not None:
                output.info(f"  vision projector: {manifest.mmproj_path}")
