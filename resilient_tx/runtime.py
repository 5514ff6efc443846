"""Device and thread selection. Called from ``main`` functions only, never at import."""

from __future__ import annotations

import torch

from resilient_tx.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a ``--device`` flag; ``auto`` picks CUDA when there is one."""
    if name not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def set_threads(n: int) -> None:
    """``n`` > 0 pins torch's intra-op threads; 0 keeps torch's default."""
    if n < 0:
        raise InputError(f"--threads must be >= 0, got {n}")
    if n:
        torch.set_num_threads(n)
