"""Gymnasium helpers shared by the stages: the supported spaces, seeded rollouts, a random policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from smiling_pipeline.errors import UserError

Policy = Callable[[np.ndarray], np.ndarray]


def check_box_spaces(env_or_dataset: Any, what: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The observation and action spaces, which must be flat Boxes (the only kind supported)."""
    spaces = []
    for name in ("observation_space", "action_space"):
        space = getattr(env_or_dataset, name)
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise UserError(f"{what}: {name} is {space}; only flat Box spaces are supported")
        spaces.append(space)
    return spaces[0], spaces[1]


def env_name(env: gym.Env) -> str:
    """The env's registered id (its class name if it was not made from a spec)."""
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def rollout_returns(env: gym.Env, policy: Policy, episodes: int, seed: int, desc: str) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes of ``policy`` (progress bar)."""
    returns = np.zeros(episodes)
    for ep in tqdm(range(episodes), desc=desc, unit="ep", leave=False):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            returns[ep] += float(reward)
            done = terminated or truncated
    return returns


def random_policy(env: gym.Env, seed: int) -> Policy:
    """Uniform random actions, seeded."""
    env.action_space.seed(seed)
    return lambda _obs: env.action_space.sample()
