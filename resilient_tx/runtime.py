"""Device and thread selection. Called from ``main`` functions only, never at import."""

from __future__ import annotations

import os

import torch

from resilient_tx.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
#: Set to 1 to keep every decoder computation in float32 (see :func:`native_bf16`).
FLOAT32_ENV = "RESILIENT_TX_FLOAT32"


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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CPU whose oneDNN kernels run bfloat16 natively (AVX-512 BF16
    or AMX): there a bfloat16 conv takes about half the time of a float32 one, where an
    emulated one would be slower. ``RESILIENT_TX_FLOAT32=1`` in the environment says no
    (float32 pixels everywhere, e.g. to compare runs across machines)."""
    if os.environ.get(FLOAT32_ENV, "") not in ("", "0"):
        return False
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:  # a private probe: treat any change in it as "no"
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
