"""Attacks on a live receiver over loopback: the `resilient-tx recv` serving loop runs in a
background thread of this process, and the test plays legitimate senders and strangers
from their own UDP sockets (one source port each)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_tx.app.demo import sample_path
from resilient_tx.app.recv import serve
from resilient_tx.config import ReceiverConfig, SenderConfig
from resilient_tx.images import load_rgb
from resilient_tx.resilience.auth import PacketKey
from resilient_tx.resilience.collector import NOTICES, Drops
from resilient_tx.resilience.endpoint import Receiver, Sender
from tests.helpers import free_port, load_simulation, wait_listening

KEY = PacketKey.from_secret(b"k" * 32)
OTHER_KEY = PacketKey.from_secret(b"o" * 32)
IMAGE_ID = 7
WAIT_S = 60.0  # generous: the machine may be shared; the checks below are not timings


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    rx = Receiver("neighbor", torch.device("cpu"))  # the cheapest inpainter
    rx.warm_up()
    return rx


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """The legitimate picture and the stranger's (another corner of the sample)."""
    full = load_rgb(sample_path())
    return full[:64, :96], full[-64:, -96:]


def _datagrams(image: np.ndarray, image_id: int, key: PacketKey | None) -> list[bytes]:
    sender = Sender(SenderConfig(fec="light"), torch.device("cpu"), key)
    return sender.datagrams(sender.packets(image, image_id).packets)


