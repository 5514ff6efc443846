"""`resilient-tx send` (resilient_tx.app.send): options, errors, packet size per transport."""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import aclosing
from pathlib import Path

import pytest
import torch

from resilient_tx import transport
from resilient_tx.app.cli import main
from resilient_tx.app.demo import sample_path
from resilient_tx.app.send import channel_of, fit_to_transport, send_images
from resilient_tx.app.session import ReceivedImage, receive_images
from resilient_tx.config import ReceiverConfig, SenderConfig
from resilient_tx.errors import InputError
from resilient_tx.images import load_rgb
from resilient_tx.resilience.endpoint import Receiver, Sender
from resilient_tx.transport import MemoryReceiver, MemorySender
from tests.helpers import free_port

CPU = torch.device("cpu")


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


# --- closed loop: the receiver's feedback plans the next images -------------------------

def _closed_loop(monkeypatch: pytest.MonkeyPatch, loss_steps: tuple[float, ...],
                 feedback: bool, images_per_step: int = 6,
                 ) -> tuple[list[float], Sender, list[ReceivedImage]]:
    """Send ``images_per_step`` small crops per simulated loss rate in ``loss_steps`` to a
    real receive loop over the memory transport; returns the estimate after each step."""
    crop = load_rgb(sample_path())[:64, :96]
    # The command's UDP sender, swapped for one into the in-memory receiver.
    monkeypatch.setattr(transport, "open_sender",
                        lambda kind, target, **opts: MemorySender(target))
    received: list[ReceivedImage] = []

    async def receive(rx: MemoryReceiver) -> None:
        cfg = ReceiverConfig(deadline=0.2, feedback=feedback)
        async with aclosing(receive_images(rx, Receiver("neighbor", CPU),
                                           config=cfg)) as images:
            async for got in images:
                received.append(got)

    async def main() -> tuple[list[float], Sender]:
        rx = MemoryReceiver(f"closed-loop-{feedback}")
        base = SenderConfig(to=rx.name, seed=3)
        sender = Sender(base, CPU)
        estimates = []
        async with rx:
            task = asyncio.ensure_future(receive(rx))
            for loss in loss_steps:
                cfg = dataclasses.replace(base, sim_loss=loss)
                await send_images(cfg, sender, ["crop.png"] * images_per_step,
                                  lambda _: crop)
                estimates.append(sender.planner.estimate().loss_rate)
            await asyncio.sleep(0.5)  # the last images' deadlines
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return estimates, sender

    estimates, sender = asyncio.run(asyncio.wait_for(main(), 120))
    return estimates, sender, received


@pytest.mark.slow
def test_the_auto_plan_follows_the_loss_the_receiver_reports(monkeypatch, capsys) -> None:
    estimates, sender, received = _closed_loop(monkeypatch, (0.05, 0.5), feedback=True)
    assert sender.planner.reports > 0 and sender.planner.rejected == 0
    assert estimates[0] < 0.2 < 0.25 < estimates[1]  # from the 10 % prior, down, then up
    plan = sender.last_plan
    assert plan is not None and plan.estimate is not None
    assert plan.fec.startswith("for_loss(0.") and plan.estimate.loss_rate > 0.2
    assert len([g for g in received if not g.preview]) == 12
    out = capsys.readouterr()
    assert "feedback:" in out.err and "estimate" in out.out


@pytest.mark.slow
def test_a_sender_without_feedback_works_as_before_and_says_so(monkeypatch, capsys) -> None:
    estimates, sender, received = _closed_loop(monkeypatch, (0.3,), feedback=False,
                                               images_per_step=3)
    assert sender.planner.reports == 0
    assert estimates == [pytest.approx(0.1)]  # the stated prior, unchanged
    assert len(received) == 3
    err = capsys.readouterr().err
    assert err.count("no feedback from the receiver") == 1 and "Traceback" not in err


def test_folders_expand_to_their_images_and_dash_is_stdin(tmp_path: Path) -> None:
    from resilient_tx.app.send import image_paths

    (tmp_path / "b.png").write_bytes(sample_path().read_bytes())
    (tmp_path / "a.png").write_bytes(sample_path().read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_paths([str(tmp_path), "-"]) == [str(tmp_path / "a.png"),
                                                 str(tmp_path / "b.png"), "-"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        image_paths([str(empty)])


def test_budget_and_interval_options_are_checked(capsys) -> None:
    img = str(sample_path())
    for bad in (["--budget", "0"], ["--wire-bpp", "-1"], ["--interval", "-2"],
                ["--budget", "100", "--wire-bpp", "0.1"]):
        assert main(["send", img, "--to", "127.0.0.1", *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("resilient-tx: error:") == 4 and "Traceback" not in err
