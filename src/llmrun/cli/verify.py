"""`llmrun verify [NAME…]`: re-hash pulled files against their recorded sha256."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ChecksumMismatch
from . import common, complete, output


def verify_cmd(
    names: Annotated[list[str] | None, typer.Argument(
        help="models to check (default: all)", autocompletion=complete.pulled_model)]
    = None,
) -> None:
    """Detect bit rot or tampering: every file is hashed and compared with its record."""
    from ..store import sha256_file

    store = common.store()
    resolver = common.resolver()
    manifests = list(store.all()) if not names else [
        resolver.pulled(n) or store.require(_name(n)) for n in names]
    bad: list[str] = []
    broken: list[str] = []
    fixes: dict[str, str] = {}  # name -> the command that repairs it
    for m in manifests:
        for f in m.files:
            path = Path(f.local)
            status = "ok"
            if not path.exists():
                status = "missing"
            elif f.sha256 and sha256_file(path) != f.sha256:
                status = "MISMATCH"
            if status != "ok":
                bad.append(f"{m.name}: {f.path}")
                broken.append(m.name)
                if m.kind == "import":  # import it again, from where it was imported
                    linked = m.source == "link"
                    fixes[m.name] = (f"llmrun rm -y {m.name} && llmrun import "
                                     f"{shlex.quote(f.local) if linked else 'FILE'} "
                                     f"--name {m.name}"
                                     + (" --link" if linked else ""))
            output.write(f"{status}\t{m.name}\t{f.path}\n")
    if bad:
        pulled = [n for n in dict.fromkeys(broken) if n not in fixes]
        repairs = ([f"llmrun pull --force {' '.join(pulled)}"] if pulled else []) + [
            fixes[n] for n in dict.fromkeys(broken) if n in fixes]
        raise ChecksumMismatch(f"{len(bad)} file(s) failed verification: {bad[0]}",
                               hint="repair with: " + "; ".join(repairs))


def _name(text: str) -> str:
    """The name a model that is not pulled would have (for require()'s message)."""
    from ..refs import RegistryRef

    ref = common.parse_ref(text)
    return ref.display if isinstance(ref, RegistryRef) else text
