"""Attacks on a live `resilient-tx recv` over loopback, and what they cost it.

Runs the receiver as a subprocess (so its CPU time and RSS are its own, read from
/proc/PID) and, for keyed and unkeyed receivers:

(a) replays one captured legitimate stream from many source ports for ``--flood-s``
    seconds, sends a fresh legitimate image during the flood and another right after
    it, and times how long until the receiver writes each;
(b) sends packets whose header claims k = n = 65535 for a 16 x 16 image and reports the
    receiver CPU seconds they cost;
(c) samples the receiver's RSS before, during (peak) and after the flood.

Every phase is bounded in seconds. Prints one JSON object per receiver mode.

    python simulations/attack_bench.py --flood-s 10 --ports 300

``--fuzz N`` instead feeds N mutated datagrams through the receiver's sans-IO path in this
process (no sockets; see :func:`fuzz`) and prints one JSON object of counts:

    python simulations/attack_bench.py --fuzz 1000000
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import queue
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from resilient_tx.app.demo import sample_path
from resilient_tx.app.recv import output_path
from resilient_tx.app.session import FairQueue, make_collector
from resilient_tx.codec.image_codec import Codec
from resilient_tx.config import ReceiverConfig, SenderConfig
from resilient_tx.errors import ResilientTxError
from resilient_tx.images import FAST_PNG_LEVEL, load_rgb, save_rgb
from resilient_tx.resilience import reassembly
from resilient_tx.resilience.auth import PacketKey
from resilient_tx.resilience.collector import Collector, DueImage
from resilient_tx.resilience.endpoint import Receiver as Decoder
from resilient_tx.resilience.endpoint import Sender
from resilient_tx.resilience.packet import (  # noqa: E402
    HEADER_SIZE,
    KEYED_FLAG,
    MAGIC,
    TRAILER_SIZE,
    Packet,
    header_size_of,
)
from resilient_tx.zoo.registry import get_model

CROP = (64, 96)  # a small image keeps each decode short on 2 cores


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


class Receiver:
    """`resilient-tx recv --json` in a subprocess; its report lines land in a queue."""

    def __init__(self, port: int, out: Path, key_file: Path | None) -> None:
        cmd = [sys.executable, "-m", "resilient_tx", "recv", "--listen", f"127.0.0.1:{port}",
               "--out-dir", str(out), "--json", "--threads", "1", "--inpainter", "neighbor",
               "--device", "cpu", "--deadline", "0.3"]
        if key_file is not None:
            cmd += ["--key-file", str(key_file)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[dict] = queue.Queue()
        self.stderr: list[str] = []
        self.loaded = threading.Event()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if "models loaded" in line:
                self.loaded.set()

    def wait_for(self, image_id: int, timeout: float) -> dict | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                got = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                return None
            if got["image_id"] == f"{image_id:08x}":
                return got
        return None

    def stop(self) -> list[str]:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        time.sleep(0.2)
        return self.stderr


def flood(datagrams: list[bytes], port: int, ports: int, seconds: float,
          peak: list[int] | None = None, pid: int | None = None, pps: float = 0) -> int:
    """Replay ``datagrams`` from ``ports`` source ports for ``seconds`` at about ``pps``
    datagrams per second (0: as fast as possible); with ``pid``, sample that process's
    peak RSS into ``peak[0]``. Returns how many datagrams were sent."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(ports)]
    start = time.monotonic()
    sent, end, next_sample = 0, start + seconds, 0.0
    try:
        while time.monotonic() < end:
            for s in socks:
                if pps and sent > (time.monotonic() - start) * pps:
                    time.sleep(len(datagrams) / pps)
                for d in datagrams:
                    try:
                        s.sendto(d, ("127.0.0.1", port))
                        sent += 1
                    except OSError:  # a full socket buffer: the flood is saturating
                        pass
                if pid is not None and peak is not None and time.monotonic() >= next_sample:
                    peak[0] = max(peak[0], proc_stat(pid)[1])
                    next_sample = time.monotonic() + 0.2
                if time.monotonic() >= end:
                    break
    finally:
        for s in socks:
            s.close()
    return sent


