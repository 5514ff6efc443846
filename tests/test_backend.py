"""Loading torchac: a build folder per environment, a notice only for a real build, and a
one-line error when the backend cannot be built."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from resilient_tx.codec import backend
from resilient_tx.errors import BackendBuildError


@pytest.fixture
def ext_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return tmp_path


def _fake_build(root: Path, level: str = "") -> None:
    built = root / level / backend.BACKEND
    built.mkdir(parents=True)
    (built / f"{backend.BACKEND}.so").write_bytes(b"\x7fELF")


def test_default_build_folder_belongs_to_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert backend.extensions_dir() == tmp_path / "venv" / "share" / "resilient-tx" / (
        "torch_extensions")


def test_a_given_build_folder_is_respected(ext_dir: Path) -> None:
    assert backend.extensions_dir() == ext_dir


@pytest.mark.parametrize("level", ["", "py311_cpu"])
def test_is_built_finds_the_backend(ext_dir: Path, level: str) -> None:
    assert not backend.is_built(ext_dir)
    _fake_build(ext_dir, level)
    assert backend.is_built(ext_dir)


def test_notice_only_when_a_build_runs(ext_dir: Path, capfd) -> None:
    module = ModuleType("torchac")

    def chatty() -> ModuleType:
        os.write(1, b"ninja: no work to do.\n")
        print("python-level chatter")
        return module

    assert backend.load(importer=chatty) is module
    out, err = capfd.readouterr()
    assert out == "" and "building torchac" in err
    assert "ninja: no work to do." in (ext_dir / backend.LOG_NAME).read_text()
    _fake_build(ext_dir)
    assert backend.load(importer=chatty) is module
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_failed_build_is_one_line_naming_the_compiler(ext_dir: Path, capfd) -> None:
    def no_compiler() -> ModuleType:
        os.write(2, b"[1/2] c++ -c torchac_backend.cpp\n")
        os.write(2, b"/bin/sh: 1: c++: not found\nninja: build stopped: subcommand failed.\n")
        raise RuntimeError("Error building extension 'torchac_backend'")

    with pytest.raises(BackendBuildError) as info:
        backend.load(importer=no_compiler)
    message = str(info.value)
    assert "\n" not in message
    assert "C++ compiler" in message and str(ext_dir / backend.LOG_NAME) in message
    assert "c++: not found" in (ext_dir / backend.LOG_NAME).read_text()
    out, err = capfd.readouterr()
    assert out == "" and "not found" not in err  # the build's output stays in the log
