"""A shared MLflow tracking server on PostgreSQL, for sweeps whose cells run on many processes or nodes.

Many concurrent writers need a tracking server backed by a real database (a shared sqlite file
fails with "database is locked"). ``postgres`` runs a private PostgreSQL cluster in a folder (made
with ``initdb`` on first use), ``mlflow_server`` serves the store and proxies artifacts, so a node
only needs the server's URL. ``smiling-cli tracking-server`` and the tests start both from here;
``smiling-cli ui`` runs the MLflow UI from here too.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from smiling_pipeline import tracking
from smiling_pipeline.errors import UserError

DB_USER, DB_NAME = "smiling", "mlflow"


def pg_tool(name: str) -> str:
    """A PostgreSQL program (``initdb``, ``pg_ctl``, ...) from PATH or Debian's versioned folders."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise UserError(f"PostgreSQL's {name} is not installed; install it (Debian: apt-get install postgresql)")
    return found


def _as_db_owner(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return args
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise UserError("running as root needs the 'postgres' user (made by the postgresql package)") from None
    return ["runuser", "-u", "postgres", "--", *args]


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(_as_db_owner(args), capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"{what} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


@contextmanager
def postgres(folder: Path, port: int) -> Iterator[str]:
    """A PostgreSQL cluster in ``folder`` on 127.0.0.1:``port`` with an ``mlflow`` database; yields its
    SQLAlchemy URI and stops the server on exit (the data stays, so a restart keeps every run)."""
    folder = folder.resolve()
    closed = [str(f) for f in folder.parents if f.exists() and not os.stat(f).st_mode & 0o001]
    if os.geteuid() == 0 and closed:
        raise UserError(f"PostgreSQL runs as the user postgres, which cannot enter {closed[0]}; "
                        "put its folder where every user can (e.g. under /tmp or the project)")
    if not (folder / "PG_VERSION").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        _run([pg_tool("initdb"), "-D", str(folder), "-U", DB_USER, "--auth=trust", "-E", "UTF8"], "initdb")
    _run([pg_tool("pg_ctl"), "-D", str(folder), "-l", str(folder / "server.log"), "-w", "-t", "60",
          "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], f"starting PostgreSQL on port {port}")
    try:
        exists = subprocess.run(_as_db_owner([pg_tool("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER,
                                              "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{DB_NAME}'"]),
                                capture_output=True, text=True).stdout.strip()
        if exists != "1":
            _run([pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME], "createdb")
        yield f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"
    finally:
        subprocess.run(_as_db_owner([pg_tool("pg_ctl"), "-D", str(folder), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


# How long uvicorn keeps an idle client connection open (its default is 5 s). A client's pooled connection that
# the server closes just as the client sends on it resets the request; MLflow does not resend a run's creation
# (not idempotent), so a sweep cell failed. An hour outlasts the gaps between a training run's calls.
KEEP_ALIVE_S = 3600


@contextmanager
def mlflow_server(store_uri: str, artifacts: Path, port: int, workers: int = 2, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:``port`` over ``store_uri``, serving artifacts from ``artifacts``;
    yields its URL once it answers /health, and stops it on exit."""
    import requests

    artifacts.mkdir(parents=True, exist_ok=True)
    log_file = open(artifacts.parent / f"mlflow-server-{port}.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
                             "--artifacts-destination", str(artifacts.resolve()), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers),
                             "--uvicorn-opts", f"--timeout-keep-alive {KEEP_ALIVE_S}"],
                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # GenAI job workers: unused
                                 "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise UserError(f"mlflow server exited with code {proc.returncode}; see {log_file.name}")
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise UserError(f"mlflow server did not answer on {url} within {timeout:.0f} s; see {log_file.name}")
            time.sleep(0.5)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):  # the server and the workers it forked
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log_file.close()


@contextmanager
def tracking_server(folder: Path, port: int = 5000, db_port: int = 5433) -> Iterator[str]:
    """PostgreSQL in ``folder/postgres`` and an MLflow server with artifacts in ``folder/artifacts``."""
    with postgres(folder / "postgres", db_port) as db, mlflow_server(db, folder / "artifacts", port) as url:
        yield url


def ui_links(uri: str, port: int) -> list[str]:
    """``<experiment>: <url>`` of each experiment's runs page in the UI on ``port``. MLflow 3.17's web app
    picks GenAI or model-training pages from ``?workflowType=`` (else the browser's last choice), not from
    the experiment's ``mlflow.experimentKind`` tag, so the links name the runs pages directly."""
    return [f"{name}: http://127.0.0.1:{port}/#/experiments/{eid}/runs?workflowType=machine_learning"
            for name, eid in tracking.experiments(uri)]


def open_ui(uri: str, port: int) -> NoReturn:
    """Replace this process with ``mlflow ui`` on the store ``uri``, on 127.0.0.1:``port``."""
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port)])
