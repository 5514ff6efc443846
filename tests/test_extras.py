"""Optional dependencies: a missing extra is one clear error that names it."""

from __future__ import annotations

import importlib.util

import pytest

from resilient_tx.errors import MissingDependencyError
from resilient_tx.extras import require
from resilient_tx.transport import open_receiver, open_sender


def test_a_present_module_passes() -> None:
    require("json", "none", "json")


def test_a_missing_module_names_its_extra() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'resilient-tx\[sim\]'"):
        require("surely_not_an_installed_module", "sim", "the plots")


def test_webrtc_without_aiortc_names_the_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiortc" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"resilient-tx\[webrtc\]"):
        open_sender("webrtc", "127.0.0.1:9")
    with pytest.raises(MissingDependencyError, match=r"resilient-tx\[webrtc\]"):
        open_receiver("webrtc", "127.0.0.1:0")
