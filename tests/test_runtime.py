"""Device, threads and the bfloat16 probe (resilient_tx/runtime.py)."""

from __future__ import annotations

import pytest
import torch

from resilient_tx.errors import InputError
from resilient_tx.runtime import FLOAT32_ENV, native_bf16, resolve_device, set_threads


def test_resolve_device_names_and_errors() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="--device must be one of"):
        resolve_device("tpu")


def test_set_threads_rejects_negative() -> None:
    with pytest.raises(InputError, match=">= 0"):
        set_threads(-1)


def test_bfloat16_only_on_a_cpu_and_never_when_float32_is_asked(monkeypatch) -> None:
    assert native_bf16(torch.device("cuda")) is False
    monkeypatch.setenv(FLOAT32_ENV, "1")
    assert native_bf16(torch.device("cpu")) is False
    monkeypatch.setenv(FLOAT32_ENV, "0")
    assert isinstance(native_bf16(torch.device("cpu")), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert native_bf16(torch.device("cpu")) is False  # no oneDNN: never
