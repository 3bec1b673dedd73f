"""Sweeps: seeds x algorithms x variants x datasets x expert-state counts as queued DVC experiments.

A sweep file names the grid; every cell becomes ``dvc exp run --queue -n NAME -S key=value ...``
on top of ``params.yaml``, and ``dvc queue start -j N`` runs them. Every run logs to the same
MLflow store, which ``smiling-cli report --compare --exp-prefix NAME-`` then reads.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Optional

import dacite
import yaml

from smiling_pipeline import algorithms
from smiling_pipeline.config import as_dict, load_params, params_from_dict, preset_overrides
from smiling_pipeline.errors import UserError
from smiling_pipeline.io import atomic_dir, check_writable, write_json
from smiling_pipeline.tracking import git_commit

log = logging.getLogger(__name__)
VARIANT_SHORT = {"state-only": "so", "state-action": "sa"}


@dataclass(frozen=True)
class Grid:
    """One product of axes; a sweep is the union of its grids."""

    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    algorithms: tuple[str, ...] = ("smiling", "dac", "bc")  # names in the registry (smiling_pipeline.algorithms)
    variants: tuple[Literal["state-only", "state-action"], ...] = ("state-only", "state-action")
    expert_states: tuple[Optional[int], ...] = (None,)  # None: ingest.num_states as configured
    overrides: dict[str, Any] = field(default_factory=dict)  # {"section.key": value} for this grid's cells
    presets: tuple[str, ...] = ()  # config.PRESETS applied before the overrides, e.g. [official-reward]
    label: Optional[str] = None  # names the overrides in the cell names (an ablation), e.g. draws-refit


@dataclass(frozen=True)
class SweepConfig:
    """Named datasets (params overrides on top of ``params.yaml``) and the grids over them."""

    name: str
    datasets: dict[str, dict[str, Any]]  # short name -> {"section.key": value}
    grids: tuple[Grid, ...]


@dataclass(frozen=True)
class Cell:
    """One queued experiment."""

    name: str
    overrides: dict[str, Any]


def load_sweep(path: Path) -> SweepConfig:
    """Read a sweep file; unknown keys and wrong types are one-line errors."""
    try:
        raw = yaml.safe_load(path.read_text())
        return dacite.from_dict(SweepConfig, raw, config=dacite.Config(strict=True, cast=[tuple]))
    except FileNotFoundError:
        raise UserError(f"sweep file {path} not found") from None
    except (yaml.YAMLError, dacite.DaciteError, TypeError) as e:
        raise UserError(f"sweep file {path}: {str(e).splitlines()[0]}") from e


def cells(sweep: SweepConfig, base: dict[str, Any]) -> list[Cell]:
    """Every grid cell (a method that needs actions only state-action), each checked against the params schema
    before anything runs."""
    out: dict[str, Cell] = {}
    for grid in sweep.grids:
        for short in grid.datasets:
            if short not in sweep.datasets:
                raise UserError(f"sweep grid names dataset '{short}', not one of {', '.join(sweep.datasets)}")
        for short, algorithm, variant, states, seed in itertools.product(
                grid.datasets, grid.algorithms, grid.variants, grid.expert_states, grid.seeds):
            if algorithms.get(algorithm).needs_actions and variant == "state-only":
                continue
            overrides = {**sweep.datasets[short], **preset_overrides(grid.presets), **grid.overrides, "train.algorithm": algorithm, "train.seed": seed,
                         "pretrain.seed": seed, "ingest.with_actions": variant == "state-action"}
            if states is not None:
                overrides["ingest.num_states"] = states
            if (grid.overrides or grid.presets) and not grid.label:
                raise UserError(f"sweep grid over {', '.join(grid.datasets)} has overrides but no label to name them")
            label = f"-{grid.label}" if grid.label else ""
            name = (f"{sweep.name}-{short}-{algorithm}-{VARIANT_SHORT[variant]}{label}"
                    f"{f'-n{states}' if states else ''}-s{seed}")
            _merge(overrides, base, f"sweep cell {name}")  # a typo fails before anything runs
            out[name] = Cell(name, overrides)
    if not out:
        raise UserError("the sweep has no cells; check its grids")
    return list(out.values())


def _merge(overrides: dict[str, Any], base: dict[str, Any], source: str) -> dict[str, Any]:
    """params.yaml's contents with the overrides applied, validated, so a typo fails before anything runs."""
    merged = {k: dict(v) for k, v in base.items()}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in merged or not name:
            raise UserError(f"{source}: override '{key}' is not section.key of a params.yaml section")
        merged[section][name] = value
    params_from_dict(merged, source)
    return merged


