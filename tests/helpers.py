"""Helpers shared by several test modules (fixtures live in ``conftest.py``).

Test modules import from here, never from one another.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

from resilient_tx.codec.image_codec import Codec
from resilient_tx.config import DEFAULT_MAX_PACKET, ModelConfig
from resilient_tx.model import PQMIM
from resilient_tx.training.kmeans import cluster_codebooks, cluster_sum_marginals
from resilient_tx.transport import PacketReceiver
from resilient_tx.zoo.checkpoint import LoadedModel, load_model, save_model
from resilient_tx.zoo.derived import build_model

REPO = Path(__file__).resolve().parents[1]


def make_codec(tmp_path: Path, cfg: ModelConfig, seed: int = 0) -> Codec:
    """A codec on a randomly initialised tiny model saved under ``tmp_path``."""
    torch.manual_seed(seed)
    marg = torch.randint(1, 50, (cfg.num_subvectors, cfg.codebook_size))
    save_model(tmp_path / "tiny.pt", PQMIM(cfg), marg, {})
    return Codec(load_model(tmp_path / "tiny.pt"))


def load_simulation(name: str) -> ModuleType:
    """Import ``simulations/<name>.py`` (not a package) as module ``name``."""
    path = REPO / "simulations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses in the script look their module up by name
    spec.loader.exec_module(mod)
    return mod


def derive_cluster_summed(base: LoadedModel, k: int, name: str = "") -> LoadedModel:
    """A k-means rate point of ``base`` with cluster-summed marginals: unlike the shipped
    points it needs no pass over training images, so tests can build one cheaply."""
    books, _ = cluster_codebooks(base, k)
    return build_model(base, books, cluster_sum_marginals(base, books),
                       name or f"{base.name}-k{k}", {})


# --- running the example programs and commands against each other on loopback --------

R = TypeVar("R")
T = TypeVar("T")


def load_script(relative: str) -> ModuleType:
    """Import a runnable script of the repository (e.g. ``sender/send_image.py``)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod  # dataclasses in the script look their module up by name
    spec.loader.exec_module(mod)
    return mod


def free_port(transport: str = "udp") -> int:
    """A free loopback port: UDP for udp, TCP (the signalling socket) for webrtc."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call_in_thread(fn: Callable[..., R], *args: Any) -> tuple[threading.Thread, list[R]]:
    """Start ``fn(*args)`` in a daemon thread; returns the thread and a list that will
    hold its return value (a receiver's ``main`` blocks until its images are in)."""
    results: list[R] = []
    thread = threading.Thread(target=lambda: results.append(fn(*args)), daemon=True)
    thread.start()
    return thread, results


def wait_listening(port: int, transport: str = "udp", timeout: float = 120.0) -> None:
    """Block until a receiver owns ``port`` (UDP bound, or TCP listening for the WebRTC
    signalling), so no packet is sent before anyone listens: a fixed sleep loses packets
    on a loaded machine.

    The probe reads the kernel's socket table rather than binding the port itself, which
    could take the port from a receiver that is about to bind it. Where there is no
    ``/proc/net`` (not Linux) it falls back to trying to bind the port.
    """
    table = Path("/proc/net/udp" if transport == "udp" else "/proc/net/tcp")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if table.exists() and _in_socket_table(table, port, listening=transport != "udp"):
            return
        if not table.exists() and _port_taken(port, transport):
            return
        time.sleep(0.02)
    raise TimeoutError(f"receiver did not open port {port} within {timeout} s")


def _in_socket_table(table: Path, port: int, listening: bool) -> bool:
    suffix = f":{port:04X}"
    for row in table.read_text().splitlines()[1:]:
        cols = row.split()
        if cols[1].endswith(suffix) and (not listening or cols[3] == "0A"):  # 0A = LISTEN
            return True
    return False


def _port_taken(port: int, transport: str) -> bool:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# ----- transports: bounded event loops and datagram collection ---------------------------
LOOPBACK = "127.0.0.1:0"


def run_bounded(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run one test coroutine in a fresh loop, failing (not hanging) after ``timeout``."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def random_packets(count: int, seed: int = 0, low: int = 1,
                   high: int = DEFAULT_MAX_PACKET) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]


async def collect(receiver: PacketReceiver, count: int,
                  timeout: float = 5.0) -> list[tuple[bytes, str]]:
    """Exactly ``count`` datagrams, or TimeoutError if they do not all arrive."""
    return [await asyncio.wait_for(receiver.recv(), timeout) for _ in range(count)]


async def settle(receiver: PacketReceiver, quiet: float = 0.2) -> list[tuple[bytes, str]]:
    """Everything that arrives until the receiver has been silent for ``quiet`` s."""
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(receiver.recv(), quiet))
        except asyncio.TimeoutError:
            return got


def payloads(items: Sequence[tuple[bytes, str]]) -> Counter[bytes]:
    return Counter(data for data, _ in items)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
