"""Optional dependencies: which extra brings which feature, and a clear error without it.

The core install (codec, UDP send/recv) needs neither aiortc nor matplotlib; WebRTC comes
with the ``webrtc`` extra and the simulations' plots with ``sim``.
"""

from __future__ import annotations

import importlib.util

from resilient_tx.errors import MissingDependencyError


def require(module: str, extra: str, feature: str) -> None:
    """Raise :class:`MissingDependencyError` naming ``extra`` if ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{feature} needs the optional dependency {module!r}: "
            f"pip install 'resilient-tx[{extra}]'")
