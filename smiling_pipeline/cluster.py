"""Sweeps on a Ray cluster: every cell is one Ray task that runs the pipeline's stages on the node taking it.

The driver (``smiling-cli sweep --backend ray``) pretrains each distinct expert score model once, as a
task, and hands the model file to every SMILING cell that needs it. Each cell then ingests, trains
(resuming from its checkpoint when a retry finds one) and evaluates in ``runs/<cell>`` on its node,
logging to the MLflow tracking server that every node reaches. Ray retries a cell whose worker or node
died; a finished cell's records come back to the driver, and a rerun skips that cell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from smiling_pipeline import algorithms, tracking
from smiling_pipeline.config import Params, params_from_dict
from smiling_pipeline.errors import UserError
from smiling_pipeline.evaluate import evaluate, policy_ref, trained_records
from smiling_pipeline.io import atomic_file, check_writable
from smiling_pipeline.pipeline import ensure_ingested, ensure_pretrained, prepare, slug
from smiling_pipeline.pretrain import MODEL_FILE
from smiling_pipeline.sweep import (
    Cell,
    cell_settings,
    collect,
    on_sigterm,
    pending_cells,
    read_records,
    write_cell_params,
)
from smiling_pipeline.train import train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How cells are placed on the cluster (``smiling-cli sweep --backend ray`` options)."""

    address: Optional[str] = None  # auto | HOST:PORT | ray://HOST:10001; None: a one-node cluster here
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else the repository's sqlite store
    cpus_per_cell: float = 1.0
    gpus_per_cell: Optional[float] = None  # None: 0.25 where the cluster has GPUs, else 0
    retries: int = 3  # retries of a cell whose worker or node died


def pretrain_key(settings: dict[str, Any]) -> str:
    """What decides an expert score model (the data, the model, its fitting, the matmul precision):
    cells that agree on these share one pretraining."""
    decides = {k: settings[k] for k in ("ingest", "score", "pretrain")} | {"precision": settings["runtime"]["precision"]}
    digest = hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug(settings['ingest']['dataset'])}-s{settings['pretrain']['seed']}-{digest}"


@contextmanager
def _output_to(log_file: Path) -> Iterator[None]:
    """Send this worker's stdout, stderr and the package's log (progress bars, notes) to the cell's log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    handler = logging.StreamHandler(sys.stderr)
    package = logging.getLogger("smiling_pipeline")
    with open(log_file, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        try:
            yield
        finally:
            package.removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def _params(settings: dict[str, Any]) -> Params:
    p = params_from_dict(settings, "sweep cell")
    prepare(p)
    return p


def pretrain_task(settings: dict[str, Any]) -> bytes:
    """A Ray task: the expert score model file for ``settings`` (fitted in its working folder, or found
    there from an earlier attempt on this node)."""
    folder = Path(settings["runtime"]["workdir"])
    with _output_to(folder / "pretrain.log"):
        p = _params(settings)
        ensure_pretrained(p, ensure_ingested(p))
    return (folder / "pretrain" / MODEL_FILE).read_bytes()


def cell_task(name: str, settings: dict[str, Any], model: Optional[bytes]) -> dict[str, Any]:
    """A Ray task: one sweep cell's ingest, train (continued from its checkpoint after a lost worker)
    and evaluate stages, tagged and named like a cell of the other backends; returns its records."""
    started = time.monotonic()
    folder = Path(settings["runtime"]["workdir"])
    write_cell_params(settings)
    os.environ["SMILING_SWEEP_CELL"] = name  # tags, run names and the parent run, as with --backend local
    try:
        with _output_to(folder / "train.log"):
            p = _params(settings)
            data = ensure_ingested(p, needs_env=True)
            expert = None
            if model is not None:
                path = folder / "pretrain" / MODEL_FILE
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_file(path) as tmp:
                        tmp.write_bytes(model)
                expert = ensure_pretrained(p, data)
            resume = (folder / "train" / "checkpoint" / "state.pt").is_file()
            trained = trained_records(folder)
            # runs an earlier attempt left RUNNING when its worker died; a resumed train run continues
            tracking.end_stale_runs(data.meta["dataset_id"], name, ("evaluate",) if resume or trained else ("train", "evaluate"))
            if trained is None:
                train(p, data, expert, folder, resume=resume)
                trained = trained_records(folder)
            evaluate(p, data, folder, policy_ref(folder, None), video=False, trained=trained)
    finally:
        os.environ.pop("SMILING_SWEEP_CELL", None)
    return {"records": read_records(folder), "wall_time_s": time.monotonic() - started, "node": socket.gethostname(),
            "resumed": resume}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'smiling-pipeline[cluster]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nothing answers at (Ray itself waits minutes, then aborts)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}); "
                        "start one with `ray start --head` or leave out --address") from None


def _connect(ray: Any, opts: RayOptions, env_vars: dict[str, str]) -> None:
    """Join the cluster at ``opts.address`` (or start one here) with the cells' environment variables."""
    extra = {} if opts.address else {"include_dashboard": False}
    try:
        ray.init(address=opts.address, runtime_env={"env_vars": env_vars}, log_to_driver=False,
                 logging_level=logging.WARNING, **extra)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot reach a Ray cluster at {opts.address}: {str(e).splitlines()[0]}; "
                        "start one with `ray start --head` or leave out --address") from e


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    return (f"{type(cause).__name__}: {cause}".splitlines() or [type(cause).__name__])[0]


