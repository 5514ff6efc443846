"""`resilient-tx recv` (resilient_tx.app.recv) end to end on loopback, fed by `send`."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from resilient_tx.app.cli import main
from resilient_tx.app.demo import sample_path
from resilient_tx.app.recv import report_line
from resilient_tx.app.session import ReceivedImage
from resilient_tx.config import SenderConfig
from resilient_tx.eval.metrics import psnr
from resilient_tx.images import load_rgb
from resilient_tx.resilience.endpoint import Received, Sender
from resilient_tx.resilience.reassembly import ReceiveReport
from resilient_tx.transport import open_sender
from tests.helpers import call_in_thread, free_port, wait_listening

# A floor well below what this exact send gives (FEC planned for the 30 % Bernoulli loss it
# suffers, depth 2, seed 1, low rate), far above a failed transmission.
PSNR_FLOOR = 24.0


@pytest.mark.network
@pytest.mark.parametrize("transport", ["udp", "webrtc"])
def test_send_recv_loopback_with_simulated_loss(tmp_path: Path, capsys, transport) -> None:
    port = free_port(transport)
    out = tmp_path / "rx"
    t, codes = call_in_thread(main, ["recv", "--listen", f"127.0.0.1:{port}", "--count", "1",
                                     "--out-dir", str(out), "--json", "--transport", transport,
                                     "--threads", "1", "--deadline", "1.0"])
    wait_listening(port, transport)  # models load before the socket opens
    assert main(["send", str(sample_path()), "--to", f"127.0.0.1:{port}", "--transport",
                 transport, "--sim-loss", "0.3", "--seed", "1", "--threads", "1",
                 "--fec", "for_loss:0.3"]) == 0
    t.join(timeout=120)
    assert not t.is_alive() and codes == [0]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1])
    assert report["packets_received"] < report["packets_sent"]  # the loss really happened
    written = load_rgb(report["output"])
    assert psnr(load_rgb(sample_path()), written) > PSNR_FLOOR


def test_recv_rejects_bad_deadline(capsys) -> None:
    assert main(["recv", "--deadline", "0"]) == 2
    assert "--deadline: must be > 0 seconds" in capsys.readouterr().err


def test_recv_rejects_negative_count(capsys) -> None:
    assert main(["recv", "--count", "-1"]) == 2
    assert "--count: must be >= 0" in capsys.readouterr().err


def _packets(image_id: int) -> list[bytes]:
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


def _json_lines(capsys) -> list[dict]:
    return [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]


@pytest.mark.slow
@pytest.mark.network
def test_vanishing_sender_dup_reorder_and_two_senders(tmp_path: Path, capsys) -> None:
    port = free_port("udp")
    a, b, c = _packets(1), _packets(2), _packets(3)
    t, codes = call_in_thread(main, ["recv", "--listen", f"127.0.0.1:{port}", "--count", "3",
                                     "--out-dir", str(tmp_path), "--json", "--threads", "1",
                                     "--deadline", "0.5"])
    wait_listening(port, "udp")
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


@pytest.mark.parametrize(("complete", "wording"), [(True, "28 not needed"), (False, "28 lost")])
def test_report_line_does_not_call_unneeded_packets_lost(complete: bool, wording: str) -> None:
    rep = ReceiveReport(image_id=0xAB, width=768, height=512, packets_sent=39,
                        packets_received=11, packets_recovered=3, packets_rejected=0,
                        tokens=1536, tokens_decoded=1536, tokens_inpainted=0,
                        bytes_received=6974, bytes_unusable=0, complete_stages=5)
    rec = Received(np.zeros((512, 768, 3), np.uint8), rep, complete, 0.1)
    due = SimpleNamespace(key=("127.0.0.1", 1, b""), first_seen=0.0, preview=False)
    got = ReceivedImage(due, rec)  # type: ignore[arg-type]
    line = report_line(got, Path("x.png"), 0.9, as_json=False)
    assert "11/39 received" in line and wording in line
    fields = json.loads(report_line(got, Path("x.png"), 0.9, as_json=True))
    assert fields["packets_missing"] == 28 and fields["complete"] is complete
    assert fields["sender"] == "127.0.0.1" and fields["latency_ms"] == 900.0


def test_output_names_never_overwrite_unless_asked(tmp_path: Path) -> None:
    from resilient_tx.app.recv import output_path

    first = output_path(tmp_path, 0xAB, overwrite=False)
    assert first == tmp_path / "000000ab.png"
    first.write_bytes(b"legit")
    second = output_path(tmp_path, 0xAB, overwrite=False)
    assert second == tmp_path / "000000ab-1.png"
    assert output_path(tmp_path, 0xAB, overwrite=True) == first
    assert all(p.parent == tmp_path for p in (first, second))
    named = output_path(tmp_path, 0xAB, overwrite=False, name=b"holiday.jpg")
    assert named == tmp_path / "holiday.png"


@pytest.mark.parametrize("name", [b"../../etc/x", b"..", b".", b"/", b"a/../../b",
                                  b"C:\\Windows\\evil.exe", b"x" * 5000, b"\xff\xfe\x00bad",
                                  b"", b"\n\t", b".hidden", b"name\x00.png", b"-rf"])
def test_hostile_sender_names_never_escape_the_output_folder(tmp_path: Path,
                                                            name: bytes) -> None:
    from resilient_tx.app.recv import MAX_STEM, file_stem, output_path

    out = tmp_path / "out"
    out.mkdir()
    for _ in range(3):  # collisions get suffixes, never the same file
        path = output_path(out, 0xAB, overwrite=False, name=name)
        assert path.parent == out and path.suffix == ".png"
        assert not path.name.startswith(".") and len(path.stem) <= MAX_STEM + 4
        path.write_bytes(b"x")
    assert len(list(out.iterdir())) == 3
    stem = file_stem(name, 0xAB)
    assert "/" not in stem and "\\" not in stem and "\x00" not in stem and ".." not in stem


@pytest.mark.parametrize("content, needle", [(None, "does not exist"), (b"", "is empty"),
                                             (b"x" * 8, "at least 16")])
def test_bad_key_files_are_one_line_errors(tmp_path: Path, capsys, content, needle) -> None:
    key = tmp_path / "key"
    if content is not None:
        key.write_bytes(content)
    assert main(["recv", "--key-file", str(key)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["send", str(sample_path()), "--to", "127.0.0.1:9", "--key-file",
                 str(key)]) == 2
    assert needle in capsys.readouterr().err


def test_a_preview_file_is_replaced_by_the_final_picture(tmp_path: Path, capsys) -> None:
    from resilient_tx.app.recv import Writer
    from resilient_tx.config import ReceiverConfig

    rep = ReceiveReport(image_id=0xAB, width=8, height=8, packets_sent=10,
                        packets_received=4, packets_recovered=0, packets_rejected=0,
                        tokens=4, tokens_decoded=1, tokens_inpainted=3, bytes_received=400,
                        bytes_unusable=0, complete_stages=2)

    def got(preview: bool) -> ReceivedImage:
        due = SimpleNamespace(key=("127.0.0.1:9", 0xAB, b""), first_seen=0.0,
                              preview=preview, assembler=SimpleNamespace(name=b"cat.jpg"))
        rec = Received(np.full((8, 8, 3), 100 if preview else 200, np.uint8), rep,
                       not preview, 0.1)
        return ReceivedImage(due, rec)  # type: ignore[arg-type]

    writer = Writer(ReceiverConfig(out_dir=str(tmp_path), json=True, progressive=True))
    asyncio.run(writer.write(got(True)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.preview.png"]
    asyncio.run(writer.write(got(False)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]
    assert load_rgb(tmp_path / "cat.png")[0, 0, 0] == 200
    first, second = (json.loads(ln) for ln in capsys.readouterr().out.splitlines())
    assert first["preview"] and first["output"].endswith("cat.preview.png")
    assert not second["preview"] and "preview_latency_ms" in second
