"""The example programs sender/send_image.py and receiver/receive_images.py, run against
each other in this process over loopback UDP."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from resilient_tx.app.demo import sample_path
from resilient_tx.images import load_rgb, save_rgb
from tests.helpers import call_in_thread, free_port, load_script, wait_listening


@pytest.fixture(scope="module")
def sender() -> ModuleType:
    return load_script("sender/send_image.py")


@pytest.fixture(scope="module")
def receiver() -> ModuleType:
    return load_script("receiver/receive_images.py")


@pytest.mark.network
def test_sender_and_receiver_programs_talk_over_udp(tmp_path: Path, capsys,
                                                    sender: ModuleType,
                                                    receiver: ModuleType) -> None:
    crop = tmp_path / "crop.png"
    save_rgb(load_rgb(sample_path())[:128, :192], crop)  # small: the test stays quick
    port = free_port("udp")
    out = tmp_path / "received"
    rx, codes = call_in_thread(receiver.main, ["--listen", f"127.0.0.1:{port}", "--count",
                                               "2", "--out-dir", str(out), "--device", "cpu"])
    wait_listening(port, "udp")
    assert sender.main([str(crop), str(crop), "--to", f"127.0.0.1:{port}", "--loss", "0.2",
                        "--device", "cpu"]) == 0
    rx.join(timeout=60)
    assert not rx.is_alive() and codes == [0]
    written = sorted(out.glob("*.png"))
    assert len(written) == 2
    assert all(load_rgb(p).shape == (128, 192, 3) for p in written)
    printed = capsys.readouterr().out
    assert printed.count("bytes sent in") == 2
    assert printed.count("tokens inpainted") == 2


@pytest.mark.network
@pytest.mark.parametrize("transport", ["udp", "webrtc"])
def test_programs_with_a_key_file_sign_and_check(tmp_path: Path, capsys, sender: ModuleType,
                                                 receiver: ModuleType, transport: str) -> None:
    # WebRTC's DTLS keeps the path private but lets anyone who reaches the signalling port
    # open a channel and send: the tag must be required there just as on UDP.
    crop = tmp_path / "crop.png"
    save_rgb(load_rgb(sample_path())[:64, :96], crop)
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    port = free_port(transport)
    out = tmp_path / "received"
    rx, codes = call_in_thread(receiver.main, ["--listen", f"127.0.0.1:{port}", "--count",
                                               "1", "--out-dir", str(out), "--device", "cpu",
                                               "--inpainter", "neighbor", "--key-file",
                                               str(key), "--transport", transport])
    wait_listening(port, transport)
    to = ["--to", f"127.0.0.1:{port}", "--device", "cpu", "--transport", transport]
    # Unsigned first: dropped (and said so); then signed: written.
    assert sender.main([str(crop), *to]) == 0
    assert sender.main([str(crop), *to, "--key-file", str(key)]) == 0
    rx.join(timeout=60)
    assert not rx.is_alive() and codes == [0]
    assert len(list(out.glob("*.png"))) == 1
    err = capsys.readouterr().err
    assert "unauthenticated" in err and "warning" not in err


@pytest.mark.parametrize("script", ["sender", "receiver"])
def test_programs_have_help(script: str, sender: ModuleType, receiver: ModuleType,
                            capsys) -> None:
    program = sender if script == "sender" else receiver
    with pytest.raises(SystemExit) as info:
        program.main(["--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_programs_report_errors_in_one_line(sender: ModuleType, receiver: ModuleType,
                                            tmp_path: Path, capsys) -> None:
    assert sender.main([str(tmp_path / "nope.png"), "--to", "127.0.0.1:9",
                        "--device", "cpu"]) == 2
    assert receiver.main(["--deadline", "0"]) == 2
    err = capsys.readouterr().err
    assert "send_image: error:" in err and "receive_images: error: deadline" in err
    assert "Traceback" not in err
