"""Scale-out with real components: a two-node Ray cluster on this machine, an MLflow tracking server on
PostgreSQL (both started here and stopped at the end), sweeps of real cells on the recorded dataset.

Skipped (and said so) only where PostgreSQL or Ray is not installed; ``.ci/run`` installs both.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from conftest import DEMOS_DATASET, run_cli

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[cluster]'")

TINY = {"ingest.dataset": DEMOS_DATASET, "ingest.num_states": 1000, "score.hidden": 32, "pretrain.steps": 50,
        "train.steps": 300, "train.learning_starts": 100, "train.iteration_steps": 100, "train.learner_fit_steps": 10,
        "train.eval_every": 100, "train.eval_episodes": 1, "train.checkpoint_every": 300, "train.net": [16, 16],
        "evaluate.episodes": 1, "evaluate.video": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> str:
    """PostgreSQL and an MLflow server on loopback, started as a user would (`smiling-cli tracking-server`)
    and stopped with SIGTERM at the end, which must stop both."""
    from smiling_pipeline.errors import UserError
    from smiling_pipeline.server import pg_tool

    try:
        pg_tool("initdb")
    except UserError as e:
        pytest.skip(f"PostgreSQL is not installed here ({e}); .ci/run installs it")
    folder = Path(tempfile.mkdtemp(prefix="smiling-tracking-"))  # pytest's own folders are closed to user postgres
    folder.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-m", "smiling_pipeline.cli", "tracking-server", "--folder", str(folder),
                             "--port", str(_free_port()), "--db-port", str(_free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("MLflow tracking server at "):
                break
        assert lines and lines[-1].startswith("MLflow tracking server at "), "".join(lines)
        yield lines[-1].split()[4].rstrip(":")
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        status = subprocess.run(["pgrep", "-f", f"postgres -D {folder / 'postgres'}"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0 and "stopping" in rest, rest
    assert status.returncode == 1, "PostgreSQL still runs after the tracking server stopped"


@contextmanager
def sigint_handled():
    """Processes started inside get Ctrl-C's default action, as from a terminal, even when the tests run in a
    background job of a shell without job control, which inherits SIGINT ignored: a Ray worker that ignores it
    cannot be cancelled (``ray.cancel`` interrupts the task's main thread), nor can a driver be stopped."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def cluster() -> str:
    """Two Ray nodes (one CPU each) on this machine. Their workers run at the tests' priority, not Ray's default
    nice 15, which starves them while the other pytest workers compute and times the many-cell test out."""
    from ray.cluster_utils import Cluster

    with sigint_handled(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_worker_niceness", "0")
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes.address
    nodes.shutdown()


def _sweep(tmp_path: Path, name: str, seeds: list[int], algorithms: list[str], **settings) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": {"ip": {**TINY, **settings}},
                                    "grids": [{"datasets": ["ip"], "seeds": seeds, "algorithms": algorithms,
                                               "variants": ["state-only"]}]}))
    return path


def _runs(url: str, prefix: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(url)
    exp = client.get_experiment_by_name(DEMOS_DATASET)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("sweep_cell", "").startswith(prefix)]


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    import mlflow

    return sorted((m.step, m.value) for m in mlflow.MlflowClient(url).get_metric_history(run_id, key))


def test_the_server_keeps_an_idle_client_connection_open(server):
    """A client's pooled connection idle past uvicorn's default keep-alive (5 s) still serves a request: with the
    default, a server closing it as a cell sent on it reset the cell's run creation, which MLflow does not resend."""
    conn = http.client.HTTPConnection(urlparse(server).hostname, urlparse(server).port, timeout=10)
    try:
        for idle in (0, 7):
            time.sleep(idle)
            conn.request("GET", "/health")  # on the same socket: http.client reconnects only where it closed it
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"OK"), f"after {idle} s idle"
    finally:
        conn.close()


