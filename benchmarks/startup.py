"""Start-up time of ``smiling-cli``: how long ``--help`` and refused input take, beside ``python -c pass``
and ``dvc --help`` for scale.

Run:  .venv/bin/python benchmarks/startup.py
      .venv/bin/python benchmarks/startup.py --before /tmp/before-0725632   (also an older package, made with
          mkdir /tmp/before-0725632 && git archive 0725632 smiling_pipeline | tar -x -C /tmp/before-0725632)

Each command runs as a fresh subprocess (wall time, from start to exit), ``--runs`` times, the commands
taking turns so that load from other jobs falls on all of them alike; the table shows the median and
the range. ``smiling-cli`` runs this checkout's package (``PYTHONPATH``), in an empty temporary folder
(no ``params.yaml``), with the venv's console script; a refused command must exit 1, the others 0.
Writes ``reports/benchmarks/startup.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "benchmarks" / "startup.md"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Case:
    """One command line to time, and the exit code it must give."""

    label: str
    argv: list[str]
    exit_code: int
    ours: bool  # runs smiling_pipeline (timed once per package), else once only


def tool(name: str) -> str:
    """The venv's console script ``name``, else the one on PATH."""
    path = BIN / name
    found = str(path) if path.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def cases() -> list[Case]:
    cli = tool("smiling-cli")
    return [
        Case("`python -c pass`", [sys.executable, "-c", "pass"], 0, False),
        Case("`dvc --help`", [tool("dvc"), "--help"], 0, False),
        Case("`smiling-cli --help`", [cli, "--help"], 0, True),
        Case("`smiling-cli train --help`", [cli, "train", "--help"], 0, True),
        Case("`smiling-cli pretrain --dataset 'bad id!'` (refused id)", [cli, "pretrain", "--dataset", "bad id!"], 1, True),
        Case("`smiling-cli train --device gpu` (refused setting)", [cli, "train", "--device", "gpu"], 1, True),
    ]


def time_once(case: Case, package: Path, cwd: Path) -> float:
    """Wall seconds of one run of ``case`` with ``package`` (the folder holding smiling_pipeline) first on the path."""
    env = {**os.environ, "PYTHONPATH": str(package)}
    start = time.perf_counter()
    proc = subprocess.run(case.argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if proc.returncode != case.exit_code:
        raise SystemExit(f"{' '.join(case.argv)} exited {proc.returncode}, expected {case.exit_code}:\n{proc.stderr[-2000:]}")
    return seconds


def measure(packages: dict[str, Path], runs: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per (case label, package name); the commands take turns, ``runs`` rounds."""
    times: dict[tuple[str, str], list[float]] = {}
    plan = [(c, name, path) for c in cases() for name, path in packages.items() if c.ours or name == next(iter(packages))]
    with tempfile.TemporaryDirectory() as cwd:
        for c, _, path in plan:  # one untimed round: the file cache is warm for every command alike
            time_once(c, path, Path(cwd))
        for _ in range(runs):
            for c, name, path in plan:
                times.setdefault((c.label, name), []).append(time_once(c, path, Path(cwd)))
    return times


def table(times: dict[tuple[str, str], list[float]], packages: dict[str, Path], runs: int, load: str) -> list[str]:
    """Markdown: the reproducing command, the machine, then one row per command and a column per package."""
    lines = ["Command: `.venv/bin/python benchmarks/startup.py" + "".join(
        f" --before {p}" for n, p in list(packages.items())[1:]) + "`", "",
        f"_{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs, load average {load} at the start; Python "
        f"{platform.python_version()}; median of {runs} runs (range), wall seconds of a fresh process._", "",
        "| command | " + " | ".join(packages) + " |", "|---|" + "---:|" * len(packages)]
    for c in cases():
        cells = []
        for name in packages:
            t = times.get((c.label, name))
            cells.append(f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})" if t else "(same)")
        lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each command")
    ap.add_argument("--before", type=Path, help="also time the smiling_pipeline package in this folder")
    ap.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    args = ap.parse_args(argv)
    packages = {"this checkout": ROOT}
    if args.before:
        packages[args.before.name] = args.before.resolve()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())  # other jobs on the machine, before this one adds its own
    lines = table(measure(packages, args.runs), packages, args.runs, load)
    text = "\n".join(["# Start-up time of smiling-cli", "", *lines]) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
