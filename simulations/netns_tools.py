"""Network namespaces, nft drop rules and child processes for ``netns_loss.py``.

Two namespaces joined by a veth pair (:class:`Netns`), an nft table whose rule drops a
share of the UDP datagrams with ``numgen random`` (:func:`nft_script`, :func:`set_loss`,
changed atomically with ``nft -f``), its named counters (:func:`read_counts`), cleanup
that survives signals (:class:`SignalGuard`), and child processes whose JSON lines are
read in a thread (:class:`Child`). Everything here needs root, ``ip`` and ``nft``;
:func:`unavailable` says why a machine cannot run it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resilient_tx.errors import ResilientTxError

TX_ADDR, RX_ADDR, PREFIX = "10.77.0.1", "10.77.0.2", 24
TABLE = "rtx"
RESOLUTION = 10000  # numgen modulus: drop rates in steps of 0.01 %
SBIN = "/usr/sbin:/sbin"  # where ip and nft live, often missing from a sudo PATH


class NetnsError(ResilientTxError):
    """A system command (ip, nft) failed, or a child process misbehaved."""


class Stopped(Exception):
    """A signal asked us to stop; raised so the cleanup in ``finally`` runs."""


@dataclass(frozen=True)
class Netns:
    """The two namespaces and the veth pair joining them."""

    tx: str
    rx: str
    veth_tx: str
    veth_rx: str

    @classmethod
    def for_pid(cls, pid: int) -> Netns:
        return cls(f"rtx-tx-{pid}", f"rtx-rx-{pid}", f"rtxt{pid}", f"rtxr{pid}")

    def setup_commands(self) -> list[list[str]]:
        """``ip`` argument lists that build the pair (names fit IFNAMSIZ for any pid)."""
        cmds = [["netns", "add", self.tx], ["netns", "add", self.rx],
                ["link", "add", self.veth_tx, "netns", self.tx, "type", "veth", "peer",
                 "name", self.veth_rx, "netns", self.rx]]
        for ns, dev, addr in ((self.tx, self.veth_tx, TX_ADDR), (self.rx, self.veth_rx, RX_ADDR)):
            cmds += [["-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev],
                     ["-n", ns, "link", "set", "lo", "up"], ["-n", ns, "link", "set", dev, "up"]]
        return cmds


def nft_script(match: str, rate: float, create: bool) -> str:
    """An ``nft -f`` transaction: (the table, its counters and input chain, if ``create``)
    then the chain's rules for ``rate``: count every datagram ``match`` selects, drop
    ``rate`` of them at random."""
    t = f"inet {TABLE}"
    lines = [f"add table {t}", f"add counter {t} seen", f"add counter {t} dropped",
             f"add chain {t} in {{ type filter hook input priority 0; policy accept; }}"
             ] if create else []
    lines += [f"flush chain {t} in", f'add rule {t} in {match} counter name "seen"']
    threshold = round(rate * RESOLUTION)
    if threshold > 0:
        lines.append(f"add rule {t} in {match} numgen random mod {RESOLUTION} < {threshold} "
                     'counter name "dropped" drop')
    return "\n".join(lines) + "\n"


def data_match(port: int) -> str:
    return f"ip saddr {TX_ADDR} udp dport {port}"


def feedback_match(port: int) -> str:
    return f"ip saddr {RX_ADDR} udp sport {port}"


@dataclass(frozen=True)
class Counts:
    """Datagrams that reached a loss rule, and those it dropped."""

    seen: int = 0
    dropped: int = 0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.seen - other.seen, self.dropped - other.dropped)

    @property
    def loss(self) -> float | None:
        return self.dropped / self.seen if self.seen else None


def parse_counters(text: str) -> Counts:
    """The ``seen`` and ``dropped`` counters out of ``nft -j list counters``."""
    found = {c["counter"]["name"]: int(c["counter"]["packets"])
             for c in json.loads(text).get("nftables", []) if "counter" in c}
    return Counts(found.get("seen", 0), found.get("dropped", 0))


def tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def _sh(cmd: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, check=False)
    if done.returncode:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def ip(*args: str) -> str:
    return _sh([tool("ip") or "ip", *args])


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return _sh([tool("ip") or "ip", "netns", "exec", ns, tool("nft") or "nft", *args], stdin)


def set_loss(ns: str, match: str, rate: float, create: bool = False) -> None:
    nft(ns, "-f", "-", stdin=nft_script(match, rate, create))


def read_counts(ns: str) -> Counts:
    return parse_counters(nft(ns, "-j", "list", "counters", "table", "inet", TABLE))


def delete_namespaces(*names: str) -> None:
    """Delete what exists of ``names`` (the veth pair goes with them); never raises."""
    for name in names:
        subprocess.run([tool("ip") or "ip", "netns", "del", name], capture_output=True,
                       check=False)


def unavailable() -> str | None:
    """Why this machine cannot run the experiment, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables): run it with sudo"
    for name, package in (("ip", "iproute2"), ("nft", "nftables")):
        if tool(name) is None:
            return f"`{name}` not found ({package})"
    probe = f"rtx-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
        nft(probe, "add", "table", "inet", TABLE)
    except NetnsError as exc:
        return f"cannot create a network namespace with an nft table here: {exc}"
    finally:
        delete_namespaces(probe)
    return None


class SignalGuard:
    """While entered, SIGINT, SIGTERM and SIGHUP raise :class:`Stopped`, so that ``finally``
    removes the namespaces; but once ``armed`` is cleared (the cleanup began) a signal, e.g.
    a second Ctrl-C, is only noted, and raised after the cleanup instead of in its middle.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.armed = True
        self.noted: list[str] = []
        self._old: dict[signal.Signals, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # else handlers can't be set
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        if kind is None and self.noted:
            raise Stopped(self.noted[0])

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.armed:
            self.noted.append(name)
            return
        self.armed = False
        raise Stopped(name)


class Child:
    """A ``resilient-tx`` command inside a namespace; its output read by daemon threads."""

    def __init__(self, ns: str, args: Sequence[str]) -> None:
        cmd = [tool("ip") or "ip", "netns", "exec", ns, sys.executable, "-m", "resilient_tx",
               *args]
        # A session of its own: a terminal's Ctrl-C reaches us, and we stop it in order.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()  # stdout; None at its end
        self.err: list[str] = []
        self._pumps = [threading.Thread(target=self._pump_out, daemon=True),
                       threading.Thread(target=self._pump_err, daemon=True)]
        for pump in self._pumps:
            pump.start()

    def _pump_out(self) -> None:
        for line in self.proc.stdout or ():
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        for line in self.proc.stderr or ():
            self.err.append(line.rstrip("\n"))

    def rest(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The JSON objects still unread on stdout, once the process has ended."""
        for pump in self._pumps:
            pump.join(timeout)
        out = []
        while (line := self.json_line(0.0)) is not None:
            out.append(line)
        return out

    def json_line(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON object on stdout (other lines skipped); None when it ended."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise NetnsError(f"no output for {timeout:g} s: {self.tail()}") from None
            if line is None:
                return None
            if line.startswith("{"):
                return dict(json.loads(line))

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a stderr line contains ``text``."""
        end = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise NetnsError(f"waiting for {text!r}: {self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.err[-lines:]) or f"exit status {self.proc.poll()}"

    def stop(self, grace: float = 5.0) -> None:
        """SIGINT (the receiver prints its summary), then SIGKILL after ``grace`` s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
