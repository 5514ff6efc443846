"""Loading torchac, whose C++ arithmetic coder is compiled on this machine at first use.

torchac builds its backend with ``torch.utils.cpp_extension.load`` (a C++ compiler and
``ninja`` are needed). Three things make that predictable here:

* **One build per environment.** Unless ``TORCH_EXTENSIONS_DIR`` is set, the build goes
  into a folder inside the active Python environment (``sys.prefix``), not torch's
  per-user cache: two virtual environments with different torch builds would otherwise
  share one folder and rebuild each other's backend every time the other one ran. If
  that folder is not writable (a system-wide Python), torch's default cache is used.
* **A notice only when a build really runs.** The notice is printed when no built
  backend is found in the build folder, not whenever the import happens to be slow.
* **One line when it cannot be built.** The compiler's output is held back (on stdout it
  would corrupt ``--json`` lines) and written to a log file; a failed build raises
  :class:`~resilient_tx.errors.BackendBuildError` naming what to install and the log.

Why not build at install time or ship it prebuilt: the backend must match the torch the
user actually runs (CPU or CUDA build, version), which is chosen after this package is
installed, and a prebuilt binary would need one per platform and torch ABI.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TextIO

from resilient_tx.errors import BackendBuildError

BACKEND = "torchac_backend"
LOG_NAME = "torchac-build.log"


def extensions_dir() -> Path:
    """Where torch builds C++ extensions for this environment (see the module docstring)."""
    given = os.environ.get("TORCH_EXTENSIONS_DIR")
    if given:
        return Path(given)
    ours = Path(sys.prefix) / "share" / "resilient-tx" / "torch_extensions"
    try:
        ours.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only prefix: fall back to torch's own per-user default
        return Path.home() / ".cache" / "torch_extensions"
    return ours if os.access(ours, os.W_OK) else Path.home() / ".cache" / "torch_extensions"


def is_built(root: Path) -> bool:
    """Whether a built backend already lies under ``root`` (torch builds it directly in
    ``TORCH_EXTENSIONS_DIR``, or in a python/cuda-version folder of its default cache)."""
    return any(found for pattern in ("", "*/") for ext in ("so", "pyd")
               for found in root.glob(f"{pattern}{BACKEND}/{BACKEND}*.{ext}"))


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """Send fds 1 and 2 (ninja, the compiler) and Python's own prints to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    chatter = io.StringIO()
    with log.open("wb") as f:
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            f.write(chatter.getvalue().encode())


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or [ln for ln in lines if ln] or [""])[-1][:200]


def _import_torchac() -> ModuleType:
    import torchac

    return torchac


def load(notice: TextIO | None = None, importer: object = None) -> ModuleType:
    """Import torchac, building its backend into :func:`extensions_dir` if needed.

    ``notice`` (default stderr) gets one line when a build starts; ``importer`` replaces
    the real import in tests.
    """
    root = extensions_dir()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(root))
    root.mkdir(parents=True, exist_ok=True)
    if not is_built(root):
        print(f"resilient-tx: building torchac's C++ backend in {root} (once per "
              "environment; from about 25 s to a few minutes)...",
              file=notice or sys.stderr, flush=True)
    log = root / LOG_NAME
    do_import = importer if callable(importer) else _import_torchac
    try:
        with _output_to(log):
            module = do_import()
    except Exception as exc:  # the build's own errors come in many types
        detail = _last_line(log) or f"{type(exc).__name__}: {exc}"
        raise BackendBuildError(
            f"could not build torchac's C++ backend ({detail}); it needs a C++ compiler "
            "(Debian/Ubuntu: apt install g++; Fedora: dnf install gcc-c++; macOS: "
            f"xcode-select --install). Full build log: {log}") from exc
    if not isinstance(module, ModuleType):
        raise BackendBuildError(f"importing torchac gave {type(module).__name__}, "
                                "not a module")
    return module


@lru_cache(maxsize=1)
def torchac() -> ModuleType:
    """The torchac module, loaded once per process."""
    return load()