def _send(port: int, datagrams: list[bytes]) -> None:
    """From a fresh socket (a new source port), paced so loopback drops nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
            time.sleep(0.001)


def _wait(cond: Callable[[], object], timeout: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


class LiveReceiver:
    """:func:`resilient_tx.app.recv.serve` (what `resilient-tx recv` runs) in a thread,
    cancelled by :meth:`stop`; ``drops`` is its live drop counter."""

    def __init__(self, receiver: Receiver, out: Path, key: PacketKey | None) -> None:
        self.port = free_port("udp")
        self.out = out
        self.cfg = ReceiverConfig(listen=f"127.0.0.1:{self.port}", out_dir=str(out),
                                  deadline=0.5, inpainter="neighbor", device="cpu")
        self.drops = Drops()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, args=(receiver, key), daemon=True)
        self._thread.start()
        self._started.wait(10)
        wait_listening(self.port)

    def _run(self, receiver: Receiver, key: PacketKey | None) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(serve(self.cfg, receiver, key, self.drops))
            self._started.set()
            await self._task

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass  # stop() cancelled it: the socket is closed

    def written(self) -> list[Path]:
        return sorted(self.out.glob("*.png")) if self.out.exists() else []

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
        assert not self._thread.is_alive()


Start = Callable[[PacketKey | None], LiveReceiver]


@pytest.fixture
def live(receiver: Receiver, tmp_path: Path) -> Iterator[Start]:
    """Start receivers with ``start(key)``; all are stopped after the test."""
    started: list[LiveReceiver] = []

    def start(key: PacketKey | None) -> LiveReceiver:
        rx = LiveReceiver(receiver, tmp_path / f"rx{len(started)}", key)
        started.append(rx)
        return rx

    yield start
    for rx in started:
        rx.stop()


@pytest.mark.network
def test_keyed_sender_to_keyed_receiver_delivers(live, images) -> None:
    rx = live(KEY)
    _send(rx.port, _datagrams(images[0], IMAGE_ID, KEY))
    assert _wait(lambda: rx.written())
    assert [p.name for p in rx.written()] == [f"{IMAGE_ID:08x}.png"]
    assert load_rgb(rx.written()[0]).shape == (64, 96, 3)
    assert rx.drops.total == 0


@pytest.mark.network
@pytest.mark.parametrize(("sender_key", "receiver_key", "reason"),
                         [(KEY, None, "unexpected_tag"), (None, KEY, "unauthenticated")])
def test_key_on_one_side_only_writes_nothing(live, images, sender_key, receiver_key,
                                             reason) -> None:
    rx = live(receiver_key)
    sent = _send_two_images(rx, images[0], sender_key)
    assert _wait(lambda: rx.drops.counts.get(reason, 0) == sent)
    time.sleep(2 * rx.cfg.deadline)  # long enough for any image to have been released
    assert rx.written() == []
    assert rx.drops.snapshot() == {reason: sent}


def _send_two_images(rx: LiveReceiver, image: np.ndarray, key: PacketKey | None) -> int:
    """Two images, each from its own port; returns the datagrams sent."""
    sent = 0
    for image_id in (1, 2):
        datagrams = _datagrams(image, image_id, key)
        _send(rx.port, datagrams)
        sent += len(datagrams)
    return sent


# The serving loop shows collector notices only after an image becomes due, and with a key
# on one side only none ever does: the notice must also be shown after a dropped datagram.
@pytest.mark.network
@pytest.mark.parametrize(("sender_key", "receiver_key", "reason"),
                         [(KEY, None, "unexpected_tag"), (None, KEY, "unauthenticated")])
def test_key_on_one_side_only_says_so_once(live, images, capsys, sender_key, receiver_key,
                                           reason) -> None:
    rx = live(receiver_key)
    sent = _send_two_images(rx, images[0], sender_key)
    assert _wait(lambda: rx.drops.counts.get(reason, 0) == sent)
    time.sleep(0.2)  # the notice is printed by the loop that counted the drop
    assert capsys.readouterr().err.count(NOTICES[reason]) == 1


@pytest.mark.network
def test_stranger_reusing_the_id_never_overwrites_unkeyed(live, images) -> None:
    rx = live(None)
    _send(rx.port, _datagrams(images[0], IMAGE_ID, None))
    legit = rx.out / f"{IMAGE_ID:08x}.png"
    assert _wait(legit.exists)
    before = legit.read_bytes()
    _send(rx.port, _datagrams(images[1], IMAGE_ID, None))  # same id, another port
    assert _wait(lambda: len(rx.written()) == 2)
    assert legit.read_bytes() == before
    assert (rx.out / f"{IMAGE_ID:08x}-1.png").exists()  # the stranger's, beside it


@pytest.mark.network
def test_stranger_reusing_the_id_is_dropped_keyed(live, images) -> None:
    rx = live(KEY)
    legit_datagrams = _datagrams(images[0], IMAGE_ID, KEY)
    _send(rx.port, legit_datagrams)
    legit = rx.out / f"{IMAGE_ID:08x}.png"
    assert _wait(legit.exists)
    before = legit.read_bytes()
    forged = _datagrams(images[1], IMAGE_ID, OTHER_KEY)  # signed, with another key
    unsigned = _datagrams(images[1], IMAGE_ID, None)
    _send(rx.port, forged)
    _send(rx.port, unsigned)
    _send(rx.port, legit_datagrams)  # the captured stream itself, from another port
    expected = {"bad_tag": len(forged), "unauthenticated": len(unsigned),
                "replay": len(legit_datagrams)}
    assert _wait(lambda: rx.drops.snapshot() == expected)
    time.sleep(2 * rx.cfg.deadline)
    assert rx.written() == [legit] and legit.read_bytes() == before


FLOOD_S = 3.0
FLOOD_PORTS = 200
LEGIT_AFTER_FLOOD_S = 5.0  # "a few seconds": bounded by the drain of one socket buffer


@pytest.mark.network
def test_replay_flood_then_legit_image_keyed(live, images) -> None:
    rx = live(KEY)
    captured = _datagrams(images[0], 1, KEY)
    _send(rx.port, captured)  # delivered once: the stream the attacker captured
    assert _wait(lambda: len(rx.written()) == 1)
    flooded = load_simulation("attack_bench").flood(captured, rx.port, FLOOD_PORTS, FLOOD_S)
    fresh = _datagrams(images[0], 2, KEY)  # encoded before the clock starts
    t0 = time.monotonic()
    _send(rx.port, fresh)
    assert _wait(lambda: (rx.out / f"{2:08x}.png").exists(), LEGIT_AFTER_FLOOD_S)
    print(f"flood: {flooded} datagrams; legitimate image written "
          f"{time.monotonic() - t0:.2f} s after its first packet; drops {rx.drops.summary()}")
    assert rx.drops.counts.get("replay", 0) > 0
    assert set(rx.drops.counts) <= {"replay"}


def test_fuzz_finds_no_exception_wrong_token_or_overwrite(one_thread: None) -> None:
    bench = load_simulation("attack_bench")
    counts = bench.fuzz(3000, seed=1, round_size=500)["fuzz"]
    assert counts["undocumented_errors"] == 0, counts["first_errors"]
    assert counts["wrong_tokens"] == 0 and counts["overwritten"] == 0
    assert counts["legit_images_checked"] == 6 and counts["tokens_checked"] > 0
    assert counts["files_written"] >= 6
