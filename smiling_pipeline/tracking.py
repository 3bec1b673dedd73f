"""MLflow tracking: one store per repository (also from DVC experiment copies), one experiment per dataset.

The store is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<repo>/mlflow.db`` with artifacts in
``<repo>/mlruns``, where ``<repo>`` is the repository even when DVC runs a queued experiment in a
copy under ``.dvc/tmp/exps/``. Creating the store and experiments happens under a file lock,
because several processes creating a fresh sqlite store at once fail.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from smiling_pipeline.errors import UserError

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
    with _store_lock(uri):
        exp = mlflow.get_experiment_by_name(dataset_id)
        if exp is not None:
            return exp.experiment_id
        location = (repo_root() / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(dataset_id, artifact_location=location)


def run_tags(extra: dict[str, Any]) -> dict[str, str]:
    """A stage's tags as strings, plus the DVC experiment or sweep cell that launched it."""
    tags = {k: str(v) for k, v in extra.items()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("SMILING_SWEEP_CELL"):  # set by `smiling-cli sweep --backend local`
        tags["sweep_cell"] = os.environ["SMILING_SWEEP_CELL"]
    return tags


@contextmanager
def run(stage: str, dataset_id: str, params: dict[str, Any], tags: Optional[dict[str, str]] = None,
        run_id: Optional[str] = None) -> Iterator[Any]:
    """An MLflow run of ``stage`` on ``dataset_id`` with the settings as params and standard tags.

    A stage that fails ends its run as FAILED with the error's first line in the tag ``error`` (KILLED
    when interrupted), so the UI never shows a half-finished run as finished or running.
    """
    import mlflow

    exp = experiment_id(dataset_id)
    all_tags = {"stage": stage, "dataset": dataset_id, "git_commit": git_commit(), **(tags or {})}
    with mlflow.start_run(experiment_id=exp, run_id=run_id, run_name=None if run_id else stage, tags=all_tags) as active:
        try:
            if run_id is None:
                mlflow.log_params(_flatten(params))
            yield active
        except BaseException as e:
            mlflow.set_tag("error", (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0][:500])
            if isinstance(e, KeyboardInterrupt):
                mlflow.end_run("KILLED")
            raise


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
