"""The argparse edge: command-line flags for config fields, and configs from parsed flags.

A flag's type and choices come from its field in :mod:`resilient_tx.config`, so the
command line, the YAML file and the dataclass cannot disagree. Flags default to None
("not given"), which lets :func:`config_from_args` layer them over ``--config FILE``:
flags win, the file fills in, and the dataclass supplies the rest. Also the commands'
progress bars, which ``-q`` hides.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from resilient_tx.config import choices_of, field_types, load_config

if TYPE_CHECKING:
    from tqdm import tqdm

C = TypeVar("C")


def add_option(parser: argparse.ArgumentParser, cls: type[Any], name: str, help: str,
               metavar: str | None = None) -> None:
    """Add ``--NAME`` (``_`` written as ``-``) for field ``name`` of config class ``cls``."""
    hint = field_types(cls)[name]
    flag = "--" + name.replace("_", "-")
    kind = _scalar_type(hint)
    if kind is bool:  # a switch: present means true, absent leaves it to the file
        on_by_default = any(f.name == name and f.default is True
                            for f in fields(cls))
        if on_by_default:  # --X / --no-X; absent still leaves it to the file
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help)
        else:
            parser.add_argument(flag, action="store_const", const=True, help=help)
        return
    choices = choices_of(hint)
    if choices:
        parser.add_argument(flag, choices=list(choices), metavar=metavar, help=help)
    elif kind is str:
        parser.add_argument(flag, metavar=metavar, help=help)
    else:
        parser.add_argument(flag, type=kind, metavar=metavar, help=help)


def _scalar_type(hint: Any) -> Any:
    """``int`` for ``int | None``, ``str`` for a ``Literal`` of strings, else ``hint``."""
    if type(None) in get_args(hint):
        (inner,) = (a for a in get_args(hint) if a is not type(None))
        return _scalar_type(inner)
    choices = choices_of(hint)
    return type(choices[0]) if choices else hint


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """``cls`` from ``args.config`` (if any) overlaid with the flags that were given."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    flags = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return load_config(cls, getattr(args, "config", None), flags)


def progress_bar(args: argparse.Namespace | None, total: int, what: str,
                 unit: str = "step") -> tqdm[Any]:
    """A progress bar on stderr for long work: hidden with -q or when stderr is not a
    terminal (tqdm's own check), so logs and pipes stay clean."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit=unit, leave=False,
                disable=True if getattr(args, "quiet", False) else None)