def test_eight_cells_on_two_ray_nodes_land_once_each_in_the_postgres_server(store, server, cluster, tmp_path):
    sweep = _sweep(tmp_path, "wide", list(range(4)), ["smiling", "dac"])
    results = tmp_path / "cells"
    args = ["sweep", sweep, "--backend", "ray", "--address", cluster, "--tracking-uri", server, "--runs",
            tmp_path / "runs", "--results", results, "--cpus-per-cell", "0.25"]  # 4 cells per one-CPU node: all at once
    run = run_cli(args)
    assert run.exit_code == 0, run.output
    assert "ran 8 cells" in run.stdout
    names = sorted(p.name for p in results.iterdir())
    assert len(names) == 8 and names[0] == "wide-ip-dac-so-s0"
    assert {json.loads((results / n / "cell.json").read_text())["backend"] for n in names} == {"ray"}

    runs = _runs(server, "wide-")
    # every cell: one pipeline run with its train and evaluate runs nested under it, all FINISHED, nothing else
    assert Counter((r.data.tags["sweep_cell"], r.data.tags["stage"], r.info.status) for r in runs) == Counter(
        {(n, stage, "FINISHED"): 1 for n in names for stage in ("pipeline", "train", "evaluate")})
    parents = {r.data.tags["sweep_cell"]: r.info.run_id for r in runs if r.data.tags["stage"] == "pipeline"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["sweep_cell"]]
               for r in runs if r.data.tags["stage"] != "pipeline")
    train = [r for r in runs if r.data.tags["stage"] == "train"]
    assert {r.data.tags["mlflow.runName"] for r in train} >= {"smiling-state-only-s3 (wide-ip-smiling-so-s3)"}
    # no lost or doubled metric steps: every evaluation and every iteration once, as in the cell's own records
    for r in train:
        curve = (results / r.data.tags["sweep_cell"] / "learning_curve.csv").read_text().splitlines()[1:]
        assert [step for step, _ in _history(server, r.info.run_id, "normalized_return")] == [100, 200, 300]
        assert len(curve) == 3
        assert len(_history(server, r.info.run_id, "reward_mean_expert")) == 3
    # the 8 cells really wrote at once: their train runs overlap in time
    events = sorted([(r.info.start_time, 1) for r in train] + [(r.info.end_time, -1) for r in train])
    most = max(sum(change for _, change in events[:i + 1]) for i in range(len(events)))
    assert most >= 6, f"only {most} train runs overlapped"
    # one expert model per seed, shared by its cell (DAC needs none)
    pretrain = [p.name for p in (tmp_path / "runs" / "_pretrain").iterdir()]
    assert len(pretrain) == 4

    from_server = run_cli(["report", "--compare", "--exp-prefix", "wide-", "--out", tmp_path / "a"],
                          env={"MLFLOW_TRACKING_URI": server})
    from_cells = run_cli(["report", "--compare", "--cells", results, "--no-mlflow", "--out", tmp_path / "b"])
    assert from_server.exit_code == 0 and from_cells.exit_code == 0, from_server.output + from_cells.output
    table = (tmp_path / "a" / "comparison.md").read_text()
    assert table == (tmp_path / "b" / "comparison.md").read_text()
    assert re.search(r"\| state-only \| SMILING \[[^\]]*pretrain\.steps=50[^\]]*\] \| 1000 \| 4 \|", table)

    again = run_cli(args)  # finished cells never run again
    assert again.exit_code == 0 and "ran 0 cells" in again.stdout, again.output