def queue(sweep_file: Path, params_file: Optional[Path], jobs: int, start: bool, dry_run: bool) -> list[Cell]:
    """Queue every cell as a DVC experiment and (with ``start``) start ``jobs`` workers."""
    sweep = load_sweep(sweep_file)
    todo = cells(sweep, as_dict(load_params(params_file)))
    if dry_run:
        return todo
    dvc = shutil.which("dvc")
    if dvc is None:
        raise UserError("dvc is not on PATH; activate the project's .venv (make setup)")
    for cell in todo:
        args = [dvc, "exp", "run", "--queue", "-n", cell.name]
        for key, value in cell.overrides.items():
            args += ["-S", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
        _dvc(args)
    if start:
        _dvc([dvc, "queue", "start", "-j", str(jobs)])
    return todo


def _dvc(args: list[str]) -> None:
    """Run a dvc command; output goes to a file, since queue workers inherit (and would hold open) a pipe."""
    with tempfile.TemporaryFile("w+") as out:
        code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        out.seek(0)
        lines = out.read().strip().splitlines()
    if code != 0:
        raise UserError(f"`{' '.join(args[1:4])} ...` failed: {lines[-1] if lines else f'exit code {code}'}")


# --- the local backend: cells as processes on this machine ----------------------------------------

RECORDS = ("learning_curve.csv", "iterations.csv", "metrics.json", "run.json")


def _plain(value: Any) -> Any:
    """Nested settings as YAML-safe lists and dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def cell_settings(cell: Cell, base: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The cell's full settings, working in ``folder`` (absolute paths, so the cell runs from anywhere)."""
    merged = _merge(cell.overrides, base, f"sweep cell {cell.name}")
    merged["runtime"]["workdir"] = str(folder)
    root = merged["runtime"].get("minari_root")
    if root and not os.environ.get("MINARI_DATASETS_PATH"):
        merged["runtime"]["minari_root"] = str(Path(root).resolve())
    return _plain(merged)


def write_cell_params(settings: dict[str, Any]) -> Path:
    """The cell's ``params.yaml`` in its working folder, which it makes."""
    folder = Path(settings["runtime"]["workdir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return folder / "params.yaml"


def collect(cell: Cell, records: dict[str, bytes], results: Path, wall_time: float, **extra: Any) -> None:
    """Write a finished cell's records (file name -> contents) to ``results/<cell>`` as a whole, with what made them."""
    with atomic_dir(results / cell.name) as tmp:
        for name, content in records.items():
            (tmp / name).write_bytes(content)
        write_json(tmp / "cell.json", {"name": cell.name, "overrides": cell.overrides, "wall_time_s": round(wall_time, 1),
                                       "commit": git_commit(), **extra})


def read_records(folder: Path) -> dict[str, bytes]:
    """A finished cell's records from its working folder."""
    return {name: (folder / "train_metrics" / name).read_bytes() for name in RECORDS}


def cell_note(folder: Path) -> Optional[str]:
    """What a pending cell's working ``folder`` says (for ``--dry-run``): whether a sweep process runs the cell
    now, and where its checkpoint stands; None for a cell that would start from scratch."""
    running = "running now in a sweep process" if _held(folder) else None
    saved = folder / "train" / "checkpoint"
    if not (saved / "state.pt").is_file():
        return running
    from smiling_pipeline import checkpoint  # torch and MuJoCo: imported only when there is one to read

    try:
        steps, curve = checkpoint.progress(saved)
    except UserError as e:  # a running cell may be replacing its checkpoint this moment
        return running or f"cannot resume: {e}"
    last = f" (last evaluation {curve[-1]['normalized_return']:.2f} at {int(curve[-1]['env_steps'])})" if curve else ""
    return f"{running}; its checkpoint: {steps} env steps{last}" if running else \
        f"resumes from its checkpoint at {steps} env steps{last}"


def pending_cells(sweep_file: Path, params_file: Optional[Path], results: Path) -> tuple[list[Cell], dict[str, Any]]:
    """The sweep's cells whose records are not yet in ``results``, and the base settings they override."""
    base = _plain(as_dict(load_params(params_file)))
    return [c for c in cells(load_sweep(sweep_file), base) if not (results / c.name / "metrics.json").is_file()], base


def on_sigterm(signum: int, frame: Any) -> None:
    """A terminated sweep stops like an interrupted one: its cells stop, their checkpoints stay."""
    raise KeyboardInterrupt


def _claim(folder: Path, tries: int = 5) -> Optional[IO[str]]:
    """An exclusive lock on a cell's folder (held while its process runs), or None when another sweep
    process holds it: several sweep processes can work through one grid without running a cell twice.
    A lock found taken is tried again for a moment, so a ``--dry-run`` probe (which holds it for an instant)
    does not make a sweep skip the cell."""
    handle = open(folder / ".lock", "w")
    for attempt in range(tries):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.05)
    handle.close()
    return None


def _held(folder: Path) -> bool:
    """Whether a sweep process holds ``folder``'s lock now, that is, runs its cell."""
    if not (folder / ".lock").is_file():
        return False
    handle = _claim(folder, tries=1)
    if handle is not None:
        handle.close()
    return handle is None


def run_local(sweep_file: Path, params_file: Optional[Path], jobs: int, runs: Path, results: Path,
              dry_run: bool = False) -> list[Cell]:
    """Run the cells whose records are not yet in ``results`` as ``smiling-cli train`` processes, ``jobs``
    at a time, each in ``runs/<cell>`` (resumed from its checkpoint when one is there); each finished
    cell's records go to ``results/<cell>`` at once, so an interrupted sweep continues where it stopped.
    Returns the cells it ran (those another sweep process runs are skipped), or with ``dry_run`` those it would."""
    todo, base = pending_cells(sweep_file, params_file, results)
    if dry_run or not todo:
        return todo
    check_writable(runs)
    check_writable(results)
    pending, failed, ran = list(todo), [], []
    active: dict[subprocess.Popen, tuple[Cell, Path, float, IO[str], IO[str]]] = {}
    previous = signal.signal(signal.SIGTERM, on_sigterm)  # a terminated sweep stops its cells too
    try:
        while pending or active:
            while pending and len(active) < jobs:
                cell = pending.pop(0)
                if (results / cell.name / "metrics.json").is_file():
                    continue  # finished meanwhile by another sweep process
                params = write_cell_params(cell_settings(cell, base, runs.resolve() / cell.name))
                claimed = _claim(params.parent)
                if claimed is None:
                    log.info(f"skipped {cell.name}: another sweep process is running it")
                    continue
                resume = ["--resume"] if (params.parent / "train" / "checkpoint" / "state.pt").is_file() else []
                output = open(params.parent / "train.log", "a")
                env = {**os.environ, "SMILING_SWEEP_CELL": cell.name}
                proc = subprocess.Popen([sys.executable, "-m", "smiling_pipeline.cli", "train", "--params", str(params),
                                         *resume], stdout=output,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                active[proc] = (cell, params.parent, time.monotonic(), output, claimed)
                ran.append(cell)
                log.info(f"started {cell.name}{' (resumed)' if resume else ''}: log {params.parent / 'train.log'}")
            time.sleep(1.0)
            for proc in [p for p in active if p.poll() is not None]:
                cell, folder, started, done_output, lock = active.pop(proc)
                done_output.close()
                if proc.returncode == 0:
                    collect(cell, read_records(folder), results, time.monotonic() - started)
                    log.info(f"finished {cell.name} in {(time.monotonic() - started) / 60:.1f} min")
                else:
                    failed.append(cell.name)
                    log.error(f"FAILED {cell.name} (exit {proc.returncode}): see {folder / 'train.log'}")
                lock.close()
    finally:
        for proc in active:  # Ctrl-C: stop the running cells; their checkpoints let a rerun continue
            proc.terminate()
        for proc, (_, _, _, cell_output, cell_lock) in active.items():
            proc.wait()
            cell_output.close()
            cell_lock.close()
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise UserError(f"{len(failed)} of {len(ran)} cells failed ({', '.join(failed)}); their logs are in {runs}")
    return ran
