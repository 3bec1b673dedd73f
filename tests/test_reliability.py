"""Reliability: exact resume after SIGKILL, determinism, bad input everywhere, a store that stays whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import yaml
from conftest import DEMOS_DATASET, assert_user_error, make_dataset, run_cli, tree

from smiling_pipeline.score import load_model

pytestmark = pytest.mark.timeout(600)
CLI = str(Path(sys.executable).parent / "smiling-cli")
TINY = {
    "ingest": {"dataset": DEMOS_DATASET, "num_states": 1000},
    "score": {"hidden": 32},
    "pretrain": {"steps": 100, "eval_every": 50},
    "train": {"steps": 2000, "learning_starts": 400, "iteration_steps": 400, "learner_fit_steps": 30,
              "eval_every": 400, "eval_episodes": 2, "checkpoint_every": 800, "net": [32, 32], "seed": 3},
    "evaluate": {"episodes": 2},
}


def params(path: Path, **changes: dict) -> Path:
    data = {k: dict(v) for k, v in TINY.items()}
    for section, values in changes.items():
        data[section].update(values)
    path.write_text(yaml.safe_dump(data))
    return path


def outputs(workdir: Path) -> dict[str, str]:
    records = workdir / "train_metrics"
    return {name: (records / name).read_text() for name in ("learning_curve.csv", "iterations.csv", "metrics.json")}


@pytest.fixture
def pretrained(store, tmp_path) -> Path:
    """A workdir with ingested data and a pretrained expert model (shared start of every run below)."""
    p = params(tmp_path / "p.yaml")
    run = run_cli(["pretrain", "--params", p, "--workdir", tmp_path / "base"])
    assert run.exit_code == 0, run.output
    return tmp_path / "base"


def test_sigkill_then_resume_equals_an_uninterrupted_run(pretrained, tmp_path):
    """Same seed: two uninterrupted runs agree exactly, and so does a run killed mid-way and resumed."""
    import mlflow

    p = params(tmp_path / "p.yaml")
    for name in ("a", "b", "killed", "extended"):
        shutil.copytree(pretrained, tmp_path / name)
    for name in ("a", "b"):
        run = run_cli(["train", "--params", p, "--workdir", tmp_path / name])
        assert run.exit_code == 0, run.output
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")  # determinism

    # a finished 1200-step run extended to 2000 steps is the 2000-step run
    extended = tmp_path / "extended"
    assert run_cli(["train", "--params", p, "--workdir", extended, "--steps", "1200"]).exit_code == 0
    assert_user_error(run_cli(["train", "--params", p, "--workdir", extended, "--resume", "--steps", "1000"]),
                      "at 1200 env steps", "--steps 1200 or more")
    more = run_cli(["train", "--params", p, "--workdir", extended, "--resume"])
    assert more.exit_code == 0, more.output
    assert "extending the run from 1200 to 2000 env steps" in more.stderr
    assert outputs(extended) == outputs(tmp_path / "a")

    killed = tmp_path / "killed"
    started = time.time()
    proc = subprocess.Popen([CLI, "train", "--params", str(p), "--workdir", str(killed)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "train" / "checkpoint" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well past the checkpoint at 800 steps, before the end at 2000
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train_metrics" / "metrics.json").exists()
    moved = tmp_path / "moved"  # the same checkpoint, resumed later against another MLflow store
    shutil.copytree(killed, moved)

    # the training time adds up over processes: the resumed run counts on from the checkpoint's figure
    checkpointed = torch.load(state, weights_only=False)
    assert 0 < checkpointed["train_seconds"] < time.time() - started
    torch.save({**checkpointed, "train_seconds": 1000.0}, state)
    before = time.monotonic()
    resumed = run_cli(["train", "--params", p, "--workdir", killed, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from the checkpoint at 800 env steps" in resumed.stderr
    assert outputs(killed) == outputs(tmp_path / "a")
    seconds = json.loads((killed / "train_metrics" / "run.json").read_text())["train_seconds"]
    assert 1000.0 < seconds < 1000.0 + time.monotonic() - before

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(DEMOS_DATASET)
    train_runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags["stage"] == "train"]
    assert len(train_runs) == 4  # the resumed and the extended run continued their own MLflow runs
    assert [r.data.tags.get("extended") for r in train_runs].count("train.steps 1200 -> 2000") == 1
    run_id = json.loads((killed / "train_metrics" / "run.json").read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("normalized_return", "refit_loss"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert steps == [400, 800, 1200, 1600, 2000], (key, steps)  # no gap, no duplicate

    # a checkpoint whose MLflow run is not in the store (brought from another machine) continues in a new run
    # that holds its whole history: every evaluation and iteration once
    other = f"sqlite:///{tmp_path / 'other.db'}"
    elsewhere = run_cli(["train", "--params", p, "--workdir", moved, "--resume"], env={"MLFLOW_TRACKING_URI": other})
    assert elsewhere.exit_code == 0, elsewhere.output
    assert f"MLflow run {checkpointed['run_id']} is not in this store" in elsewhere.stderr
    assert outputs(moved) == outputs(tmp_path / "a")
    client = mlflow.MlflowClient(other)
    [new_run] = [r for r in client.search_runs([client.get_experiment_by_name(DEMOS_DATASET).experiment_id])
                 if r.data.tags["stage"] == "train"]
    assert new_run.info.status == "FINISHED" and new_run.info.run_id != checkpointed["run_id"]
    for key in ("normalized_return", "refit_loss", "ds_divergence"):
        steps = [m.step for m in client.get_metric_history(new_run.info.run_id, key)]
        assert steps == [400, 800, 1200, 1600, 2000], (key, steps)


def test_resume_refuses_what_it_cannot_continue(pretrained, tmp_path):
    p = params(tmp_path / "p.yaml", train={"steps": 800, "checkpoint_every": 400, "eval_every": 400})
    assert_user_error(run_cli(["train", "--params", p, "--workdir", pretrained, "--resume"]),
                      "no complete checkpoint")
    assert run_cli(["train", "--params", p, "--workdir", pretrained]).exit_code == 0
    changed = params(tmp_path / "q.yaml", train={"steps": 800, "checkpoint_every": 400, "eval_every": 400, "lr": 0.001})
    assert_user_error(run_cli(["train", "--params", changed, "--workdir", pretrained, "--resume"]),
                      "other settings", "train.lr")
    (pretrained / "train" / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    assert_user_error(run_cli(["train", "--params", p, "--workdir", pretrained, "--resume"]), "unreadable")


def test_checkpoint_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from smiling_pipeline.io import atomic_dir

    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "state.pt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "state.pt").write_text("half")
        raise RuntimeError("killed while writing")
    assert (target / "state.pt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


# --- bad input: one line, non-zero exit, nothing half-written (the README's table) -----------------


def test_expert_model_from_another_dataset_is_made_again(store, tmp_path, monkeypatch):
    other = tmp_path / "other-store"
    make_dataset(other, "smiling/other/expert-v0", "InvertedPendulum-v5", episodes=3, max_steps=40)
    p = params(tmp_path / "p.yaml")
    assert run_cli(["pretrain", "--params", p, "--workdir", tmp_path / "w"]).exit_code == 0
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(other))  # same dimension, other data
    assert run_cli(["ingest", "--dataset", "smiling/other/expert-v0", "--workdir", tmp_path / "w"]).exit_code == 0
    other_params = params(tmp_path / "o.yaml", ingest={"dataset": "smiling/other/expert-v0"})
    run = run_cli(["train", "--params", other_params, "--workdir", tmp_path / "w", "--steps", "500"])
    assert run.exit_code == 0, run.output
    assert "made with other settings or data (expert data smiling/invertedpendulum" in run.stderr
    assert load_model(tmp_path / "w" / "pretrain" / "expert_score.pt")[1]["dataset_id"] == "smiling/other/expert-v0"


def test_an_expert_model_is_never_reused_under_other_score_settings(store, tmp_path):
    """``train --linear`` after a default pretrain used to tag its run linear=True with nonlinear models."""
    p = params(tmp_path / "p.yaml")
    assert run_cli(["pretrain", "--params", p, "--workdir", tmp_path / "w"]).exit_code == 0
    model_file = tmp_path / "w" / "pretrain" / "expert_score.pt"
    assert not load_model(model_file)[0].cfg.linear
    run = run_cli(["train", "--params", p, "--workdir", tmp_path / "w", "--linear", "--steps", "500"])
    assert run.exit_code == 0, run.output
    assert "(score.linear)" in run.stderr
    expert, extra = load_model(model_file)
    assert expert.cfg.linear and extra["made_with"]["score"]["linear"] is True
    learner = load_model(tmp_path / "w" / "train" / "reward_model.pt")[0]
    assert learner.cfg.linear  # the run's learner model is linear too
    assert torch.equal(expert.std, torch.ones(expert.dim))  # default score.normalize false: raw states
    standardised = params(tmp_path / "standardised.yaml", score={"normalize": True})
    run = run_cli(["train", "--params", standardised, "--workdir", tmp_path / "w", "--steps", "500"])
    assert run.exit_code == 0, run.output
    assert "score.linear, score.normalize" in run.stderr
    expert = load_model(model_file)[0]
    assert not torch.equal(expert.std, torch.ones(expert.dim)) and expert.cfg.normalize
    again = run_cli(["train", "--params", standardised, "--workdir", tmp_path / "w", "--steps", "500"])
    assert again.exit_code == 0 and "pretraining" not in again.stderr  # same settings: reused


def test_policy_for_another_environment_is_refused(pretrained, tmp_path):
    from stable_baselines3 import SAC

    SAC("MlpPolicy", gym.make("InvertedDoublePendulum-v5"), policy_kwargs={"net_arch": [8]}).save(tmp_path / "idp.zip")
    p = params(tmp_path / "p.yaml")
    assert_user_error(run_cli(["evaluate", "--params", p, "--workdir", pretrained, "--policy", tmp_path / "idp.zip"]),
                      "policy expects obs", "InvertedPendulum-v5")
    assert not (pretrained / "evaluate").exists()


@pytest.mark.parametrize("file, command", [("ingest/expert.npz", "pretrain"), ("pretrain/expert_score.pt", "train")])
def test_corrupted_files_are_refused(pretrained, tmp_path, file, command):
    (pretrained / file).write_bytes(b"\x00garbage")
    p = params(tmp_path / "p.yaml")
    before = tree(pretrained)
    assert_user_error(run_cli([command, "--params", p, "--workdir", pretrained]), "unreadable", "again")
    assert tree(pretrained) == before


def test_unwritable_output_folder_is_refused_before_any_work(store, tmp_path):
    (tmp_path / "a-file").write_text("")
    p = params(tmp_path / "p.yaml")
    assert_user_error(run_cli(["pretrain", "--params", p, "--workdir", tmp_path / "a-file" / "w"]),
                      "cannot create output folder", "a-file")


def test_unreachable_tracking_server_fails_fast(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    p = params(tmp_path / "p.yaml")
    start = time.time()
    assert_user_error(run_cli(["pretrain", "--params", p, "--workdir", tmp_path / "w"]),
                      "http://127.0.0.1:9", "unreachable")
    assert time.time() - start < 15
    assert not (tmp_path / "w" / "pretrain").exists()


@pytest.mark.parametrize("args, fragment", [
    (["train", "--steps", "0"], "--steps"),
    (["ingest", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--stepz", "3"], "No such option"),
    (["trian"], "No such command"),
])
def test_bad_options_get_one_line(tmp_path, args, fragment):
    """Through the installed entry point: Typer's usage errors are one line too."""
    done = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert fragment in lines[0] and "Traceback" not in done.stderr


# --- the MLflow store under concurrency -----------------------------------------------------------


def test_four_runs_started_at_once_all_land_in_one_fresh_store(pretrained, tmp_path):
    import mlflow

    p = params(tmp_path / "p.yaml", pretrain={"steps": 50, "eval_every": 25})
    for i in range(4):
        shutil.copytree(pretrained / "ingest", tmp_path / f"w{i}" / "ingest")
    (tmp_path / "fresh").mkdir()
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([CLI, "pretrain", "--params", str(p), "--workdir", str(tmp_path / f"w{i}"), "--seed", str(i)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err[-500:] for _, err in results]
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(DEMOS_DATASET)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "val_loss")) == 2
               for r in runs)