def _worker_of(task_name: str) -> int | None:
    """The pid of the Ray worker running the task named ``task_name`` (its title is ``ray::<name>``)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[0].decode(errors="replace").strip() == f"ray::{task_name}":
                return int(cmdline.parent.name)
        except OSError:
            continue
    return None


def test_a_cell_whose_worker_is_killed_resumes_and_ends_like_an_uninterrupted_run(store, server, cluster, tmp_path):
    settings = {"train.steps": 1200, "train.eval_every": 200, "train.checkpoint_every": 200}
    sweep = _sweep(tmp_path, "kill", [0], ["smiling"], **settings)
    cell, results, runs = "kill-ip-smiling-so-s0", tmp_path / "cells", tmp_path / "runs"
    driver = subprocess.Popen([sys.executable, "-m", "smiling_pipeline.cli", "sweep", str(sweep), "--backend", "ray",
                               "--address", cluster, "--tracking-uri", server, "--runs", str(runs), "--results",
                               str(results)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = runs / cell / "train" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = _worker_of(cell)
    assert worker is not None and driver.poll() is None, "the cell ended before it could be killed"
    os.kill(worker, signal.SIGKILL)  # mid-cell: after its first checkpoint, before the end
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    record = json.loads((results / cell / "cell.json").read_text())
    assert record["resumed"] is True  # the retry continued from the checkpoint

    (train,) = [r for r in _runs(server, "kill-") if r.data.tags["stage"] == "train"]
    assert train.info.status == "FINISHED"
    curve = _history(server, train.info.run_id, "normalized_return")
    assert [step for step, _ in curve] == [200, 400, 600, 800, 1000, 1200]  # continuous: none lost, none twice
    assert [s for s, _ in _history(server, train.info.run_id, "reward_mean_expert")] == list(range(100, 1201, 100))

    # the same cell, uninterrupted, from its own settings and expert model
    reference = tmp_path / "reference"
    (reference / "pretrain").mkdir(parents=True)
    model = next((runs / cell / "pretrain").glob("*.pt"))
    (reference / "pretrain" / model.name).write_bytes(model.read_bytes())
    plain = run_cli(["train", "--params", runs / cell / "params.yaml", "--workdir", reference])
    assert plain.exit_code == 0, plain.output
    for name in ("learning_curve.csv", "iterations.csv", "metrics.json"):
        assert (reference / "train_metrics" / name).read_text() == (results / cell / name).read_text(), name


def test_ctrl_c_on_the_driver_stops_the_sweep_and_a_rerun_continues_it(store, server, cluster, tmp_path):
    sweep = _sweep(tmp_path, "stop", [0], ["dac"], **{"train.steps": 1200, "train.eval_every": 200,
                                                      "train.checkpoint_every": 200})
    cell, results, runs = "stop-ip-dac-so-s0", tmp_path / "cells", tmp_path / "runs"
    args = ["sweep", str(sweep), "--backend", "ray", "--address", cluster, "--tracking-uri", server, "--runs", str(runs),
            "--results", str(results)]
    with sigint_handled():
        driver = subprocess.Popen([sys.executable, "-m", "smiling_pipeline.cli", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    checkpoint = runs / cell / "train" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, "the cell ended before the sweep could be stopped"
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output
    assert "Traceback" not in output
    assert _worker_of(cell) is None and not (results / cell).exists()
    (stopped,) = [r for r in _runs(server, "stop-") if r.data.tags["stage"] == "train"]
    assert stopped.info.status == "KILLED"

    rerun = run_cli(args)
    assert rerun.exit_code == 0 and "ran 1 cells" in rerun.stdout, rerun.output
    assert json.loads((results / cell / "cell.json").read_text())["resumed"] is True
    (train,) = [r for r in _runs(server, "stop-") if r.data.tags["stage"] == "train"]
    assert train.info.run_id == stopped.info.run_id and train.info.status == "FINISHED"
    assert [s for s, _ in _history(server, train.info.run_id, "normalized_return")] == [200, 400, 600, 800, 1000, 1200]


def test_ray_sweep_errors_are_one_line(tmp_path):
    from conftest import assert_user_error

    sweep = _sweep(tmp_path, "err", [0], ["dac"])
    assert_user_error(run_cli(["sweep", sweep, "--backend", "ray", "--address", "127.0.0.1:9", "--results",
                               tmp_path / "c"]), "no Ray cluster answers at 127.0.0.1:9")
    assert_user_error(run_cli(["sweep", sweep, "--backend", "ray", "--tracking-uri", "http://127.0.0.1:9", "--results",
                               tmp_path / "c"]), "http://127.0.0.1:9", "unreachable")
    assert_user_error(run_cli(["sweep", sweep, "--backend", "local", "--address", "auto"]), "--backend ray only")
    assert not (tmp_path / "c").exists()
