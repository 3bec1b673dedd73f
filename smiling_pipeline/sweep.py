"""Sweeps: seeds x algorithms x variants x datasets x expert-state counts as queued DVC experiments.

A sweep file names the grid; every cell becomes ``dvc exp run --queue -n NAME -S key=value ...``
on top of ``params.yaml``, and ``dvc queue start -j N`` runs them. Every run logs to the same
MLflow store, which ``smiling-cli report --compare --exp-prefix NAME-`` then reads.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import dacite
import yaml

from smiling_pipeline.config import as_dict, load_params, params_from_dict
from smiling_pipeline.errors import UserError

VARIANT_SHORT = {"state-only": "so", "state-action": "sa"}


@dataclass(frozen=True)
class Grid:
    """One product of axes; a sweep is the union of its grids."""

    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    algorithms: tuple[Literal["smiling", "dac", "bc"], ...] = ("smiling", "dac", "bc")
    variants: tuple[Literal["state-only", "state-action"], ...] = ("state-only", "state-action")
    expert_states: tuple[Optional[int], ...] = (None,)  # None: ingest.num_states as configured


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
    """Every grid cell (BC only with actions), each checked against the params schema before anything runs."""
    out: dict[str, Cell] = {}
    for grid in sweep.grids:
        for short in grid.datasets:
            if short not in sweep.datasets:
                raise UserError(f"sweep grid names dataset '{short}', not one of {', '.join(sweep.datasets)}")
        for short, algorithm, variant, states, seed in itertools.product(
                grid.datasets, grid.algorithms, grid.variants, grid.expert_states, grid.seeds):
            if algorithm == "bc" and variant == "state-only":
                continue  # BC needs expert actions
            overrides = {**sweep.datasets[short], "train.algorithm": algorithm, "train.seed": seed,
                         "pretrain.seed": seed, "ingest.with_actions": variant == "state-action"}
            if states is not None:
                overrides["ingest.num_states"] = states
            name = f"{sweep.name}-{short}-{algorithm}-{VARIANT_SHORT[variant]}{f'-n{states}' if states else ''}-s{seed}"
            _check(overrides, base, f"sweep cell {name}")
            out[name] = Cell(name, overrides)
    if not out:
        raise UserError("the sweep has no cells; check its grids")
    return list(out.values())


def _check(overrides: dict[str, Any], base: dict[str, Any], source: str) -> None:
    """Apply the overrides to params.yaml's contents and validate, so a typo fails before queueing."""
    merged = {k: dict(v) for k, v in base.items()}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in merged or not name:
            raise UserError(f"{source}: override '{key}' is not section.key of a params.yaml section")
        merged[section][name] = value
    params_from_dict(merged, source)


def queue(sweep_file: Path, params_file: Path, jobs: int, start: bool, dry_run: bool) -> list[Cell]:
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
    with tempfile.TemporaryFile("w+") as log:
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        log.seek(0)
        lines = log.read().strip().splitlines()
    if code != 0:
        raise UserError(f"`{' '.join(args[1:4])} ...` failed: {lines[-1] if lines else f'exit code {code}'}")
