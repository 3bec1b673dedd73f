"""Shared test helpers: real local Minari datasets recorded with Minari's own DataCollector, and a
CliRunner wrapper that checks the CLI's one-line error contract.

Minari reads ``MINARI_DATASETS_PATH`` at call time, so every helper that touches a store points the
variable at it for the duration of the call and restores it afterwards. Tests that run the CLI
set it with ``monkeypatch.setenv`` (the CLI itself also writes it), which restores it at teardown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit
from typer.testing import CliRunner

# An address nothing listens on: the remote is refused at once instead of after a network timeout.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


@contextmanager
def minari_store(root: Path) -> Iterator[Path]:
    """Point ``MINARI_DATASETS_PATH`` at ``root`` for the block, then restore the previous value."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def make_dataset(
    root: Path,
    dataset_id: str,
    env_id: str = "InvertedPendulum-v5",
    episodes: int = 3,
    max_steps: int = 30,
    wrapper: Optional[Callable[[gym.Env], gym.Env]] = None,
    policy: Optional[Callable[[gym.Env, np.ndarray], Any]] = None,
    seed: int = 0,
    ref_min_score: Optional[float] = 0.0,
    ref_max_score: Optional[float] = 100.0,
    observation_space: Optional[gym.Space] = None,
    action_space: Optional[gym.Space] = None,
    env_kwargs: Optional[dict[str, Any]] = None,
) -> Path:
    """Record ``episodes`` episodes of ``env_id`` (cut at ``max_steps`` by TimeLimit) into store ``root``.

    ``env_kwargs`` go to ``gym.make`` (a modified environment, recorded in the dataset's env spec);
    ``wrapper`` wraps the time-limited env before recording; ``policy(env, obs)`` picks actions
    (default: seeded uniform random). ``episodes=0`` makes a genuinely empty dataset: Minari's
    ``create_dataset`` accepts a collector that never recorded an episode. Returns the dataset folder.
    """
    import minari

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with minari_store(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env: gym.Env = TimeLimit(gym.make(env_id, **(env_kwargs or {})), max_episode_steps=max_steps)
        if wrapper is not None:
            env = wrapper(env)
        collector = minari.DataCollector(env, record_infos=False, observation_space=observation_space,
                                         action_space=action_space)
        collector.action_space.seed(seed)
        act = policy or (lambda e, _obs: e.action_space.sample())
        for ep in range(episodes):
            obs, _ = collector.reset(seed=seed + ep)
            done = False
            while not done:
                obs, _, terminated, truncated, _ = collector.step(act(collector, obs))
                done = terminated or truncated
        collector.create_dataset(
            dataset_id=dataset_id,
            eval_env=env_id,
            algorithm_name="random (tests)",
            author="smiling_pipeline tests",
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            description="test dataset",
        )
        collector.close()
    return root / dataset_id


def load_episodes(root: Path, dataset_id: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(observations, actions, rewards) of every episode of a local dataset, read with Minari itself."""
    import minari

    with minari_store(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = minari.load_dataset(dataset_id)
        return [(np.asarray(e.observations), np.asarray(e.actions), np.asarray(e.rewards)) for e in ds.iterate_episodes()]


def tree(path: Path) -> set[str]:
    """Every file and folder below ``path`` (hidden ones included), relative to it."""
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def terminal_lines(text: str) -> list[str]:
    """Non-blank lines as a terminal shows them: a ``\\r`` (progress bars) rewrites its line."""
    lines = []
    for line in text.split("\n"):
        shown = line.split("\r")[-1].strip()
        if shown:
            lines.append(shown)
    return lines


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    output: str
    exception: Optional[BaseException]


def run_cli(args: Sequence[str], env: Optional[dict[str, str]] = None) -> Run:
    """Invoke ``smiling-cli`` in-process with separate stdout and stderr."""
    from smiling_pipeline.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return Run(result.exit_code, result.stdout, result.stderr, result.output, result.exception)


def assert_user_error(run: Run, *fragments: str) -> str:
    """The CLI's error contract: non-zero exit, one ``error:`` line on stderr, no traceback.

    Returns the error line; each of ``fragments`` must occur in it (case-insensitive).
    """
    assert run.exit_code != 0, f"expected failure, got exit 0; output:\n{run.output}"
    assert isinstance(run.exception, SystemExit), f"not a clean exit: {run.exception!r}\n{run.output}"
    assert "Traceback" not in run.output
    lines = terminal_lines(run.stderr)
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    line = lines[0]
    assert line.startswith("error:"), line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test touches the real Minari remote, the user's store or a params.yaml in the repo."""
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_ENDPOINT)
    monkeypatch.delenv("MINARI_REMOTE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "default-store"))
    monkeypatch.chdir(tmp_path)


DEMOS_DATASET = "smiling/invertedpendulum/expert-v0"
DEMOS_EPISODES = 5


@contextmanager
def offline_in(store: Path, cwd: Path) -> Iterator[None]:
    """For fixtures wider than a test (no ``monkeypatch``): Minari store ``store``, no remote, in ``cwd``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(store))
        mp.setenv("HF_ENDPOINT", UNREACHABLE_ENDPOINT)
        mp.chdir(cwd)
        yield


def _record_expert(base: Path) -> dict:
    """Train PPO for 40k true-reward steps on InvertedPendulum-v5 and record a real expert dataset in ``base``."""
    store, workdir = base / "store", base / "w"
    with offline_in(store, base):
        run = run_cli(["demos", "--env", "InvertedPendulum-v5", "--dataset-id", DEMOS_DATASET, "--algorithm", "ppo",
                       "--expert-steps", "40000", "--episodes", str(DEMOS_EPISODES), "--random-episodes", "20",
                       "--device", "cpu", "--workdir", workdir, "--seed", "0"])
    return {"run": run, "store": store, "workdir": workdir}


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The suite's one expert dataset (the only expert training, ~50 s of CPU; tests that change the store copy
    it first). Under pytest-xdist the first worker to need it records it into the run's shared folder while the
    others wait for it (the CLI's exception object is not passed on; exit code and output are)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _record_expert(tmp_path_factory.mktemp("demos"))
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp().parent / "demos"  # the same folder for every worker of this run
    with FileLock(f"{base}.lock"):
        outcome = base / "run.json"
        if not outcome.is_file():
            base.mkdir(exist_ok=True)
            run = _record_expert(base)["run"]
            outcome.write_text(json.dumps({f.name: getattr(run, f.name) for f in dataclasses.fields(run) if f.name != "exception"}))
        run = Run(**json.loads(outcome.read_text()), exception=None)
    return {"run": run, "store": base / "store", "workdir": base / "w"}


@pytest.fixture
def store(recorded, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recorded expert dataset's Minari store, as this test's store."""
    assert recorded["run"].exit_code == 0, recorded["run"].output
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
    return recorded["store"]



# The longest test files first (seconds in the last full run), so that under `-n 2 --dist loadfile
# --no-loadscope-reorder` neither worker is left with a long file at the end while the other one idles. The
# second file needs no expert dataset: the second worker computes while the first records the `recorded` one.
LONGEST_FIRST = ("test_scaleout.py", "test_ds_divergence.py", "test_train.py", "test_reliability.py",
                 "test_chains.py", "test_baselines.py", "test_remote.py", "test_suites.py", "test_ui.py",
                 "test_compare.py")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in every worker, as the CLI's default: with two xdist workers on 2 cores, torch's
    default of one thread per core oversubscribes them (the learner-refit test took 80 s instead of 4 s)."""
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order files longest first (a stable sort: tests keep their order within a file)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
