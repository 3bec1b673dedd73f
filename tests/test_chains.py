"""Property-based tests of command chains: generated sequences of ``smiling-cli`` commands (demos ->
ingest -> pretrain -> train -> evaluate -> report, with ``train --resume``, stages skipped, repeated or
made to fail) run through the real CLI entry point (``cli.run``) in one folder, on tiny real Minari
datasets recorded with DataCollector, with a real MLflow sqlite store.

The settings are valid where they are given but extreme for what comes after: the smallest and
largest validation fractions, a handful of rows, one episode, ``every`` longer than an episode,
``max_episodes`` 1, a train budget barely above ``learning_starts``, batches larger than the data.
The property, after every command of the chain: it succeeds, or it exits non-zero with exactly one
``error:`` line on stderr and no traceback, having created or changed no file under its folder and
the Minari store; no temporary output is left behind; no MLflow run is left RUNNING.

CI runs a short seeded profile; ``SMILING_CHAIN_EXAMPLES=300`` runs a long campaign
(docs/reliability.md has the figures).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import make_dataset, terminal_lines
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz import running_runs, snapshot

pytestmark = pytest.mark.timeout(7200)
EXAMPLES = int(os.environ.get("SMILING_CHAIN_EXAMPLES", "3"))

DEMOS_ID = "chain/demos-v0"
# Pre-recorded datasets: (id, episodes, steps per episode at most); InvertedPendulum's random policy falls within
# about 5 to 30 steps, so episodes are shorter than the cap.
DATASETS = [("chain/pendulum-v0", 3, 30), ("chain/one-episode-v0", 1, 30), ("chain/two-steps-v0", 2, 2)]
DATASET_IDS = [d[0] for d in DATASETS] + [DEMOS_ID]

# Settings that keep every stage small; the strategies below replace them with extreme valid values.
TINY: dict[str, dict[str, Any]] = {
    "runtime": {"device": "cpu", "workdir": "w"},
    "demos": {"env_id": "InvertedPendulum-v5", "dataset_id": DEMOS_ID, "algorithm": "ppo", "expert_steps": 64,
              "expert_net": [8], "eval_every": 64, "eval_episodes": 1, "episodes": 2, "random_episodes": 2},
    "ingest": {"dataset": DATASETS[0][0], "num_states": 200},
    "score": {"hidden": 16, "num_timesteps": 100},
    "cost": {},
    "pretrain": {"steps": 20, "batch_size": 64, "eval_every": 10},
    "train": {"steps": 60, "learning_starts": 20, "iteration_steps": 20, "net": [8], "batch_size": 32,
              "learner_fit_steps": 5, "learner_batch_size": 64, "eval_every": 30, "eval_episodes": 1,
              "checkpoint_every": 30},
    "baselines": {"dac_hidden": 8, "dac_fit_steps": 5, "bc_steps": 20, "bc_batch_size": 16},
    "evaluate": {"episodes": 1, "video": False},
}
# Valid values at the edges of what the next stage can take.
EXTREMES: dict[str, dict[str, list[Any]]] = {
    "demos": {"episodes": [1, 2], "random_episodes": [1], "expert_steps": [1, 64], "eval_every": [32, 10_000],
              "algorithm": ["ppo", "sac"], "deterministic": [True, False]},
    "ingest": {"dataset": DATASET_IDS, "num_states": [2, 3, 7, None], "every": [1, 2, 29, 1_000],
               "max_episodes": [None, 1], "val_fraction": [0.0, 0.01, 0.5, 0.99], "with_actions": [True, False]},
    "score": {"num_timesteps": [2, 100], "min_signal": [0.0, 0.9], "hidden": [1, 16], "time_embed": [2, 16],
              "normalize": [True, False], "beta_schedule": ["linear", "cosine"]},
    "pretrain": {"steps": [1, 2, 20], "batch_size": [1, 64, 100_000], "eval_every": [1, 10_000]},
    "cost": {"timesteps": [1, 2, 200], "antithetic": [True, False], "draws": ["run", "refit"],
             "reward_norm": ["batch", "rank", "clip", "none"], "estimator": ["fast", "official"]},
    "train": {"algorithm": ["smiling", "smiling", "dac", "bc"], "rl": ["sac", "td3", "ddpg"],
              "learning_starts": [1, 20], "iteration_steps": [1, 20, 10_000], "batch_size": [1, 100_000],
              "learner_window": [2, None], "learner_fit_steps": [1, 5], "learner_batch_size": [1, 100_000],
              "eval_every": [1, 30, 10_000], "checkpoint_every": [1, 30, 10_000],
              "termination": ["env", "absorbing", "ignore"]},
    "baselines": {"bc_steps": [1, 20], "bc_batch_size": [1, 100_000], "dac_fit_steps": [1, 5],
                  "dac_reward_norm": ["none", "batch"], "dac_standardize": [True, False]},
    "evaluate": {"episodes": [1, 2], "video": [False, False, True]},
}
STAGES = ["demos", "ingest", "pretrain", "train", "evaluate", "report"]
# Options that make one command fail by itself (a bad value, a missing file, an unknown dataset).
FAILING = [["--dataset", "chain/nothing-v0"], ["--params", "missing.yaml"], ["--seed", "-1"], ["--device", "cuda:99"],
           ["--threads", "0"]]


@dataclass
class Chain:
    """A ``params.yaml`` mapping and the commands run one after another in one folder."""

    params: dict[str, Any]
    commands: list[list[str]]


def _options(draw: st.DrawFn, stage: str, params: dict[str, Any]) -> list[str]:
    """Extreme valid CLI options for ``stage``, or options that make it fail."""
    if stage != "report" and draw(st.integers(0, 9)) == 0:
        failing = draw(st.sampled_from(FAILING))
        return [] if stage == "demos" and failing[0] == "--dataset" else failing
    opts: list[str] = []
    if stage == "demos" and draw(st.booleans()):
        opts += ["--force"]
    if stage == "ingest":
        for flag, values in [("--val-fraction", ["0", "0.99"]), ("--every", ["1", "1000"]),
                             ("--max-episodes", ["1"]), ("--num-states", ["2", "5"])]:
            if draw(st.integers(0, 3)) == 0:
                opts += [flag, draw(st.sampled_from(values))]
    if stage in ("pretrain", "train") and draw(st.integers(0, 3)) == 0:
        opts += [draw(st.sampled_from(["--with-actions", "--states-only"]))]
    if stage == "train":
        starts = params["train"]["learning_starts"]
        if draw(st.booleans()):
            opts += ["--steps", str(starts + draw(st.sampled_from([1, 2, 30])))]
        if draw(st.integers(0, 3)) == 0:
            opts += ["--algorithm", draw(st.sampled_from(["smiling", "dac", "bc"]))]
        if draw(st.integers(0, 4)) == 0:
            opts += ["--resume"]
    if stage == "evaluate" and draw(st.booleans()):
        opts += ["--episodes", "1", "--no-video"]
    return opts


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    """The stages in order (some skipped, some repeated, ``train --resume`` added) with extreme settings."""
    params: dict[str, Any] = {k: dict(v) for k, v in TINY.items()}
    for _ in range(draw(st.integers(1, 6))):
        section = draw(st.sampled_from(sorted(EXTREMES)))
        key = draw(st.sampled_from(sorted(EXTREMES[section])))
        params[section][key] = draw(st.sampled_from(EXTREMES[section][key]))
    train = params["train"]  # its budget barely above learning_starts comes with train --steps (_options)
    if params["cost"].get("estimator") == "official":  # the official grid must divide num_timesteps
        params["cost"]["timesteps"] = draw(st.sampled_from([1, 2]))
    if train.get("algorithm") == "bc":
        params["ingest"]["with_actions"] = draw(st.sampled_from([True, True, False]))
    first = draw(st.sampled_from([0, 0, 1, 1, 2, 3]))  # demos, ingest, or a later stage on nothing
    stages = [s for s in STAGES[first:] if draw(st.integers(0, 5)) > 0]
    for _ in range(draw(st.integers(0, 2))):  # a repeated stage or an extra resume, anywhere after the start
        stages.insert(draw(st.integers(0, len(stages))), draw(st.sampled_from(["ingest", "train", "train", "evaluate"])))
    commands = [[stage, "--params", "params.yaml", *_options(draw, stage, params)] for stage in stages]
    if draw(st.booleans()):  # the same chain again with --resume, a larger budget
        commands.append(["train", "--params", "params.yaml", "--resume", "--steps", str(train["steps"] + 5)])
        commands += [["evaluate", "--params", "params.yaml"], ["report", "--params", "params.yaml"]]
    return Chain(params, commands or [["report", "--params", "params.yaml"]])


def temporaries(folder: Path) -> list[str]:
    """Outputs still being written: ``io.atomic_dir`` / ``atomic_file`` siblings that were never renamed."""
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def invoke(args: list[str]) -> tuple[int, str, str]:
    """``smiling-cli`` in this process through ``cli.run``; an exception that escapes it is a traceback."""
    from smiling_pipeline.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(args)
        except BaseException:  # noqa: BLE001 - what the console script would print as a traceback
            return -1, out.getvalue(), err.getvalue() + traceback.format_exc()
    return code, out.getvalue(), err.getvalue()


@dataclass
class Outcome:
    """One command of a chain: its exit code, output, and how it broke the contract (empty: it held)."""

    args: list[str]
    code: int
    out: str
    err: str
    broken: list[str]


def run_command(folder: Path, store: Path, args: list[str]) -> Outcome:
    """Run one command in ``folder`` and check the contract."""
    before = snapshot(folder, store)
    code, out, err = invoke(args)
    import mlflow  # after the first command: the CLI sets MLflow's log level before its first import

    broken = []
    if mlflow.active_run() is not None:
        broken.append("an MLflow run is still active")
    while mlflow.active_run() is not None:  # the next command starts clean
        mlflow.end_run()
    if running_runs(folder / "mlflow.db"):
        broken.append("an MLflow run was left RUNNING")
    if left := temporaries(folder) + temporaries(store):
        broken.append(f"temporary outputs left: {left}")
    if code != 0:
        lines = terminal_lines(err)
        if "Traceback" in err or len(lines) != 1 or not lines[0].startswith("error:"):
            broken.append(f"exit {code} without one error line:\n{err[-3000:]}")
        elif (after := snapshot(folder, store)) != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            broken.append(f"a failing command changed files: {lines[0]}; {changed[:5]}")
    return Outcome(args, code, out, err, broken)


@pytest.fixture(scope="module")
def chain_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Minari store with the tiny pre-recorded datasets (copied for each chain)."""
    store = tmp_path_factory.mktemp("chains") / "store"
    for i, (dataset_id, episodes, steps) in enumerate(DATASETS):
        make_dataset(store, dataset_id, episodes=episodes, max_steps=steps, seed=i)
    return store


