"""Gymnasium helpers shared by the stages: the one environment factory, the supported spaces, seeded
rollouts, a random policy.

Every environment a dataset's training, evaluation or video runs in comes from :func:`make_env`, which
rebuilds the environment the dataset was recorded on from the spec Minari stored with it (kwargs,
``max_episode_steps`` and recorded wrappers included), as ``MinariDataset.recover_environment`` does;
``gym.make(env_id)`` alone would drop them.

New datasets are recorded on :func:`make_env_from_id`'s environments: any registered Gymnasium id, with
Dict observations flattened by Gymnasium's ``FlattenObservation`` (a wrapper the spec records, so every
later rebuild flattens the same way) and suites registered by another package (dm_control through
shimmy) imported on demand, with entry points a stored spec can name.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.wrappers import FlattenObservation
from tqdm.auto import tqdm

from smiling_pipeline.errors import UserError

Policy = Callable[[np.ndarray], np.ndarray]
Purpose = Literal["training", "evaluation", "video"]
TERMINATION_OPTION = "terminate_when_unhealthy"
# Gymnasium namespaces another package registers when imported (Gymnasium 1 loads no plugins itself), and
# what to install for it
SUITES = {"dm_control": ("shimmy", "shimmy[dm-control] (pip install -e '.[dmc]')")}


def check_has_env(env_spec: object, dataset_id: str) -> None:
    """Refuse a dataset recorded without an environment spec: training and evaluation run its environment."""
    if env_spec is None:
        raise UserError(f"dataset {dataset_id} has no environment spec; pretrain works without one, "
                        "but train and evaluate need the environment")


def recorded_spec(meta: dict[str, Any]) -> EnvSpec:
    """The spec of the environment an ingested dataset was recorded on (``meta.json``'s ``env_spec``)."""
    check_has_env(meta.get("env_spec"), meta["dataset_id"])
    return EnvSpec.from_json(meta["env_spec"])


def _entry_point(entry_point: Any, what: str) -> Callable[..., Any]:
    """The callable an env or wrapper spec names, imported; a missing module names what to install."""
    if callable(entry_point):
        return entry_point
    module, _, name = str(entry_point).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise UserError(f"{what} comes from {entry_point}, but module {module} cannot be imported "
                        f"({e.msg}); install the package that provides {module.split('.')[0]}") from e
    except AttributeError as e:
        raise UserError(f"{what} comes from {entry_point}, but {module} has no {name}; install the version "
                        f"of {module.split('.')[0]} the dataset was recorded with") from e


def _purpose_kwargs(spec: EnvSpec, creator: Callable[..., Any], purpose: Purpose, termination: str) -> dict[str, Any]:
    """What ``purpose`` changes: training without early termination for ``train.termination: ignore``
    (only where the environment has that option), rendering for a video; evaluation nothing."""
    if purpose == "video":
        return {"render_mode": "rgb_array"}
    if purpose == "training" and termination == "ignore":
        if TERMINATION_OPTION not in spec.kwargs and TERMINATION_OPTION not in _parameters(creator):
            raise UserError(f"{spec.id} has no {TERMINATION_OPTION} option, so train.termination: ignore does not "
                            "apply to it; use env or absorbing")
        return {TERMINATION_OPTION: False}
    return {}


def _parameters(creator: Callable[..., Any]) -> set[str]:
    """The keyword parameters an environment constructor takes (none known if it hides them)."""
    try:
        return set(inspect.signature(creator).parameters)
    except (TypeError, ValueError):
        return set()


def make_from_spec(spec: EnvSpec, purpose: Purpose = "evaluation", termination: str = "env") -> gym.Env:
    """The environment ``spec`` describes, as ``purpose`` needs it (``termination``: training only)."""
    creator = _entry_point(spec.entry_point, f"environment {spec.id}")
    for wrapper in spec.additional_wrappers:
        _entry_point(wrapper.entry_point, f"wrapper {wrapper.name} of {spec.id}")
    kwargs = _purpose_kwargs(spec, creator, purpose, termination)
    try:
        return gym.make(spec, **kwargs)
    except gym.error.Error as e:  # e.g. a recorded wrapper whose arguments were not recorded
        raise UserError(f"cannot rebuild environment {spec.id} as recorded: {str(e).splitlines()[0]}") from e


def _registered(env_id: str) -> EnvSpec:
    """The registered spec of ``env_id``, importing the package that registers its namespace if needed."""
    namespace = env_id.split("/", 1)[0] if "/" in env_id else None
    if namespace in SUITES and namespace not in {spec.namespace for spec in gym.registry.values()}:
        module, install = SUITES[namespace]
        try:
            gym.register_envs(importlib.import_module(module))
        except ImportError as e:
            raise UserError(f"{env_id} is registered by {module}, which cannot be imported ({e.msg}); "
                            f"install {install}") from e
    try:
        return gym.spec(env_id)
    except gym.error.Error as e:
        raise UserError(f"unknown environment {env_id!r}: {e}") from e


def dm_control_suite(domain_name: str, task_name: str, **kwargs: Any) -> gym.Env:
    """A dm_control suite task through shimmy, as shimmy's registration makes it, but importable by name:
    shimmy registers the suite with closures, which Gymnasium cannot write into a dataset's spec."""
    try:
        from dm_control import suite
        from shimmy.dm_control_compatibility import DmControlCompatibilityV0
    except ImportError as e:
        raise UserError(f"dm_control/{domain_name}-{task_name} needs dm_control and shimmy, which cannot be "
                        f"imported ({e.msg}); install {SUITES['dm_control'][1]}") from e
    logging.getLogger("absl").addFilter(_not_settotalmass)  # once: the same filter is not added twice
    load = {k: kwargs.pop(k) for k in ("task_kwargs", "environment_kwargs", "visualize_reward") if k in kwargs}
    return DmControlCompatibilityV0(suite.load(domain_name, task_name, **load), **kwargs)


def _not_settotalmass(record: logging.LogRecord) -> bool:
    """Drops MuJoCo 4's note on dm_control's models (``settotalmass`` is deprecated), logged at every build."""
    return "settotalmass" not in record.getMessage()


def storable(spec: EnvSpec) -> EnvSpec:
    """``spec`` with an entry point a stored spec can name: shimmy's dm_control suite closures become
    :func:`dm_control_suite` with the domain and task as kwargs; other specs are returned as they are."""
    entry = spec.entry_point
    if (isinstance(entry, functools.partial) and spec.namespace == "dm_control"
            and set(entry.keywords) == {"domain_name", "task_name"}):
        return dataclasses.replace(spec, entry_point=f"{__name__}:dm_control_suite",
                                   kwargs={**entry.keywords, **spec.kwargs})
    return spec


def flat(env: gym.Env) -> gym.Env:
    """``env`` with Dict observations flattened into one Box (``FlattenObservation``, which the env's spec
    records as a wrapper, so a dataset recorded on it is rebuilt flattened); other envs as they are."""
    return FlattenObservation(env) if isinstance(env.observation_space, gym.spaces.Dict) else env


def make_env_from_id(env_id: str, purpose: Purpose = "evaluation") -> gym.Env:
    """A registered environment with its registered defaults, observations flat (``demos`` records new
    datasets on one)."""
    return flat(make_from_spec(storable(_registered(env_id)), purpose))


def make_env(meta: dict[str, Any], purpose: Purpose = "evaluation", termination: str = "env") -> gym.Env:
    """The environment an ingested dataset (``meta``) was recorded on, for ``purpose``, checked to have the
    expert data's observation and action dims; ``termination`` is ``train.termination`` (training only)."""
    env = make_from_spec(recorded_spec(meta), purpose, termination)
    obs_space, act_space = check_box_spaces(env, env_name(env))
    dims, expected = (obs_space.shape[0], act_space.shape[0]), (meta["obs_dim"], meta["action_dim"])
    if dims != expected:
        env.close()
        raise UserError(f"{env_name(env)} has observations / actions of dims {dims[0]} / {dims[1]} but the expert "
                        f"data of {meta['dataset_id']} has {expected[0]} / {expected[1]}")
    return env


def check_box_spaces(env_or_dataset: Any, what: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The observation and action spaces, which must be flat Boxes (the only kind supported)."""
    spaces = []
    for name in ("observation_space", "action_space"):
        space = getattr(env_or_dataset, name)
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            hint = "; record the environment with smiling-cli demos, which flattens Dict observations" \
                if isinstance(space, gym.spaces.Dict) else ""
            raise UserError(f"{what}: {name} is {space}; only flat Box spaces are supported{hint}")
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
