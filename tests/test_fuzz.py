"""Property-based tests of the input contract: generated ``params.yaml`` files and CLI options, every
command run through the real CLI entry point (``cli.run``) on a tiny real dataset.

The property: a command either succeeds, or exits non-zero with exactly one line starting ``error:``
on stderr and no traceback, having created or changed no file under its folder and the Minari store;
and no MLflow run is left RUNNING. CI runs a short seeded profile; ``SMILING_FUZZ_EXAMPLES=2000``
runs a long campaign; ``--hypothesis-show-statistics`` counts the outcomes per command
(docs/reliability.md has the figures).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import DEMOS_DATASET, terminal_lines
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(3600)
EXAMPLES = int(os.environ.get("SMILING_FUZZ_EXAMPLES", "30"))

# Settings that keep every valid run small (the mutations below replace one or two of them).
TINY: dict[str, dict[str, Any]] = {
    "runtime": {"device": "cpu"},
    "demos": {"dataset_id": "fuzz/pendulum-v0", "algorithm": "ppo", "expert_steps": 64, "expert_net": [8],
              "eval_every": 64, "eval_episodes": 1, "episodes": 2, "random_episodes": 2},
    "ingest": {"dataset": DEMOS_DATASET, "num_states": 200},
    "score": {"hidden": 16, "num_timesteps": 100},
    "pretrain": {"steps": 20, "batch_size": 64, "eval_every": 10},
    "train": {"steps": 120, "learning_starts": 40, "iteration_steps": 40, "net": [8], "batch_size": 32,
              "learner_fit_steps": 5, "learner_batch_size": 64, "eval_every": 60, "eval_episodes": 1,
              "checkpoint_every": 60},
    "baselines": {"dac_hidden": 8, "dac_fit_steps": 5, "bc_steps": 20, "bc_batch_size": 16},
    "iqlearn": {"net": [8]},
    "evaluate": {"episodes": 1},
}
KEYS = {
    "runtime": ["minari_root", "workdir", "device", "threads", "precision"],
    "demos": ["env_id", "dataset_id", "algorithm", "expert_steps", "expert_net", "eval_every", "eval_episodes",
              "episodes", "random_episodes", "policy_path", "seed"],
    "ingest": ["dataset", "num_states", "every", "max_episodes", "val_fraction", "with_actions", "seed"],
    "score": ["hidden", "depth", "time_embed", "linear", "num_timesteps", "beta_schedule", "beta_start", "beta_end",
              "min_signal", "normalize", "min_std"],
    "pretrain": ["steps", "batch_size", "lr", "weight_decay", "eval_every", "seed"],
    "cost": ["timesteps", "antithetic", "draws", "reward_norm", "reward_std"],
    "train": ["algorithm", "rl", "steps", "iteration_steps", "learning_starts", "net", "batch_size", "lr", "gamma",
              "ent_coef", "termination", "reward_offset", "learner_window", "learner_fit_steps",
              "learner_batch_size", "learner_lr", "eval_every", "eval_episodes", "checkpoint_every", "seed"],
    "baselines": ["dac_hidden", "dac_lr", "dac_gradient_penalty", "dac_fit_steps", "dac_reward_norm",
                  "dac_standardize", "bc_steps", "bc_batch_size", "bc_lr"],
    "iqlearn": ["net", "critics", "actor_lr", "critic_lr", "init_temp", "learn_temp", "alpha", "terminal"],
    "evaluate": ["episodes", "seed", "video"],
}
# Fields whose large valid values mean long or huge work: they get small numbers only.
BUDGET = {"threads", "expert_steps", "expert_net", "eval_episodes", "episodes", "random_episodes", "hidden",
          "depth", "time_embed", "num_timesteps", "steps", "batch_size", "timesteps", "net", "learner_fit_steps",
          "learner_batch_size", "dac_hidden", "dac_fit_steps", "bc_steps", "bc_batch_size", "iteration_steps",
          "learning_starts", "num_states", "eval_every", "checkpoint_every", "learner_window"}
COMMANDS = ["ingest", "pretrain", "train", "evaluate", "report", "datasets", "demos"]
OPTIONS = ["--steps", "--seed", "--dataset", "--workdir", "--device", "--threads", "--precision", "--episodes",
           "--eval-every", "--algorithm", "--rl", "--minari-root", "--params", "--num-states", "--every",
           "--val-fraction", "--expert-net", "--env", "--dataset-id", "--policy", "--checkpoint-every"]

small = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.0, 1e-9]))
weird_numbers = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e300, -1e300, 2**63, -(2**63),
                                 2**31, 10**7, 0.999999, 1.0])
weird_text = st.one_of(st.sampled_from(["", " ", "x" * 5000, "null", "none", "auto", "../..", "/", "/proc/1/x",
                                        "a" * 300, "ünï/cödé-v0", "1e-3", "cuda:99", "mujoco/humanoid"]),
                       st.text(max_size=12))
anything = st.one_of(small, weird_numbers, weird_text, st.booleans(), st.none(),
                     st.lists(st.integers(-2, 40), max_size=3), st.dictionaries(st.text(max_size=4), small, max_size=2))
budget_values = st.one_of(small, st.sampled_from([None, True, "x", float("nan"), [], [0], [4, 0], 2.5]))


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict, list[str]]:
    """A command, a params.yaml mapping (tiny settings with one to three mutations) and extra CLI options."""
    command = draw(st.sampled_from(COMMANDS))
    params: dict[str, Any] = {k: dict(v) for k, v in TINY.items()}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["value", "value", "value", "unknown key", "section"]))
        section = draw(st.sampled_from(sorted(KEYS)))
        if kind == "unknown key":
            if not isinstance(params.get(section), dict):
                params[section] = {}
            params[section][draw(st.text(min_size=1, max_size=8))] = draw(small)
        elif kind == "section":
            params[section] = draw(st.one_of(st.none(), small, weird_text, st.lists(small, max_size=2)))
        else:
            key = draw(st.sampled_from(KEYS[section]))
            if not isinstance(params.get(section), dict):
                params[section] = {}
            params[section][key] = draw(budget_values if key in BUDGET else anything)
    options: list[str] = []
    for _ in range(draw(st.integers(0, 2))):
        option = draw(st.sampled_from(OPTIONS))
        value = draw(st.one_of(st.integers(-5, 5).map(str), weird_text, st.sampled_from(["1e9", "0x10", "nan"])))
        if option in ("--steps", "--threads", "--episodes", "--num-states", "--checkpoint-every", "--eval-every"):
            value = draw(st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["", "x", "1.5", "-0"])))
        options += [option, value]
    return command, params, options


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``roots`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def running_runs(db: Path) -> list[str]:
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return [r[0] for r in con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'")]
        except sqlite3.OperationalError:  # a store whose schema was never created
            return []


def invoke(args: list[str]) -> tuple[int, str, str]:
    """``smiling-cli`` in this process, through the console entry point's own error handling."""
    from smiling_pipeline.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fuzz_root(recorded, tmp_path_factory) -> Path:
    assert recorded["run"].exit_code == 0, recorded["run"].output
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(recorded["store"], root / "store")
    return root


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=cases())
def test_every_command_succeeds_or_fails_with_one_line_and_leaves_nothing(fuzz_root, case):
    import mlflow

    command, params, options = case
    folder = Path(tempfile.mkdtemp(dir=fuzz_root))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    args = [command, *(["--params", "params.yaml"] if command != "datasets" else []), *options]
    store = fuzz_root / "store"
    env, cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.update({"MINARI_DATASETS_PATH": str(store), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"})
    os.chdir(folder)
    before = snapshot(folder, store)
    try:
        code, _, err = invoke(args)
        leaked = mlflow.active_run() is not None
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    event(f"{command}: {'succeeded' if code == 0 else f'exit {code}'}")  # --hypothesis-show-statistics
    assert not leaked, f"{args}: an MLflow run is still active"
    assert running_runs(folder / "mlflow.db") == [], f"{args}: MLflow run left RUNNING"
    if code != 0:
        lines = terminal_lines(err)
        assert "Traceback" not in err, (args, err)
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, params, lines)
        assert snapshot(folder, store) == before, (args, lines)
    shutil.rmtree(folder, ignore_errors=True)
