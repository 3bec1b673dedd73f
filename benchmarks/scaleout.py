"""Scale-out: what a sweep backend costs per cell, and cells per hour with one and two Ray nodes.

Run:  .venv/bin/python benchmarks/scaleout.py [--steps 2000] [--cells 6]   (after `make repro`: it
      trains on the default pipeline's dataset)  -> reports/scaleout.md and reports/scaleout.json

All in one run, on one machine, every cell logging to one MLflow server on PostgreSQL:
- **per-cell overhead**: one DAC cell on InvertedPendulum-v5 (``--steps`` env steps) as a plain
  ``smiling-cli train``, as ``sweep --backend local``, as ``sweep --backend ray`` starting its own
  one-node cluster and joining a running one, and as a queued DVC experiment (``dvc queue start``,
  in a clone of this repository sharing its DVC cache, so only the train stage onward runs);
- **cells per hour**: ``--cells`` such cells with ``--backend local -j 2``, Ray on one node with 2
  CPUs and Ray on two nodes with 1 CPU each (``ray.cluster_utils.Cluster``).
Two cores: the node counts show the cost and correctness of spreading cells, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smiling_pipeline.server import tracking_server  # noqa: E402

BIN = Path(sys.executable).parent
DATASET = "smiling/invertedpendulum/expert-v0"
PAPER_CELLS = 5 * 3 * 2 * 5  # environments x algorithms x variants x seeds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cell(steps: int) -> dict[str, Any]:
    return {"ingest.dataset": DATASET, "train.algorithm": "dac", "train.steps": steps, "train.eval_every": steps // 2,
            "train.learning_starts": steps // 4,
            "train.eval_episodes": 5, "train.checkpoint_every": steps, "evaluate.video": False}


def _sweep_file(folder: Path, name: str, steps: int, seeds: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": {"ip": _cell(steps)},
                                    "grids": [{"datasets": ["ip"], "seeds": list(range(seeds)), "algorithms": ["dac"],
                                               "variants": ["state-only"]}]}))
    return path


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def _sweep(folder: Path, name: str, steps: int, seeds: int, env: dict[str, str], *backend: str) -> float:
    sweep = _sweep_file(folder, name, steps, seeds)
    return _timed([str(BIN / "smiling-cli"), "sweep", str(sweep), *backend, "--runs", str(folder / "runs"),
                   "--results", str(folder / "cells" / name), "--params", str(ROOT / "params.yaml")], env, folder)


def _plain(folder: Path, steps: int, env: dict[str, str]) -> float:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in _cell(steps).items():
        section, _, field = key.partition(".")
        params[section][field] = value
    (folder / "plain.yaml").write_text(yaml.safe_dump(params))
    return _timed([str(BIN / "smiling-cli"), "train", "--params", str(folder / "plain.yaml"), "--workdir",
                   str(folder / "plain")], env, folder)


def _dvc_queue(folder: Path, steps: int, env: dict[str, str]) -> float:
    """One queued DVC experiment in a clone sharing this repository's DVC cache: the time from queueing
    to the queue being empty again."""
    clone = folder / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    dvc = str(BIN / "dvc")
    subprocess.run([dvc, "cache", "dir", str(ROOT / ".dvc" / "cache")], cwd=clone, check=True, env=env)
    subprocess.run([dvc, "checkout", "-q"], cwd=clone, env=env, capture_output=True)
    subprocess.run(["git", "config", "user.email", "bench@localhost"], cwd=clone, check=True)
    subprocess.run(["git", "config", "user.name", "bench"], cwd=clone, check=True)
    sweep = _sweep_file(clone, "bench-dvc", steps, 1)
    started = time.perf_counter()
    subprocess.run([str(BIN / "smiling-cli"), "sweep", str(sweep), "-j", "1"], cwd=clone, env=env, check=True,
                   capture_output=True)
    while True:
        status = subprocess.run([dvc, "queue", "status"], cwd=clone, env=env, capture_output=True, text=True).stdout
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(1.0)
    wall = time.perf_counter() - started
    if "Success" not in status:
        logs = subprocess.run([dvc, "queue", "logs", "bench-dvc-ip-dac-so-s0"], cwd=clone, env=env, capture_output=True,
                              text=True).stdout
        raise SystemExit(f"the DVC queue's experiment did not succeed:\n{status}\n{logs[-3000:]}")
    subprocess.run([dvc, "queue", "stop"], cwd=clone, env=env, capture_output=True)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--out", type=Path, default=ROOT / "reports")
    args = ap.parse_args()
    if not (ROOT / "data" / "minari" / DATASET).is_dir():
        raise SystemExit(f"{DATASET} is missing in data/minari: run `make repro` first")
    from ray.cluster_utils import Cluster

    from smiling_pipeline.sweep import on_sigterm

    signal.signal(signal.SIGTERM, on_sigterm)  # a killed benchmark stops its servers and clusters too
    work = Path(tempfile.mkdtemp(prefix="smiling-scaleout-"))
    work.chmod(0o755)  # PostgreSQL runs as user postgres when this runs as root
    res: dict[str, Any] = {"steps": args.steps, "cells": args.cells, "cpus": os.cpu_count()}
    try:
        with tracking_server(work / "tracking", _free_port(), _free_port()) as url:
            env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MINARI_DATASETS_PATH": str(ROOT / "data" / "minari"),
                   "PATH": f"{BIN}:{os.environ['PATH']}"}
            one = {"plain smiling-cli train": _plain(work, args.steps, env),
                   "sweep --backend local": _sweep(work, "bench-local", args.steps, 1, env, "--backend", "local", "-j", "1"),
                   "sweep --backend ray (starts a one-node cluster)": _sweep(work, "bench-ray", args.steps, 1, env,
                                                                             "--backend", "ray")}
            nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
            try:
                one["sweep --backend ray --address (running cluster)"] = _sweep(
                    work, "bench-ray-warm", args.steps, 1, env, "--backend", "ray", "--address", nodes.address)
                many = {"local -j 2": _sweep(work, "bench-many-local", args.steps, args.cells, env, "--backend",
                                             "local", "-j", "2"),
                        "Ray, 1 node x 2 CPUs": _sweep(work, "bench-many-ray1", args.steps, args.cells, env,
                                                       "--backend", "ray", "--address", nodes.address)}
            finally:
                nodes.shutdown()
            nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            try:
                nodes.add_node(num_cpus=1)
                nodes.wait_for_nodes()
                many["Ray, 2 nodes x 1 CPU"] = _sweep(work, "bench-many-ray2", args.steps, args.cells, env,
                                                      "--backend", "ray", "--address", nodes.address)
            finally:
                nodes.shutdown()
            one["queued DVC experiment (dvc queue start -j 1)"] = _dvc_queue(work, args.steps, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain = one["plain smiling-cli train"]
    res["one_cell_s"] = one
    res["cells_per_hour"] = {k: args.cells / v * 3600 for k, v in many.items()}
    res["many_wall_s"] = many
    lines = ["# Scale-out: per-cell overhead and cells per hour", "",
             f"`.venv/bin/python benchmarks/scaleout.py --steps {args.steps} --cells {args.cells}`, on this machine "
             f"({res['cpus']} cores, no GPU), every cell logging to one MLflow server on PostgreSQL. A cell: DAC on "
             f"InvertedPendulum-v5, {args.steps} env steps, the default networks (ingest, train, and with the ray "
             "backend evaluate; the DVC experiment runs the pipeline's train, evaluate and report stages).", "",
             "| one cell run as | wall time (s) | overhead vs plain train (s) |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {v - plain:+.1f} |" for k, v in one.items()]
    lines += ["", f"| {args.cells} cells with | wall time (s) | cells per hour |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {args.cells / v * 3600:.0f} |" for k, v in many.items()]
    lines += ["", "Two cores: one node with 2 CPUs and two nodes with 1 CPU each have the same compute, so the rows "
              "compare the cost of spreading cells over nodes, not a speed-up."]
    (args.out / "scaleout.json").write_text(json.dumps(res, indent=2))
    (args.out / "scaleout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
