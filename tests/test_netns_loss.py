"""simulations/netns_loss.py: its schedule parser, nft scripts, counters and checks here;
and, as root with ip and nft, real runs between two network namespaces with kernel loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.errors import InputError
from tests.helpers import REPO, load_simulation

IFNAMSIZ = 15  # longest Linux interface name
MAX_PID = 4194304  # pid_max's upper limit on 64-bit Linux


@pytest.fixture(scope="module")
def ns() -> ModuleType:
    return load_simulation("netns_loss")


@pytest.fixture(scope="module")
def tools(ns: ModuleType) -> ModuleType:
    """Its namespaces, nft and child-process helpers: the module the script imported."""
    return sys.modules["simulations.netns_tools"]


@pytest.fixture(scope="module")
def root_ok(ns: ModuleType) -> None:
    """Skip unless this machine can create namespaces with nft tables (CI may not)."""
    reason = ns.unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces here: {reason}")


def row(ns: ModuleType, index: int, phase: int, planned: float | None, seen: int = 10,
        dropped: int = 0, arrived: bool = True) -> Any:
    rx: dict[str, Any] = dict(rx_sent=seen, rx_received=seen - dropped, tokens=256,
                              inpainted=0, complete=True, psnr=25.0) if arrived else {}
    return ns.Row(index, phase, 0.1 * phase, f"crop_{index:03d}.png", f"{index:08x}", seen,
                  1500, "for_loss(0.1)", planned, seen, dropped, **rx)


# --- the schedule ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 10_000)),
                min_size=1, max_size=8))
def test_schedule_round_trips(ns: ModuleType, phases: list[tuple[float, int]]) -> None:
    text = ",".join(f"{rate!r}:{images}" for rate, images in phases)
    assert ns.parse_schedule(text) == tuple(ns.Phase(r, n) for r, n in phases)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_schedule_parser_fails_only_with_input_error(ns: ModuleType, text: str) -> None:
    try:
        phases = ns.parse_schedule(text)
    except InputError:
        return
    assert phases and all(0 <= p.rate < 1 and p.images >= 1 for p in phases)


@pytest.mark.parametrize("text", ["", "0.3", "0.3:", ":5", "1:5", "-0.1:5", "nan:5",
                                  "0.2:0", "0.2:-3", "0.2:1.5", "0.1:5,,0.2:5", "a:b"])
def test_bad_schedules_are_refused(ns: ModuleType, text: str) -> None:
    with pytest.raises(InputError, match="--schedule"):
        ns.parse_schedule(text)


def test_images_are_numbered_through_the_phases(ns: ModuleType) -> None:
    phases = ns.parse_schedule("0.05:2, 0.35:3,0:1")
    assert ns.phase_of_images(phases) == [0, 0, 1, 1, 1, 2]


# --- namespaces, nft and counters ------------------------------------------------------


def test_interface_names_fit_for_any_pid(ns: ModuleType, tools: ModuleType) -> None:
    pair = ns.Netns.for_pid(MAX_PID)
    assert max(len(pair.veth_tx), len(pair.veth_rx)) <= IFNAMSIZ
    assert len({pair.tx, pair.rx, pair.veth_tx, pair.veth_rx}) == 4
    flat = [" ".join(c) for c in pair.setup_commands()]
    assert f"-n {pair.rx} addr add {ns.RX_ADDR}/{tools.PREFIX} dev {pair.veth_rx}" in flat
    assert sum("link set lo up" in c for c in flat) == 2


def test_nft_script_drops_the_share_asked_for(ns: ModuleType, tools: ModuleType) -> None:
    match = ns.data_match(5004)
    script = tools.nft_script(match, 0.35, create=True)
    lines = script.splitlines()
    assert lines[0] == f"add table inet {tools.TABLE}"
    assert any("hook input" in line for line in lines)
    assert lines[-1].endswith(f'{match} numgen random mod 10000 < 3500 counter name "dropped" '
                              "drop")
    # A change of rate flushes the chain in the same transaction, and keeps the counters.
    change = tools.nft_script(match, 0.05, create=False).splitlines()
    assert change[0] == f"flush chain inet {tools.TABLE} in"
    assert not any("add counter" in line for line in change)
    assert "< 500 " in change[-1]


def test_nft_script_without_loss_only_counts(ns: ModuleType, tools: ModuleType) -> None:
    script = tools.nft_script(ns.feedback_match(5004), 0.0, create=False)
    assert "drop" not in script and 'counter name "seen"' in script
    assert "udp sport 5004" in script  # feedback comes from the receiver's port


def test_counters_are_parsed_from_nft_json(ns: ModuleType, tools: ModuleType) -> None:
    text = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": '
            '"inet", "name": "seen", "table": "rtx", "packets": 40, "bytes": 9}}, '
            '{"counter": {"name": "dropped", "packets": 14, "bytes": 3}}]}')
    counts = tools.parse_counters(text)
    assert counts == ns.Counts(40, 14)
    assert (counts - ns.Counts(30, 10)).loss == pytest.approx(0.4)
    assert ns.Counts().loss is None


# --- summaries and the verdict ---------------------------------------------------------


def test_phase_summary_pools_the_kernel_counts(ns: ModuleType) -> None:
    rows = [row(ns, 0, 0, 0.1, 10, 0), row(ns, 1, 0, 0.06, 10, 2),
            row(ns, 2, 1, 0.05, 20, 10), row(ns, 3, 1, 0.2, 10, 2, arrived=False)]
    low, high = ns.summarize(rows, ns.parse_schedule("0:2,0.4:2"))
    assert low.kernel_loss == pytest.approx(2 / 20)
    assert high.kernel_loss == pytest.approx(12 / 30)
    assert (high.arrived, high.complete) == (1, 1)
    assert low.planned_end == pytest.approx(0.06)  # the last quarter: its last image
    assert rows[1].rx_loss == pytest.approx(0.2)


def test_verdict_needs_the_estimate_to_follow(ns: ModuleType) -> None:
    schedule = ns.parse_schedule("0:4,0.4:4")
    good = [row(ns, i, 0, 0.05) for i in range(4)] + [
        row(ns, 4 + i, 1, 0.05 + 0.1 * i, 10, 4) for i in range(4)]
    result = ns.Result(tuple(good), ns.summarize(good, schedule), ns.Counts(), ())
    assert ns.failures(result, 0.1) == []  # ends at 0.35, within 0.1 of 0.4
    assert ns.failures(result, 0.02) == [
        "the estimate at the end of phase 1, 0.350, is not within 0.02 of its drop rate 0.400"]
    lagging = good[:4] + [row(ns, 4 + i, 1, 0.05, 10, 4) for i in range(4)]
    result = ns.Result(tuple(lagging), ns.summarize(lagging, schedule), ns.Counts(), ())
    problems = ns.failures(result, 0.5)
    assert len(problems) == 1 and "not above" in problems[0]


def test_verdict_counts_missing_images(ns: ModuleType) -> None:
    rows = [row(ns, 0, 0, None), row(ns, 1, 0, None, arrived=False)]
    result = ns.Result(tuple(rows), ns.summarize(rows, ns.parse_schedule("0.2:2")),
                       ns.Counts(), ())
    assert ns.failures(result, 0.1) == ["1 image(s) never came out of the receiver"]


def test_table_flags_datagrams_counted_with_the_wrong_image(ns: ModuleType) -> None:
    rows = [row(ns, 0, 0, 0.1), ns.Row(1, 0, 0.0, "crop_001.png", "1", 12, 900, "light",
                                        None, 9, 0)]
    lines = ns.format_table(rows).splitlines()
    assert len(lines) == 3 and "counted" not in lines[1]
    assert lines[2].endswith("(counted 9 datagrams)")


@pytest.mark.parametrize("argv,match", [(["--size", "100"], "--size"),
                                        (["--interval", "0"], "--interval"),
                                        (["--feedback-loss", "1"], "--feedback-loss"),
                                        (["--source", "/nonexistent.png"], "--source")])
def test_bad_options_are_refused(ns: ModuleType, argv: list[str], match: str) -> None:
    with pytest.raises(InputError, match=match):
        ns.options(ns.build_parser().parse_args(argv))


def test_main_refuses_a_bad_schedule_before_touching_the_system(
        ns: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert ns.main(["--schedule", "0.5"]) == 2
    assert "--schedule" in capsys.readouterr().err


def test_unavailable_says_why(tools: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    assert "needs root" in tools.unavailable()
    monkeypatch.setattr(tools.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tools, "tool", lambda name: None if name == "nft" else "/usr/sbin/ip")
    assert tools.unavailable() == "`nft` not found (nftables)"


# --- real runs (root, ip and nft) --------------------------------------------------------


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=False).stdout


@pytest.mark.network
@pytest.mark.slow
def test_auto_follows_kernel_loss(ns: ModuleType, root_ok: None, tmp_path: Path) -> None:
    opts = ns.options(ns.build_parser().parse_args(
        ["--schedule", "0:4,0.5:6", "--size", "192"]))
    result = ns.run(opts)
    clean, lossy = result.phases
    assert [p.arrived for p in result.phases] == [4, 6]  # every image came out
    # The kernel counted each image's datagrams while it was being sent.
    assert all(r.kernel_seen == r.packets for r in result.rows)
    assert clean.kernel_loss == 0 and 0.3 < lossy.kernel_loss < 0.7
    assert result.rows[0].planned == pytest.approx(0.1)  # the prior, before any report
    assert clean.planned_end < 0.1 < lossy.planned_end  # down on a clean path, then up
    assert result.feedback.seen > 0 and result.feedback.dropped == 0
    assert all(r.psnr is not None for r in result.rows)
    # Complete and lossless: each received file is the decode of the crop it is paired
    # with (another crop would score far lower).
    assert all(r.psnr > 20 for r in result.rows if r.phase == 0)
    notices = ns.write_outputs(result, opts, tmp_path)  # a notice: matplotlib is missing
    assert (tmp_path / "netns_loss.png").exists() == (not notices)
    assert len(json.loads((tmp_path / "netns_loss.json").read_text())["rows"]) == 10
    assert f"rtx-rx-{os.getpid()}" not in _namespaces()


@pytest.mark.network
@pytest.mark.slow
def test_namespaces_are_removed_when_the_sender_fails(ns: ModuleType, root_ok: None) -> None:
    opts = ns.options(ns.build_parser().parse_args(
        ["--schedule", "0.1:2", "--size", "64", "--fec", "no-such-profile"]))
    with pytest.raises(ns.NetnsError, match="sender stopped after 0"):
        ns.run(opts)
    listed = _namespaces()
    assert f"rtx-tx-{os.getpid()}" not in listed
    assert f"rtx-rx-{os.getpid()}" not in listed


@pytest.mark.network
@pytest.mark.slow
def test_sigterm_removes_the_namespaces(root_ok: None) -> None:
    script = REPO / "simulations" / "netns_loss.py"
    proc = subprocess.Popen([sys.executable, str(script), "--schedule", "0.1:50", "--size",
                             "64"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while f"rtx-rx-{proc.pid}" not in _namespaces():
            assert proc.poll() is None and time.monotonic() < end, "no namespaces came up"
            time.sleep(0.1)
        time.sleep(1.0)  # into the run: the receiver is loading its models
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped (SIGTERM); namespaces removed" in err
    assert f"-{proc.pid}" not in _namespaces()
