"""MLflow tracking: one store per repository (also from DVC experiment copies), one experiment per dataset.

This module is the package's one seam to the tracking backend: the stages, ``compare`` and the CLI call
its functions and never import ``mlflow`` (``tests/test_architecture.py`` checks it; ``server`` runs the
MLflow server and UI programs). Another backend is another module with these functions.

The store is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<repo>/mlflow.db`` with artifacts in
``<repo>/mlruns``, where ``<repo>`` is the repository even when DVC runs a queued experiment in a
copy under ``.dvc/tmp/exps/``. Creating the store and experiments happens under a file lock,
because several processes creating a fresh sqlite store at once fail.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar
from urllib.parse import urlparse

from smiling_pipeline.errors import UserError

T = TypeVar("T")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on runs, not GenAI
_EXPS_MARK = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def repo_root(start: Optional[Path] = None) -> Path:
    """The project folder: the nearest parent holding ``.dvc`` outside DVC's experiment copies."""
    here = (start or Path.cwd()).resolve()
    text = str(here) + os.sep
    if _EXPS_MARK in text:
        return Path(text.split(_EXPS_MARK)[0])
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the repository's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Fail fast (before any training) when the tracking store cannot be used."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except Exception as e:
            raise UserError(f"MLflow tracking server {uri} is unreachable ({e.__class__.__name__}); "
                            "start it or unset MLFLOW_TRACKING_URI") from e
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"MLflow store {uri}: folder {folder} is missing or not writable")
    elif parsed.scheme in ("", "file"):
        raise UserError(f"MLflow file stores are deprecated; use sqlite:///path/mlflow.db instead of {uri}")


def git_commit() -> str:
    """The checked-out commit of the repository, or ``unknown``."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=repo_root()).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation across processes: creating a fresh sqlite schema is not concurrent-safe."""
    if not uri.startswith("sqlite:///"):
        yield  # a tracking server serialises for us
        return
    with open(uri[len("sqlite:///"):] + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def experiment_id(dataset_id: str) -> str:
    """The experiment named after the dataset, created (with artifacts in ``<repo>/mlruns``) if needed."""
    import mlflow

    uri = tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):  # a server's cells can still race here: the loser retries and finds it
        return on_conflict_retry(lambda: _get_or_create_experiment(dataset_id, uri))


