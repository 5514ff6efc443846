"""Helpers shared by the simulation scripts: inputs that exist in every checkout, one-line
errors that say where to get the data sets, and plain-text ``--help``.

The scripts default to the sample image bundled with the package, so each of them runs in a
fresh clone; the Kodak and BSDS500 sets are downloaded separately and passed by flag.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resilient_tx.errors import InputError, ResilientTxError
from resilient_tx.images import list_images

ROOT = Path(__file__).resolve().parents[1]
#: The bundled sample (one Kodak photo): a default that exists in every clone.
SAMPLES = ROOT / "resilient_tx" / "samples"



def shared_data(name: str) -> Path:
    """``shared/data/NAME`` inside the checkout if there is one (as on a device machine),
    else beside it (as in a developer's workspace)."""
    inside = ROOT / "shared" / "data" / name
    return inside if inside.is_dir() else ROOT.parent / "shared" / "data" / name


KODAK_HINT = ("download the Kodak set (kodim01..24.png, e.g. from https://r0k.us/graphics/kodak/) "
              "into a folder and pass {flag} DIR")


def image_files(folder: str | Path, limit: int = 0, flag: str = "--images") -> list[Path]:
    """The images under ``folder`` (the first ``limit`` when > 0).

    Raises InputError in one line that names the flag and where to get Kodak when the
    folder is missing or holds no image, so a user without the data set knows what to do.
    """
    d = Path(folder)
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    if not d.is_dir():
        raise InputError(f"no image folder {d}: {KODAK_HINT.format(flag=flag)}")
    try:
        files = list_images(d)
    except InputError as exc:
        raise InputError(f"{exc}: {KODAK_HINT.format(flag=flag)}") from exc
    return files[: limit or None]


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(doc: str | None) -> str:
    """``doc`` with reStructuredText roles and double backticks removed, for ``--help``:
    argparse prints the text as it is."""
    return _ROLE.sub(r"\1", doc or "").replace("``", "")


def fail(prog: str, message: str) -> int:
    """Print ``prog: error: message`` on stderr (the argparse form, one line); return 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def script_main(prog: str, parser: argparse.ArgumentParser,
                run: Callable[[argparse.Namespace], Any], argv: Sequence[str] | None) -> int:
    """The ``main`` of a script that parses its flags and runs: 0, or 2 with the one-line
    error of a :class:`ResilientTxError`."""
    args = parser.parse_args(argv)
    try:
        run(args)
    except ResilientTxError as exc:
        return fail(prog, str(exc))
    return 0