def send_once(datagrams: list[bytes], port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
            time.sleep(0.0005)  # a paced legitimate sender


def amplification(port: int, pid: int, count: int) -> dict[str, float]:
    """Headers claiming k = n = 65535 for a 16 x 16 image: receiver CPU they cost."""
    model_id = Packet.parse(LEGIT[0]).model_id
    before = proc_stat(pid)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            p = Packet(image_id=i, model_id=model_id, width=16, height=16, rate_point=0,
                       stage=1, index=i % 65535, k=65535, n=65535, payload=bytes(100))
            s.sendto(bytes(p), ("127.0.0.1", port))
    time.sleep(1.0)
    return {"packets": count, "receiver_cpu_s": round(proc_stat(pid)[0] - before, 3)}


LEGIT: list[bytes] = []


def run_mode(keyed: bool, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    key_file = workdir / "key"
    key_file.write_bytes(os.urandom(32))
    os.chmod(key_file, 0o600)
    key = PacketKey.from_secret(key_file.read_bytes()) if keyed else None
    sender = Sender(SenderConfig(fec="light"), torch.device("cpu"), key)
    image = load_rgb(sample_path())[: CROP[0], : CROP[1]]
    captured = sender.datagrams(sender.packets(image, 1).packets)
    LEGIT[:] = captured
    port = free_port()
    rx = Receiver(port, workdir / ("keyed" if keyed else "plain"), key_file if keyed else None)
    result: dict[str, object] = {"mode": "keyed" if keyed else "unkeyed"}
    try:
        if not rx.loaded.wait(300):
            raise RuntimeError("receiver did not load its models: " + "\n".join(rx.stderr))
        send_once(captured, port)  # the stream the attacker captures, delivered once
        first = rx.wait_for(1, 30)
        result["captured_image_written"] = first is not None
        cpu0, rss0 = proc_stat(rx.proc.pid)
        result["amplification"] = amplification(port, rx.proc.pid, args.amp_packets)
        peak = [rss0]
        flooder = threading.Thread(target=lambda: result.__setitem__(
            "flood_datagrams", flood(captured, port, args.ports, args.flood_s, peak,
                                     rx.proc.pid, args.flood_pps)), daemon=True)
        flooder.start()
        time.sleep(args.flood_s / 2)
        fresh = sender.datagrams(sender.packets(image, 2).packets)
        t0 = time.monotonic()
        send_once(fresh, port)
        got = rx.wait_for(2, args.flood_s / 2 + args.wait_s)
        result["legit_during_flood_s"] = None if got is None else round(time.monotonic() - t0, 3)
        flooder.join()
        # And one sent right after the flood: what is still queued must not delay it.
        after = sender.datagrams(sender.packets(image, 3).packets)
        t0 = time.monotonic()
        send_once(after, port)
        got = rx.wait_for(3, args.wait_s)
        result["legit_after_flood_s"] = None if got is None else round(time.monotonic() - t0, 3)
        time.sleep(2.0)
        cpu1, rss1 = proc_stat(rx.proc.pid)
        result["rss_mb"] = {"before": round(rss0 / 2**20, 1), "peak_during": round(
            peak[0] / 2**20, 1), "after": round(rss1 / 2**20, 1)}
        result["receiver_cpu_s_flood"] = round(cpu1 - cpu0, 2)
    finally:
        err = rx.stop()
    result["receiver_stderr_tail"] = [ln for ln in err if "dropped" in ln or "skipped" in ln][-3:]
    return result


# --- fuzz: mutated datagrams through the receiver's sans-IO path, without sockets ------

# (offset, size) of every header field after the magic: version, flags, image id, model
# id, width, height, rate point, stage, chunk index, k, n, then in version 2 the payload
# length, seq and total, in version 3 seq and total.
_COMMON = [(4, 1), (5, 1), (6, 4), (10, 8), (18, 2), (20, 2), (22, 1), (23, 1)]
FIELDS_V2 = [*_COMMON, (24, 2), (26, 2), (28, 2), (30, 2), (32, 2), (34, 2)]
FIELDS_V3 = [*_COMMON, (24, 1), (25, 1), (26, 1), (27, 2), (29, 2)]
SIZE_FIELDS = (18, 20)  # width and height
MAX_FUZZ_SIDE = 512  # decoding a huge picture is the caps' business, not the fuzzer's
LEGIT_ADDR, STRANGER_ADDR = "legit", "stranger"  # the two sender addresses of the fuzz


def fix_crc(data: bytes) -> bytes:
    """``data`` with the CRC a sender would have written (what a deliberate attacker does;
    a corrupted packet keeps its stale CRC)."""
    head, end = _payload_span(data)
    if len(data) < head:
        return data
    crc = zlib.crc32(data[head:end], zlib.crc32(data[:head - 4])) & 0xFFFFFFFF
    return data[:head - 4] + struct.pack("<I", crc) + data[head:]


def _payload_span(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload the datagram's header announces; the current version's
    header size for a version this build does not read."""
    head = header_size_of(data) or HEADER_SIZE
    if len(data) > 4 and data[4] == 3:  # no length field: the rest, less any trailer
        keyed = len(data) > 5 and data[5] & KEYED_FLAG
        return head, max(head, len(data) - (TRAILER_SIZE if keyed else 0))
    (length,) = struct.unpack_from("<H", data, 30) if len(data) >= 32 else (0,)
    return head, head + length


def _set_field(rng: random.Random, data: bytes) -> bytes:
    """One header field of ``data`` set to a random value."""
    off, size = rng.choice(FIELDS_V3 if len(data) > 4 and data[4] == 3 else FIELDS_V2)
    if off in SIZE_FIELDS:
        value = rng.randint(0, MAX_FUZZ_SIDE).to_bytes(2, "little")
    else:
        value = rng.getrandbits(8 * size).to_bytes(size, "little")
    return data[:off] + value + data[off + size:]


def _flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _extend(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.randint(1, 64))


def _payload_byte(rng: random.Random, data: bytes) -> bytes:
    """A payload byte changed and the CRC fixed: wrong bytes reach the entropy decoder."""
    head, end = _payload_span(data)
    if end <= head or end > len(data):
        return _set_field(rng, data)
    i = rng.randrange(head, end)
    return fix_crc(data[:i] + bytes([data[i] ^ rng.randint(1, 255)]) + data[i + 1:])


def _random_header(rng: random.Random, model_id: bytes) -> bytes:
    """A CRC-valid datagram with random fields (small pictures, mostly our model)."""
    keyed = rng.random() < 0.25
    version = rng.choice((1, 2, 3))
    top = 0xFF if version == 3 else 0xFFFF  # version 3 holds k and n in a byte
    k = rng.randint(1, 64) if rng.random() < 0.8 else rng.randint(1, top)
    n = min(top, k + rng.randint(0, 16))
    payload = rng.randbytes(rng.randint(0, 1100))
    common = (rng.randrange(8) | (8 if keyed else 0), rng.getrandbits(32),
              model_id if rng.random() < 0.7 else rng.randbytes(8),
              rng.randint(1, MAX_FUZZ_SIDE), rng.randint(1, MAX_FUZZ_SIDE),
              rng.randrange(256), rng.randint(0 if version >= 2 else 1, 8), rng.randrange(n),
              k, n)
    total = rng.randint(1, 0xFFFF)
    if version == 3:
        fields = struct.pack("<4sBBI8sHHBBBBBHH", MAGIC, 3, *common, rng.randrange(total),
                             total)
    else:
        fields = struct.pack("<4sBBI8sHHBBHHHH", MAGIC, version, *common, len(payload))
    if version == 2:
        fields += struct.pack("<HH", rng.randrange(total), total)
    tail = rng.randbytes(TRAILER_SIZE) if keyed else b""
    return fix_crc(fields + bytes(4) + payload) + tail


# Accidents (what a channel does) and deliberate changes (what a stranger does).
ACCIDENTS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "bit_flip": _flip_bits, "truncate": _truncate, "extend": _extend,
    "field": _set_field}
CRAFTED: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "field_crc": lambda rng, d: fix_crc(_set_field(rng, d)), "payload_crc": _payload_byte}


@dataclasses.dataclass
class FuzzCounts:
    """What one fuzz run found: ``undocumented_errors``, ``wrong_tokens`` and
    ``overwritten`` must be zero."""

    datagrams: int = 0
    by_mutation: dict[str, int] = dataclasses.field(default_factory=dict)
    images_decoded: int = 0
    documented_errors: dict[str, int] = dataclasses.field(default_factory=dict)
    undocumented_errors: int = 0
    first_errors: list[str] = dataclasses.field(default_factory=list)
    legit_images_checked: int = 0
    tokens_checked: int = 0
    wrong_tokens: int = 0
    files_written: int = 0
    overwritten: int = 0
    drops: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def error(self, where: str, exc: BaseException) -> None:
        self.undocumented_errors += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{where}: {type(exc).__name__}: {exc}")


@dataclasses.dataclass
class FuzzTarget:
    """One receiver (keyed or not) as session.py assembles it, minus the sockets."""

    name: str
    collector: Collector
    queue: FairQueue
    sender: Sender
    out: Path


class Fuzzer:
    """Feeds rounds of genuine and mutated datagrams to a keyed and an unkeyed receiver."""

    def __init__(self, out: Path, seed: int, round_size: int) -> None:
        self.rng = random.Random(seed)
        self.round_size = round_size
        self.counts = FuzzCounts()
        self.cfg = ReceiverConfig(inpainter="neighbor", device="cpu")
        self.decoder = Decoder("neighbor", torch.device("cpu"))
        send_cfg = SenderConfig(fec="light")
        self.codec = Codec(get_model(send_cfg.rate), torch.device("cpu"))
        key = PacketKey.from_secret(os.urandom(32))
        image = load_rgb(sample_path())[: CROP[0], : CROP[1]]
        self.targets = [self._target("keyed", Sender(send_cfg, torch.device("cpu"), key),
                                     out, key),
                        self._target("unkeyed", Sender(send_cfg, torch.device("cpu")), out,
                                     None)]
        sent = self.targets[1].sender.packets(image, 0)
        self.packets, self.tokens = sent.packets, sent.tokens
        self.model_id = self.packets[0].model_id
        self.now = 0.0  # the collector's clock: simulated, so deadlines cost no waiting
        self.legit_files: dict[Path, str] = {}

    def _target(self, name: str, sender: Sender, out: Path,
                key: PacketKey | None) -> FuzzTarget:
        collector = make_collector(self.decoder, self.cfg, key)
        queue_ = FairQueue(self.cfg.max_queued, self.cfg.max_queued_per_sender,
                           self.cfg.max_queue_age, collector.drops)
        return FuzzTarget(name, collector, queue_, sender, out / name)

    def run(self, total: int) -> FuzzCounts:
        image_id = 0
        while self.counts.datagrams < total:
            image_id += 1
            target = self.targets[image_id % 2]
            self._round(target, image_id, min(self.round_size, total - self.counts.datagrams))
        for t in self.targets:
            self.counts.drops[t.name] = t.collector.drops.snapshot()
        self._check_legit_files()
        return self.counts

    def _round(self, target: FuzzTarget, image_id: int, n: int) -> None:
        """One image sent genuinely, among ``n`` mutated datagrams; then every image due
        is decoded and written."""
        packets = [dataclasses.replace(p, image_id=image_id) for p in self.packets]
        keyed = self.targets[0].sender.datagrams(packets)
        plain = [bytes(p) for p in packets]
        genuine = keyed if target.name == "keyed" else plain
        stream = [(d, LEGIT_ADDR, "genuine") for d in genuine]
        stream += [self._mutant(target, keyed + plain) for _ in range(n)]
        self.rng.shuffle(stream)
        for data, sender, kind in stream:
            self.counts.by_mutation[kind] = self.counts.by_mutation.get(kind, 0) + 1
            self.now += 1e-4
            try:
                due = target.collector.feed(data, sender, self.now)
            except Exception as exc:  # noqa: BLE001 -- counting exactly these is the point
                self.counts.error("feed", exc)
                continue
            if due is not None:
                target.queue.push(due, self.now)
        self.counts.datagrams += n
        self.now += self.cfg.deadline + 1.0
        for due in target.collector.expired(self.now):
            target.queue.push(due, self.now)
        while (due := target.queue.pop(self.now)) is not None:
            self._decode(target, due, image_id)

    def _mutant(self, target: FuzzTarget, pool: list[bytes]) -> tuple[bytes, str, str]:
        """(datagram, sender address, mutation). Accidents come from the legitimate
        sender; deliberate changes from a stranger, except at the keyed receiver, where
        even the legitimate address must not get a changed packet through."""
        roll = self.rng.random()
        if roll < 0.1:
            return _random_header(self.rng, self.model_id), STRANGER_ADDR, "random_header"
        name, fn = self.rng.choice([*ACCIDENTS.items(), *CRAFTED.items()])
        data = fn(self.rng, self.rng.choice(pool))
        crafted = name in CRAFTED
        who = STRANGER_ADDR if crafted and target.name == "unkeyed" else LEGIT_ADDR
        return data, who, name

    def _decode(self, target: FuzzTarget, due: DueImage, image_id: int) -> None:
        try:
            got = self.decoder.finish(due)
        except ResilientTxError as exc:  # what session.py hands to on_skip
            kind = type(exc).__name__
            self.counts.documented_errors[kind] = self.counts.documented_errors.get(kind, 0) + 1
            return
        except Exception as exc:  # noqa: BLE001
            self.counts.error("finish", exc)
            return
        self.counts.images_decoded += 1
        if due.key == (LEGIT_ADDR, image_id, self.model_id):
            self._check_tokens(due)
        self._write(target, got.image, due)

    def _check_tokens(self, due: DueImage) -> None:
        """Every token the receiver calls known must be the sender's."""
        exact = reassembly.decode(self.codec, due.assembler)
        known = exact.known
        self.counts.legit_images_checked += 1
        self.counts.tokens_checked += int(known.sum())
        wrong = (exact.tokens != self.tokens).any(dim=0) & known
        self.counts.wrong_tokens += int(wrong.sum())

    def _write(self, target: FuzzTarget, image: np.ndarray, due: DueImage) -> None:
        """Through recv's naming rule; a path that already exists would be an overwrite."""
        target.out.mkdir(parents=True, exist_ok=True)
        path = output_path(target.out, due.key[1], overwrite=False)
        if path.exists():
            self.counts.overwritten += 1
        save_rgb(image, path, FAST_PNG_LEVEL)
        self.counts.files_written += 1
        if due.key[0] == LEGIT_ADDR:
            self.legit_files[path] = hashlib.sha256(path.read_bytes()).hexdigest()

    def _check_legit_files(self) -> None:
        """The legitimate pictures are still the ones written (nothing replaced them)."""
        for path, digest in self.legit_files.items():
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                self.counts.overwritten += 1


def fuzz(total: int, seed: int = 0, round_size: int = 2000) -> dict[str, object]:
    """Feed ``total`` mutated datagrams (bit flips, truncations, extensions and field
    changes of one image's genuine keyed and unkeyed packets, payload changes with the CRC
    fixed, and CRC-valid random headers) to a keyed and an unkeyed receiver, each built
    as session.py builds it (collector with admission checks and caps, fair decode queue,
    decode and inpaint), with every image written through recv's naming rule. Each round
    also carries one genuine image, whose exactly decoded tokens are checked against the
    sender's. Counts undocumented exceptions, wrong tokens and overwritten files."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        counts = Fuzzer(Path(tmp), seed, round_size).run(total)
    return {"fuzz": dataclasses.asdict(counts), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood-s", type=float, default=10.0)
    ap.add_argument("--ports", type=int, default=300)
    ap.add_argument("--flood-pps", type=float, default=0.0,
                    help="flood rate in datagrams/s (0: as fast as this machine sends)")
    ap.add_argument("--amp-packets", type=int, default=10000)
    ap.add_argument("--wait-s", type=float, default=30.0, help="longest wait for the "
                    "legitimate image after the flood")
    ap.add_argument("--modes", default="keyed,unkeyed")
    ap.add_argument("--fuzz", type=int, default=0, metavar="N",
                    help="instead: feed N mutated datagrams through the receiver in-process")
    ap.add_argument("--seed", type=int, default=0, help="of the fuzz (default: 0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.fuzz:
        print(json.dumps(fuzz(args.fuzz, args.seed)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            print(json.dumps(run_mode(mode == "keyed", args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