def _get_or_create_experiment(dataset_id: str, uri: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(dataset_id)
    if exp is None:
        location = (repo_root() / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(dataset_id, artifact_location=location, tags=EXPERIMENT_KIND)
    if exp.tags.get("mlflow.experimentKind") is None:  # made by an earlier version: the UI would open on GenAI
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return exp.experiment_id


def execution_key() -> Optional[str]:
    """What ties the stage runs of one pipeline execution together: the sweep cell, else the DVC
    experiment, else the ``dvc repro`` process that runs the stages; None for a stage run on its own."""
    if os.environ.get("SMILING_SWEEP_CELL"):
        return "cell:" + os.environ["SMILING_SWEEP_CELL"]
    pid = os.getppid()
    for _ in range(6):  # smiling-cli <- shell <- dvc (a few levels at most)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return None
        if any(Path(part.decode(errors="replace")).name == "dvc" for part in cmdline[:2]):
            return f"dvc:{os.environ.get('DVC_EXP_NAME', 'repro')}:{pid}:{started}"
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            return None
    return None


def _parent_run(experiment: str, name: str, tags: dict[str, str]) -> Optional[str]:
    """The run of this pipeline execution that the stage runs nest under (made by the first stage)."""
    import mlflow

    key = execution_key()
    if key is None:
        return None
    client = mlflow.MlflowClient()
    with _store_lock(tracking_uri()):
        found = client.search_runs([experiment], f"tags.pipeline_key = '{key}' and tags.stage = 'pipeline'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        parent = client.create_run(experiment, run_name=name,
                                   tags={**tags, "stage": "pipeline", "pipeline_key": key})
        return parent.info.run_id


def run_tags(extra: dict[str, Any]) -> dict[str, str]:
    """A stage's tags as strings, plus the DVC experiment or sweep cell that launched it."""
    tags = {k: str(v) for k, v in extra.items()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("SMILING_SWEEP_CELL"):  # set by `smiling-cli sweep --backend local`
        tags["sweep_cell"] = os.environ["SMILING_SWEEP_CELL"]
    return tags


def run_name(stage: str, tags: dict[str, str]) -> str:
    """A name to tell runs apart in the UI: ``smiling-state-only-s0`` (train), ``pretrain-state-only-s0``,
    ``evaluate-dac-state-action-s1``, with ``-linear`` and the sweep cell or DVC experiment when set."""
    parts = [] if stage == "train" else [stage]
    parts += [tags[k] for k in ("algorithm", "variant") if k in tags and not (stage == "pretrain" and k == "algorithm")]
    parts += ["linear"] if tags.get("linear") == "True" else []
    parts += [f"s{tags['seed']}"] if "seed" in tags else []
    name = "-".join(parts)
    where = tags.get("sweep_cell") or tags.get("dvc_exp")
    return f"{name} ({where})" if where else name


@contextmanager
def run(stage: str, dataset_id: str, params: dict[str, Any], tags: Optional[dict[str, str]] = None,
        run_id: Optional[str] = None) -> Iterator[str]:
    """An MLflow run of ``stage`` on ``dataset_id`` (its id is yielded) with the settings as params, standard
    tags and a readable name, nested under the run of its pipeline execution when there is one.

    A stage that fails ends its run as FAILED with the error's first line in the tag ``error`` (KILLED
    when interrupted), so the UI never shows a half-finished run as finished or running.
    """
    import mlflow

    exp = experiment_id(dataset_id)
    all_tags = {"stage": stage, "dataset": dataset_id, "git_commit": git_commit(), **(tags or {})}
    if run_id is None:
        where = all_tags.get("sweep_cell") or all_tags.get("dvc_exp") or "dvc repro"
        parent = _parent_run(exp, f"pipeline ({where})", {k: v for k, v in all_tags.items() if k != "stage"})
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(experiment_id=exp, run_id=run_id, run_name=None if run_id else run_name(stage, all_tags),
                          tags=all_tags) as active:
        try:
            if run_id is None:
                mlflow.log_params(_flatten(params))
            yield active.info.run_id
        except BaseException as e:
            mlflow.set_tag("error", (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0][:500])
            _end_parent(active, "FAILED")
            if isinstance(e, KeyboardInterrupt):
                mlflow.end_run("KILLED")
            raise
    _end_parent(active, "FINISHED")


def _end_parent(active: Any, status: str) -> None:
    """The pipeline run ends with its latest stage: FINISHED, or FAILED when a stage failed."""
    import mlflow

    parent = active.data.tags.get("mlflow.parentRunId")
    if parent:
        mlflow.MlflowClient().set_terminated(parent, status)


def end_stale_runs(dataset_id: str, cell: str, stages: tuple[str, ...]) -> None:
    """End as KILLED the ``stages`` runs of a sweep cell still RUNNING: left by an attempt whose worker
    died, before a retry starts its own."""
    import mlflow

    client = mlflow.MlflowClient()
    for found in client.search_runs([experiment_id(dataset_id)],
                                    f"tags.sweep_cell = '{cell}' and attributes.status = 'RUNNING'"):
        if found.data.tags.get("stage") in stages:
            client.set_terminated(found.info.run_id, "KILLED")


CHAMPION = "champion"


def promote(model_uri: str, dataset_id: str, normalized_return: float) -> tuple[str, str, bool]:
    """Register a policy under the dataset's model name; it takes the alias ``champion`` when its
    evaluated normalized return beats the current champion's. Returns the registered version's URI, the
    champion's URI, and whether this version is now the champion."""
    import mlflow

    name = dataset_id.replace("/", "-") + "-policy"
    client = mlflow.MlflowClient()
    version = on_conflict_retry(lambda: mlflow.register_model(
        model_uri, name, tags={"normalized_return": f"{normalized_return:.6g}"})).version
    try:
        best = float(client.get_model_version_by_alias(name, CHAMPION).tags.get("normalized_return", "-inf"))
    except mlflow.exceptions.MlflowException:  # no champion yet
        best = float("-inf")
    if normalized_return > best:
        client.set_registered_model_alias(name, CHAMPION, version)
    return f"models:/{name}/{version}", f"models:/{name}@{CHAMPION}", normalized_return > best


def attach_files(run_id: str, files: list[Path], artifact_path: str) -> bool:
    """Add files to a finished run's artifacts (a report to the run it reports on); False if the store
    does not hold that run."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    if not _holds(client, run_id):
        return False
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)
    return True


def on_conflict_retry(call: Callable[[], T], attempts: int = 5) -> T:
    """``call()``, again when a tracking server's database refused it for a unique-key conflict: MLflow
    gets-or-creates datasets and model versions in two steps, which concurrent cells can race through."""
    import mlflow

    for attempt in range(attempts):
        try:
            return call()
        except mlflow.exceptions.MlflowException as e:
            if attempt == attempts - 1 or not any(w in str(e) for w in ("UniqueViolation", "unique constraint",
                                                                         "IntegrityError", "already exists")):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def log_dataset(meta: dict[str, Any], train: Any, source: Path, context: str) -> None:
    """The Minari dataset (its folder in the store: ``source``) as an MLflow dataset input of the active
    run, for the Dataset column and filters: its id, the ingest content hash as digest, the rows used."""
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy

    dataset = from_numpy(train, source=str(source), name=meta["dataset_id"], digest=meta["content_hash"][:16])
    tags = {"expert_rows": str(len(train)), "variant": "state-action" if meta["with_actions"] else "state-only"}
    on_conflict_retry(lambda: mlflow.log_input(dataset, context=context, tags=tags))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


PIP_REQUIREMENTS = ["torch", "numpy", "smiling-pipeline"]


def log_torch_model(model: Any, name: str) -> str:
    """Log an ``nn.Module`` as an MLflow model (pickle format, explicit requirements: fast); returns its URI."""
    import mlflow.pytorch

    info = mlflow.pytorch.log_model(model, name=name, serialization_format="pickle", pip_requirements=PIP_REQUIREMENTS)
    return info.model_uri


def active_run_id() -> Optional[str]:
    """The id of the MLflow run in progress, if any."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else None


def has_run(run_id: str, dataset_id: str) -> bool:
    """Whether the store holds the run ``run_id`` (the store and the dataset's experiment are made first if needed)."""
    import mlflow

    experiment_id(dataset_id)
    return _holds(mlflow.MlflowClient(), run_id)


def _holds(client: Any, run_id: str) -> bool:
    """Whether ``client``'s store holds the run ``run_id``."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def logged_until(run_id: str) -> dict[str, int]:
    """For each metric of a run, the last step MLflow holds."""
    import mlflow

    client = mlflow.MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def log_metrics(metrics: dict[str, float], step: int) -> None:
    """Log finite metrics at ``step`` (skips None)."""
    import mlflow

    values = {k: float(v) for k, v in metrics.items() if v is not None}
    if values:
        mlflow.log_metrics(values, step=step)


def load_torch_model(uri: str, device: str) -> Any:
    """The ``nn.Module`` logged at ``uri`` (``models:/...``, ``runs:/...``) in the project's store, on ``device``."""
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.pytorch.load_model(uri, map_location=device)


def log_artifact(path: Path, subdir: Optional[str] = None) -> None:
    """Add the file ``path`` to the active run's artifacts (under ``subdir`` when given)."""
    import mlflow

    mlflow.log_artifact(str(path), subdir)


def set_tag(key: str, value: str) -> None:
    """Set a tag of the active run."""
    import mlflow

    mlflow.set_tag(key, value)


@dataclass(frozen=True)
class StoredRun:
    """A finished run read back from a store: its id, name, tags, params (as text) and last metric values;
    ``history(key)`` reads one metric's (step, value) pairs, sorted, only when asked (a store holds thousands)."""

    run_id: str
    name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    history: Callable[[str], list[tuple[int, float]]]


def finished_runs(uri: str, stage: str, dataset: Optional[str] = None) -> list[StoredRun]:
    """The FINISHED runs of ``stage`` in the store ``uri`` (only ``dataset``'s experiment when given), newest first."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments() if dataset is None or e.name == dataset]
    if not experiments:
        return []
    found = client.search_runs(experiments, f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=50_000)

    def reader(run_id: str) -> Callable[[str], list[tuple[int, float]]]:
        return lambda key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    return [StoredRun(r.info.run_id, r.info.run_name, r.data.tags, r.data.params, r.data.metrics,
                      reader(r.info.run_id))
            for r in found]


def experiments(uri: str) -> list[tuple[str, str]]:
    """The (name, id) of every experiment in the store ``uri``."""
    import mlflow

    return [(e.name, e.experiment_id) for e in mlflow.MlflowClient(uri).search_experiments()]
