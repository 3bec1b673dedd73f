"""Exact training checkpoints: everything that decides what happens next, written whole or not at all.

A checkpoint folder holds SB3's ``model.zip`` (policy, critics, optimisers, entropy coefficient,
counters, last observation), ``replay_buffer.pkl`` (with the reward cache) and ``state.pt``: the
learner score model and its optimizer, the cost estimator's draws and model version, the loop's
history and unsent MLflow metrics, the global RNG states, and the environment's exact state
(MuJoCo integration state, the env's RNG, every wrapper's counters). Restoring all of it makes a
resumed run identical to an uninterrupted one on the same machine.

The environment's state is saved where it can be: Gymnasium's MuJoCo environments (a MuJoCo model and
data on the unwrapped env). Any other environment (classic control, dm_control through shimmy, whose
task keeps state of its own) is recorded as not saved, and a resumed run starts a new episode there,
seeded, and says so once: everything else is restored exactly, the episode under way is cut short.
"""

from __future__ import annotations

import json
import logging
import random
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from smiling_pipeline.errors import UserError

log = logging.getLogger(__name__)
_MJ_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
_SKIP = {"env", "envs", "_saved_kwargs"}  # links between layers and constructor arguments
FORMAT = 2  # of state.pt; a checkpoint of another format was written by another version of the package


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states (SB3 samples its replay buffer with np.random)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _layers(env: gym.Env) -> list[Any]:
    """The wrapper chain from the outermost wrapper to the unwrapped env."""
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def _unsaved(base: Any) -> str | None:
    """Why the state of the unwrapped env ``base`` cannot be saved; None when it can (MuJoCo model and data)."""
    if isinstance(getattr(base, "model", None), mujoco.MjModel) and isinstance(getattr(base, "data", None), mujoco.MjData):
        return None
    return f"{type(base).__name__} is not a Gymnasium MuJoCo environment"


def env_state(vec_env: Any) -> dict[str, Any]:
    """The state of an SB3 ``DummyVecEnv`` of MuJoCo envs, enough to continue bit for bit; for other envs
    only why it is not saved (``unsaved``), and a resume starts a new episode (:func:`restore_env`)."""
    envs = []
    for env in vec_env.envs:
        *wrappers, base = _layers(env)
        reason = _unsaved(base)
        if reason is not None:
            return {"unsaved": reason}
        mj = np.empty(mujoco.mj_stateSize(base.model, _MJ_STATE))
        mujoco.mj_getState(base.model, base.data, mj, _MJ_STATE)
        envs.append({
            "wrappers": [{k: v for k, v in vars(w).items() if k not in _SKIP} for w in wrappers],
            "mujoco": mj,
            "np_random": base.np_random.bit_generator.state,
        })
    return {"vec": {k: v for k, v in vars(vec_env).items() if k not in _SKIP}, "envs": envs}


def set_env_state(vec_env: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`env_state` on a freshly made env of the same kind (a saved state)."""
    vars(vec_env).update(state["vec"])
    for env, saved in zip(vec_env.envs, state["envs"], strict=True):
        *wrappers, base = _layers(env)
        for wrapper, attrs in zip(wrappers, saved["wrappers"], strict=True):
            vars(wrapper).update(attrs)
        mujoco.mj_setState(base.model, base.data, saved["mujoco"], _MJ_STATE)
        base.np_random.bit_generator.state = saved["np_random"]


def restore_env(model: Any, state: dict[str, Any], seed: int) -> None:
    """Put the SB3 learner ``model``'s freshly made env where the checkpoint left it: exactly when its state
    was saved, else at the start of a new episode (reset with ``seed``), said once."""
    vec_env = model.get_env()
    if "unsaved" not in state:
        set_env_state(vec_env, state)
        return
    log.info(f"the checkpoint holds no environment state ({state['unsaved']}), so the resumed run starts a new "
             f"episode at {model.num_timesteps} env steps instead of finishing the one under way")
    vec_env.seed(seed)
    model._last_obs = vec_env.reset()
    model._last_episode_starts = np.ones((vec_env.num_envs,), dtype=bool)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``state.pt`` of a checkpoint (the caller writes the folder atomically)."""
    torch.save({**state, "rng": rng_state(), "format": FORMAT}, path)


def load_state(folder: Path) -> dict[str, Any]:
    """Read a checkpoint's ``state.pt``; missing or corrupted checkpoints are user errors."""
    path = folder / "state.pt"
    if not all((folder / f).is_file() for f in ("state.pt", "model.zip", "replay_buffer.pkl")):
        raise UserError(f"no complete checkpoint in {folder}; run `smiling-cli train` without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"checkpoint {path} is unreadable ({e.__class__.__name__}); remove {folder} and train again") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} was written by another version of smiling_pipeline; "
                        "train without --resume")
    return state


def progress(folder: Path) -> tuple[int, list[dict[str, float]]]:
    """A checkpoint's env steps (SB3's counter in ``model.zip``, read without loading the policy) and its
    learning curve so far: how far an unfinished run got."""
    state = load_state(folder)
    try:
        with zipfile.ZipFile(folder / "model.zip") as model:
            steps = int(json.loads(model.read("data"))["num_timesteps"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"checkpoint {folder / 'model.zip'} is unreadable ({e.__class__.__name__}); "
                        f"remove {folder} and train again") from e
    return steps, state["curve"]