def run_ray(sweep_file: Path, params_file: Optional[Path], runs: Path, results: Path, opts: RayOptions,
            dry_run: bool = False) -> list[Cell]:
    """Run the cells whose records are not yet in ``results`` as Ray tasks; each finished cell's records
    go to ``results/<cell>`` at once, so an interrupted sweep (Ctrl-C) continues where it stopped."""
    todo, base = pending_cells(sweep_file, params_file, results)
    if dry_run or not todo:
        return todo
    ray = _import_ray()
    if opts.address and opts.address != "auto":
        _check_reachable(opts.address)
    uri = opts.tracking_uri or tracking.tracking_uri()
    tracking.check_store(uri)
    if opts.address and uri.startswith("sqlite:"):
        log.warning(f"the cells log to {uri}, a file only this machine reaches; "
                    "give a cluster an MLflow server (--tracking-uri http://...)")
    check_writable(results)
    runs = runs.resolve()
    settings = {c.name: cell_settings(c, base, runs / c.name) for c in todo}
    env_vars = {"MLFLOW_TRACKING_URI": uri, **{k: os.environ[k] for k in ("MINARI_DATASETS_PATH",) if k in os.environ}}
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    _connect(ray, opts, env_vars)
    pending: list[Any] = []
    try:
        gpus = opts.gpus_per_cell if opts.gpus_per_cell is not None else (0.25 if ray.cluster_resources().get("GPU") else 0)
        placement = {"num_cpus": opts.cpus_per_cell, "num_gpus": gpus, "max_retries": opts.retries}
        models: dict[str, Any] = {}
        tasks: dict[Any, Cell] = {}
        for cell in todo:
            s, model = settings[cell.name], None
            if algorithms.get(s["train"]["algorithm"]).needs_expert_model:
                key = pretrain_key(s)
                if key not in models:  # once per distinct expert model, shared by the cells that need it
                    shared = {**s, "runtime": {**s["runtime"], "workdir": str(runs / "_pretrain" / key)}}
                    models[key] = ray.remote(pretrain_task).options(name=f"pretrain-{key}", **placement).remote(shared)
                model = models[key]
            tasks[ray.remote(cell_task).options(name=cell.name, **placement).remote(cell.name, s, model)] = cell
        log.info(f"{len(todo)} cells and {len(models)} expert pretrainings submitted to Ray "
                 f"({ray.cluster_resources().get('CPU', 0):g} CPUs); logs in {runs}/<cell>/train.log on the node running each")
        failed = []
        pending = list(tasks)
        with tqdm(total=len(todo), desc="cells", unit="cell", dynamic_ncols=True) as bar, logging_redirect_tqdm():
            while pending:
                (done,), pending = ray.wait(pending, num_returns=1)
                cell = tasks[done]
                try:
                    out = ray.get(done)
                except ray.exceptions.RayError as e:
                    failed.append(cell.name)
                    log.error(f"FAILED {cell.name}: {_first_line(e)}")
                    continue
                finally:
                    bar.update()
                collect(cell, out["records"], results, out["wall_time_s"], backend="ray", node=out["node"],
                        resumed=out["resumed"])
                log.info(f"finished {cell.name} on {out['node']} in {out['wall_time_s'] / 60:.1f} min")
    except KeyboardInterrupt:  # stop the running cells (their checkpoints let a rerun continue) and leave
        for ref in pending:
            ray.cancel(ref)
        ray.wait(pending, num_returns=len(pending), timeout=60)
        raise
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise UserError(f"{len(failed)} of {len(todo)} cells failed ({', '.join(failed)}); their logs are in "
                        f"{runs}/<cell>/train.log on the nodes that ran them")
    return todo