def run_chain(chain: Chain, store: Path) -> list[Outcome]:
    """The commands of ``chain`` in a fresh folder with its own copy of ``store``, up to the first that breaks
    the contract."""
    folder = Path(tempfile.mkdtemp(dir=store.parent))
    shutil.copytree(store, folder / "store")
    (folder / "params.yaml").write_text(yaml.safe_dump(chain.params))
    env, cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.update({"MINARI_DATASETS_PATH": str(folder / "store"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"})
    os.chdir(folder)
    outcomes: list[Outcome] = []
    try:
        for args in chain.commands:
            outcomes.append(run_command(folder, folder / "store", args))
            if outcomes[-1].broken:
                break
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    if not broken(outcomes):
        shutil.rmtree(folder, ignore_errors=True)
    return outcomes


def broken(outcomes: list[Outcome]) -> list[str]:
    """Every broken contract of a chain, naming the command."""
    return [f"command {i + 1} {' '.join(o.args)}: {b}" for i, o in enumerate(outcomes) for b in o.broken]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(chain=chains())
def test_every_chain_succeeds_or_fails_with_one_line_and_leaves_nothing(chain_store, chain):
    outcomes = run_chain(chain, chain_store)
    for o in outcomes:  # --hypothesis-show-statistics counts them
        event(f"{o.args[0]}{' --resume' if '--resume' in o.args else ''}: {'succeeded' if o.code == 0 else 'refused'}")
    found = broken(outcomes)
    assert not found, f"params {chain.params}\ncommands {chain.commands}\n" + "\n".join(found)


def params_with(**sections: dict[str, Any]) -> dict[str, Any]:
    """The tiny settings with some fields of some sections changed."""
    return {k: {**v, **sections.get(k, {})} for k, v in TINY.items()}


def command(name: str, *options: str) -> list[str]:
    return [name, "--params", "params.yaml", *options]


# Each failure the campaigns found, as the chain that found it (they failed before the fix of each).

def test_pretrain_without_validation_rows_reports_its_train_loss(chain_store):
    """``ingest.val_fraction: 0`` (or a fraction of a handful of rows rounding to none): pretrain wrote its
    outputs, then the CLI's summary formatted the missing validation loss and raised a TypeError."""
    outcomes = run_chain(Chain(params_with(ingest={"val_fraction": 0.0}), [command("pretrain")]), chain_store)
    assert not broken(outcomes), broken(outcomes)
    assert outcomes[0].code == 0 and "(no validation rows)" in outcomes[0].out, outcomes[0].out


def test_a_dataset_refused_while_chaining_gets_its_error_line_alone(chain_store):
    """``pretrain`` ingesting first on a split that leaves too few training rows: the "ingesting ... first"
    note came before the error, two lines."""
    chain = Chain(params_with(ingest={"dataset": "chain/two-steps-v0", "val_fraction": 0.99}), [command("pretrain")])
    (outcome,) = run_chain(chain, chain_store)
    assert not outcome.broken, outcome.broken
    assert outcome.code == 1 and "held out for validation (lower ingest.val_fraction)" in outcome.err, outcome.err


def test_resume_is_refused_before_any_stage_runs(chain_store):
    """``train --resume`` without a checkpoint, or with another variant or score setting, ingested and pretrained
    first (notes, new files), then was refused by the checkpoint; now it is refused before anything is written,
    and the unchanged settings still resume."""
    chain = Chain(params_with(), [command("train", "--resume"), command("train"),
                                  command("train", "--resume", "--with-actions"),
                                  command("train", "--resume", "--linear"),
                                  command("train", "--resume", "--steps", "65")])
    outcomes = run_chain(chain, chain_store)
    assert not broken(outcomes), broken(outcomes)
    assert [o.code for o in outcomes] == [1, 0, 1, 1, 0]
    assert "no complete checkpoint" in outcomes[0].err
    assert "cannot resume: the ingested data in w/ingest was for another dataset or variant" in outcomes[2].err
    assert "cannot resume: the expert score model at w/pretrain/expert_score.pt was made with" in outcomes[3].err
    assert "after 65 env steps" in outcomes[4].out


def test_a_device_this_machine_lacks_is_refused_before_the_chained_ingest(chain_store):
    """``pretrain --device cuda:99`` ingested first (a note, new files), then refused the device."""
    (outcome,) = run_chain(Chain(params_with(), [command("pretrain", "--device", "cuda:99")]), chain_store)
    assert not outcome.broken, outcome.broken
    assert outcome.code == 1 and "cuda:99" in outcome.err
