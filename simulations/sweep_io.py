"""The loss sweep's files: a journal of finished runs, and the final JSON and CSV.

Every finished run (one image, channel, FEC setting and trial, with all its inpainters and
classical baselines) is appended to ``OUT/runs.jsonl`` as one line at once, so a sweep that is
stopped keeps everything it finished and ``--resume`` can skip those runs. The first line
holds the arguments of the sweep; the reference (oracle) points are stored too, once
computed. A line cut short by a kill is dropped when the journal is read back.

Version 2 added ``--baselines`` (JPEG, AVIF, WebP) to the arguments. A version-1 journal
(JPEG the only baseline, ``--no-jpeg`` to drop it) is read as the version-2 journal of the
same sweep, with ``baselines`` ["jpeg"] or [], so a sweep started before still resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilient_tx.errors import InputError

JOURNAL = "runs.jsonl"
VERSION = 2
READS = (1, 2)  # journal versions this build reads

#: Arguments that change the result of a run that is already in the journal: a resumed
#: sweep must use the same. The others only choose which runs exist (or how they run).
SETUP = ("images", "rate", "seed", "burst", "max_packet", "inpainters", "ar_window",
         "baselines")

RunKey = tuple[str, str, float, str, int, int]  # image, loss model, loss, fec, depth, trial
OraclePoint = tuple[float, float, float]  # wire bpp, PSNR, MS-SSIM


@dataclass(frozen=True)
class Trial:
    image: str
    loss_model: str
    loss: float
    trial: int
    fec: str
    depth: int  # context depth (packetizer.py): 0 = full chain
    inpainter: str
    wire_bpp: float  # every packet sent, headers and parity included
    received_fraction: float
    tokens_inpainted: float  # fraction
    unusable_fraction: float  # of the bytes received
    psnr: float
    ms_ssim: float
    inpaint_s: float


def run_key(t: Trial) -> RunKey:
    return (t.image, t.loss_model, t.loss, t.fec, t.depth, t.trial)


@dataclass(frozen=True)
class Journal:
    """What a journal file holds: the sweep's arguments, its finished runs and, once
    computed, the oracle points with the rate points and images they were made from."""

    args: dict[str, Any]
    runs: dict[RunKey, list[Trial]]
    oracle: dict[str, Any] | None


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # the run being written when the sweep was killed: done again
    return out


def read_journal(path: Path) -> Journal:
    """The journal at ``path``; InputError if it is missing or not a loss sweep's."""
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist")
    lines = _lines(path)
    if not lines or lines[0].get("kind") != "header":
        raise InputError(f"{path} is not a loss sweep journal")
    if lines[0].get("version") not in READS:
        raise InputError(f"{path} is a loss sweep journal of version "
                         f"{lines[0].get('version')}; this build reads versions "
                         f"{', '.join(map(str, READS))}: drop --resume to start afresh")
    runs: dict[RunKey, list[Trial]] = {}
    oracle = None
    for rec in lines[1:]:
        if rec["kind"] == "run":
            runs[_key(rec["key"])] = [Trial(**t) for t in rec["trials"]]
        elif rec["kind"] == "oracle":
            oracle = rec
    return Journal(_upgrade(lines[0]["version"], lines[0]["args"]), runs, oracle)


def _upgrade(version: int, args: dict[str, Any]) -> dict[str, Any]:
    """A version-1 journal's arguments as version 2 has them: JPEG its only baseline."""
    if version >= 2 or "baselines" in args:
        return args
    return {**args, "baselines": [] if args.get("no_jpeg") else ["jpeg"],
            "no_baselines": False}


def _key(raw: list[Any]) -> RunKey:
    image, lm, loss, f, depth, trial = raw
    return (str(image), str(lm), float(loss), str(f), int(depth), int(trial))


def start_journal(path: Path, args: dict[str, Any]) -> None:
    """A new journal holding only the header (any earlier one is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": "header", "version": VERSION, "args": args}) + "\n")


def compact_journal(path: Path) -> None:
    """Rewrite ``path`` without a cut-off last line, so appended lines start on their own."""
    good = _lines(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(rec) + "\n" for rec in good))
    tmp.replace(path)


def _append(path: Path, rec: dict[str, Any]) -> None:
    with path.open("a") as fh:  # one write per line: a kill loses at most this line
        fh.write(json.dumps(rec) + "\n")
        fh.flush()


def append_run(path: Path, key: RunKey, trials: list[Trial]) -> None:
    _append(path, {"kind": "run", "key": list(key),
                   "trials": [dataclasses.asdict(t) for t in trials]})


def append_oracle(path: Path, rates: list[str], images: list[str],
                  points: list[OraclePoint]) -> None:
    _append(path, {"kind": "oracle", "rates": rates, "images": images,
                   "points": [list(p) for p in points]})


def setup_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The flags in :data:`SETUP` whose values differ between two sweeps' arguments."""
    return [f"--{k.replace('_', '-')}" for k in SETUP if old.get(k) != new.get(k)]


def write_results(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]],
                  trials: list[Trial]) -> None:
    """OUT/loss_sweep.json (``meta``, the summary rows and every trial) and the rows as
    OUT/loss_sweep.csv."""
    (out / "loss_sweep.json").write_text(json.dumps(
        {**meta, "summary": rows, "trials": [dataclasses.asdict(t) for t in trials]}, indent=1))
    with (out / "loss_sweep.csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["loss"])
        wr.writeheader()
        wr.writerows(rows)
