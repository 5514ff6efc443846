"""Attacks on a live `resilient-tx recv` over loopback, and what they cost it.

Runs the receiver as a subprocess (so its CPU time and RSS are its own, read from
/proc/PID) and, for keyed and unkeyed receivers:

(a) replays one captured legitimate stream from many source ports for ``--flood-s``
    seconds, sends a fresh legitimate image during the flood, and times how long until
    the receiver writes it;
(b) sends packets whose header claims k = n = 65535 for a 16 x 16 image and reports the
    receiver CPU seconds they cost;
(c) samples the receiver's RSS before, during (peak) and after the flood.

Every phase is bounded in seconds. Prints one JSON object per receiver mode.

    python simulations/attack_bench.py --flood-s 10 --ports 300
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from resilient_tx.app.demo import sample_path
from resilient_tx.config import SenderConfig
from resilient_tx.images import load_rgb
from resilient_tx.resilience.auth import PacketKey
from resilient_tx.resilience.endpoint import Sender
from resilient_tx.resilience.packet import Packet

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
          peak: list[int], pid: int, pps: float) -> int:
    """Replay ``datagrams`` from ``ports`` source ports for ``seconds`` at about ``pps``
    datagrams per second (0: as fast as possible); sample RSS."""
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
                    except OSError:
                        pass
                if time.monotonic() >= next_sample:
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
        time.sleep(2.0)
        cpu1, rss1 = proc_stat(rx.proc.pid)
        result["rss_mb"] = {"before": round(rss0 / 2**20, 1), "peak_during": round(
            peak[0] / 2**20, 1), "after": round(rss1 / 2**20, 1)}
        result["receiver_cpu_s_flood"] = round(cpu1 - cpu0, 2)
    finally:
        err = rx.stop()
    result["receiver_stderr_tail"] = [ln for ln in err if "dropped" in ln][-3:]
    return result


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
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            print(json.dumps(run_mode(mode == "keyed", args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
