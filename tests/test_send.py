"""`resilient-tx send` (resilient_tx.app.send): options, errors, packet size per transport."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilient_tx.app.cli import main
from resilient_tx.app.demo import sample_path
from resilient_tx.app.send import channel_of, fit_to_transport
from resilient_tx.config import SenderConfig
from tests.helpers import free_port


def test_send_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["send", str(tmp_path / "nope.png"), "--to", "127.0.0.1"]) == 2
    assert main(["send", str(sample_path())]) == 2
    bad = tmp_path / "c.yaml"
    bad.write_text("send:\n  colour: red\n")
    assert main(["send", str(sample_path()), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "--to" in err and "colour" in err
    assert "Traceback" not in err


def test_bad_fec_and_loss_options_are_one_line(capsys) -> None:
    img = str(sample_path())
    assert main(["send", img, "--to", "127.0.0.1", "--fec", "for_loss:lots"]) == 2
    assert main(["send", img, "--to", "127.0.0.1", "--fec", "mystery"]) == 2
    assert main(["send", img, "--to", "127.0.0.1", "--sim-loss", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "for_loss" in err and "mystery" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("resilient-tx: error:")]) == 3


@pytest.mark.parametrize(("transport", "asked", "used"), [
    ("udp", 1200, 1200), ("udp", 5000, 1200), ("udp", 300, 300),
    ("webrtc", 1200, 1160), ("webrtc", 300, 300),
])
def test_packets_fit_one_message_of_the_transport(transport: str, asked: int,
                                                  used: int) -> None:
    cfg = SenderConfig(transport=transport, max_packet=asked)  # type: ignore[arg-type]
    assert fit_to_transport(cfg).max_packet == used


def test_simulated_channel_follows_the_options() -> None:
    assert channel_of(SenderConfig()) is None
    chan = channel_of(SenderConfig(sim_loss=0.3, loss_model="gilbert", burst=3))
    assert chan is not None and (chan.loss_rate, chan.burst_length) == (0.3, 3.0)
    bern = channel_of(SenderConfig(sim_loss=0.3, burst=3))
    assert bern is not None and bern.burst_length == 1.0  # burst only shapes gilbert loss


@pytest.mark.network
def test_sending_where_nothing_listens_is_a_failure(tmp_path: Path, capsys) -> None:
    from resilient_tx.images import load_rgb, save_rgb

    small = tmp_path / "small.png"
    save_rgb(load_rgb(sample_path())[:64, :96], small)
    port = free_port()  # bound a moment ago, closed again: nothing listens there now
    assert main(["send", str(small), "--to", f"127.0.0.1:{port}", "--fec", "none"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "nothing was delivered" in err
