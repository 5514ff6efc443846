"""End to end on loopback: `resilient-tx recv` and `resilient-tx send` through main(argv)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from resilient_tx.app.cli import main
from resilient_tx.app.demo import sample_path
from resilient_tx.eval.metrics import psnr
from resilient_tx.images import load_rgb
from resilient_tx.transport import open_sender

# Measured 2026-11-26 with this exact send (light FEC, depth 2, 30 % Bernoulli loss, seed 1,
# low rate): 10 of 13 packets arrive, 704 tokens inpainted, 21.95 dB on both transports.
PSNR_FLOOR = 21.0


def _free_port(transport: str) -> int:
    """A free loopback port: UDP for udp, TCP (the signalling socket) for webrtc."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, transport: str, timeout: float = 120.0) -> None:
    """Block until the receiver owns ``port`` (binding it ourselves fails), so no packet is
    sent before anyone listens -- a fixed sleep loses packets on a loaded machine."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise TimeoutError(f"receiver did not open port {port} within {timeout} s")


def _recv_in_thread(argv: list[str]) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    t.start()
    return t, codes


@pytest.mark.network
@pytest.mark.parametrize("transport", ["udp", "webrtc"])
def test_send_recv_loopback_with_simulated_loss(tmp_path: Path, capsys, transport) -> None:
    port = _free_port(transport)
    out = tmp_path / "rx"
    t, codes = _recv_in_thread(["recv", "--listen", f"127.0.0.1:{port}", "--count", "1",
                                "--out-dir", str(out), "--json", "--transport", transport,
                                "--threads", "1", "--deadline", "1.0"])
    _wait_listening(port, transport)  # models load before the socket opens
    assert main(["send", str(sample_path()), "--to", f"127.0.0.1:{port}", "--transport",
                 transport, "--sim-loss", "0.3", "--seed", "1", "--threads", "1"]) == 0
    t.join(timeout=120)
    assert not t.is_alive() and codes == [0]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1])
    assert report["packets_received"] < report["packets_sent"]  # the loss really happened
    written = load_rgb(report["output"])
    assert psnr(load_rgb(sample_path()), written) > PSNR_FLOOR


def test_send_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["send", str(tmp_path / "nope.png"), "--to", "127.0.0.1"]) == 2
    assert main(["send", str(sample_path())]) == 2
    bad = tmp_path / "c.yaml"
    bad.write_text("send:\n  colour: red\n")
    assert main(["send", str(sample_path()), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "--to" in err and "colour" in err
    assert "Traceback" not in err


def test_recv_rejects_bad_deadline(capsys) -> None:
    assert main(["recv", "--deadline", "0"]) == 2
    assert "--deadline" in capsys.readouterr().err


@pytest.mark.parametrize("section, line, needle", [
    ("send", "threads: two", "send.threads: expected int, got 'two'"),
    ("send", "max_packet: 1200.5", "send.max_packet: expected int"),
    ("send", "transport: tcp", "send.transport: must be one of udp, webrtc"),
    ("send", "sim_loss: lots", "send.sim_loss: expected float"),
    ("send", "rate: 3", "send.rate: expected str, got 3"),
    ("recv", "json: 1", "recv.json: expected true or false"),
    ("recv", "inpainter: magic", "recv.inpainter: must be one of mim, ar, neighbor, none"),
    ("recv", "deadline: [1]", "recv.deadline: expected float"),
])
def test_config_values_are_checked_like_flags(tmp_path: Path, capsys, section: str,
                                              line: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  {line}\n  to: 127.0.0.1\n" if section == "send"
                   else f"{section}:\n  {line}\n")
    argv = (["send", str(sample_path())] if section == "send" else ["recv"])
    assert main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(cfg) in err
    assert "Traceback" not in err


def test_config_numbers_become_the_flags_types(tmp_path: Path) -> None:
    from resilient_tx.app.cli import build_parser
    from resilient_tx.app.netcmd import SEND_DEFAULTS, apply_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("send:\n  pace: 20\n  burst: 3\n  seed: null\n")
    args = build_parser().parse_args(["send", "x.png", "--config", str(cfg)])
    apply_config(args, "send", SEND_DEFAULTS)
    assert args.pace == 20.0 and isinstance(args.pace, float)
    assert args.burst == 3.0 and isinstance(args.burst, float)
    assert args.fec == "light"  # untouched keys keep their defaults
    assert args.seed == 0  # null in the file means "the default"


def test_recv_rejects_negative_count(capsys) -> None:
    assert main(["recv", "--count", "-1"]) == 2
    assert "--count must be >= 0" in capsys.readouterr().err


def test_example_config_documents_every_option() -> None:
    import yaml

    from resilient_tx.app.netcmd import RECV_DEFAULTS, SEND_DEFAULTS

    path = Path(__file__).resolve().parents[1] / "resilient_tx/configs/transport.example.yaml"
    data = yaml.safe_load(path.read_text())
    assert set(data["send"]) == set(SEND_DEFAULTS)
    assert set(data["recv"]) == set(RECV_DEFAULTS)
    assert {k: v for k, v in data["recv"].items()} == RECV_DEFAULTS


def _packets(image_id: int) -> list[bytes]:
    from resilient_tx.resilience.endpoint import Sender, SenderConfig

    sender = Sender(SenderConfig(), torch.device("cpu"))
    return [bytes(p) for p in sender.packets(load_rgb(sample_path())[:256, :384],
                                             image_id).packets]


def _send_raw(port: int, batches: list[list[bytes]]) -> None:
    """Each batch from its own UDP socket, i.e. its own sender."""

    async def go() -> None:
        for batch in batches:
            async with await open_sender("udp", f"127.0.0.1:{port}") as tx:
                await tx.send(batch)

    asyncio.run(go())


def _recv_reports(tmp_path: Path, port: int, count: int, capsys) -> tuple[threading.Thread,
                                                                           list[int]]:
    return _recv_in_thread(["recv", "--listen", f"127.0.0.1:{port}", "--count", str(count),
                            "--out-dir", str(tmp_path), "--json", "--threads", "1",
                            "--deadline", "0.5"])


def _json_lines(capsys) -> list[dict]:
    return [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]


@pytest.mark.network
def test_vanishing_sender_dup_reorder_and_two_senders(tmp_path: Path, capsys) -> None:
    port = _free_port("udp")
    a, b, c = _packets(1), _packets(2), _packets(3)
    t, codes = _recv_reports(tmp_path, port, 3, capsys)
    _wait_listening(port, "udp")
    rng = random.Random(0)
    shuffled = b + b[:5]  # duplicates ...
    rng.shuffle(shuffled)  # ... and reordering
    # sender 1 vanishes after a third of image 1; senders 2 and 3 are whole
    _send_raw(port, [a[: len(a) // 3], shuffled, c])
    t.join(timeout=120)
    assert not t.is_alive() and codes == [0]
    reports = {int(r["image_id"], 16): r for r in _json_lines(capsys)}
    assert set(reports) == {1, 2, 3}
    assert not reports[1]["complete"] and reports[1]["tokens_inpainted"] > 0
    assert reports[2]["complete"] and reports[2]["tokens_inpainted"] == 0
    assert reports[3]["complete"] and reports[3]["tokens_inpainted"] == 0
    assert len({reports[i]["sender"] for i in (1, 2, 3)}) == 3
    for r in reports.values():
        assert load_rgb(r["output"]).shape == (256, 384, 3)


def test_bad_fec_and_loss_options_are_one_line(capsys) -> None:
    img = str(sample_path())
    assert main(["send", img, "--to", "127.0.0.1", "--fec", "for_loss:lots"]) == 2
    assert main(["send", img, "--to", "127.0.0.1", "--fec", "mystery"]) == 2
    assert main(["send", img, "--to", "127.0.0.1", "--sim-loss", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "for_loss" in err and "mystery" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("resilient-tx: error:")]) == 3


@pytest.mark.parametrize(("complete", "wording"), [(True, "28 not needed"), (False, "28 lost")])
def test_report_line_does_not_call_unneeded_packets_lost(complete: bool, wording: str) -> None:
    from types import SimpleNamespace

    from resilient_tx.app.netcmd import _report_line
    from resilient_tx.resilience.reassembly import ReceiveReport

    rep = ReceiveReport(image_id=0xAB, width=768, height=512, packets_sent=39,
                        packets_received=11, packets_recovered=3, packets_rejected=0,
                        tokens=1536, tokens_decoded=1536, tokens_inpainted=0,
                        bytes_received=6974, bytes_unusable=0, complete_stages=5)
    rec = SimpleNamespace(report=rep, complete=complete, decode_s=0.1)
    due = SimpleNamespace(key=("127.0.0.1", 1, b""))
    line = _report_line(rec, due, Path("x.png"), 0.9, as_json=False)
    assert "11/39 received" in line and wording in line
    fields = json.loads(_report_line(rec, due, Path("x.png"), 0.9, as_json=True))
    assert fields["packets_missing"] == 28 and fields["complete"] is complete
