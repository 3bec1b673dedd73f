"""SB3 integration: a replay buffer that relabels sampled rewards with an imitation reward (a
``rewards.RewardModel``: SMILING, or DAC from ``baselines``), and the callback that refits that reward
every iteration (Follow-the-Leader on the learner's states). SB3 glue only: the rewards live in ``rewards``.

Within an iteration the expert and learner models are fixed, and the fast SMILING estimator's draws are
fixed for the run, so a row's reward is a fixed function of the row: the buffer caches each row's
reward for the current model version and only evaluates stale rows, and it keeps the part that never
changes (SMILING: the expert model's half) for the row's whole life. One SAC update of batch 256
then costs far less than 256 reward evaluations (``benchmarks/`` measures it); per-batch
normalisation (the model's own) is applied after. A model that is not ``cacheable`` (the official
estimator's fresh noise) is evaluated on every sampled batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3 import __version__ as sb3_version
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from smiling_pipeline.config import TrainConfig
from smiling_pipeline.rewards import RewardModel

ALGORITHMS: dict[str, Any] = {"sac": SAC, "td3": TD3, "ddpg": DDPG}  # SB3 off-policy learners, by ``train.rl``


def score_inputs(obs: torch.Tensor, actions: torch.Tensor, action_space: Optional[gym.spaces.Box]) -> torch.Tensor:
    """Rows the score models see: states, or [state, env action] when ``action_space`` is given.

    SB3 stores actions rescaled to [-1, 1]; the expert data holds environment actions, so they are
    mapped back with the space's bounds.
    """
    if action_space is None:
        return obs
    low = torch.as_tensor(action_space.low, device=actions.device)
    high = torch.as_tensor(action_space.high, device=actions.device)
    return torch.cat([obs, low + 0.5 * (actions + 1.0) * (high - low)], dim=1)


class SmilingReplayBuffer(ReplayBuffer):
    """``replay_buffer_class`` for SB3 off-policy algorithms: sampled rewards come from a
    :class:`RewardModel` (SMILING or a baseline), never from the environment.

    Set :attr:`reward_model` before training; single-environment only (rows are cached by index).
    :attr:`reward_offset` is added to every normalised reward; with :attr:`absorbing_gamma` set, a
    transition that ended the episode leads to an absorbing state whose reward is the batch's lowest,
    forever (its value ``gamma / (1 - gamma) * min r`` is added to the transition's reward), instead
    of to nothing (value 0): with rewards of mean zero, ending an episode would otherwise beat
    continuing through below-average states.
    """

    reward_model: Optional[RewardModel] = None
    reward_offset: float = 0.0
    absorbing_gamma: Optional[float] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError("SmilingReplayBuffer supports a single environment")
        self._cache = np.zeros(self.buffer_size, dtype=np.float32)
        self._cache_version = np.full(self.buffer_size, -1, dtype=np.int64)
        self._fixed = np.zeros(self.buffer_size, dtype=np.float32)  # RewardModel.fixed_part of each row
        self._fixed_version = np.full(self.buffer_size, -1, dtype=np.int64)  # RewardModel.fixed_version of it
        self.relabelled = 0  # batches sampled through :meth:`_get_samples` (see :func:`check_relabelling`)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``save_replay_buffer``) without the score models: they are saved on their own."""
        state = dict(self.__dict__)
        state.pop("reward_model", None)
        return state

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._cache_version[self.pos] = -1  # the slot is about to hold a new transition
        self._fixed_version[self.pos] = -1
        super().add(*args, **kwargs)

    def _model(self) -> RewardModel:
        if self.reward_model is None:
            raise RuntimeError("SmilingReplayBuffer.reward_model is not set")
        return self.reward_model

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        self.relabelled += 1
        r = torch.as_tensor(self.rewards_at(batch_inds), device=samples.rewards.device)
        r = self._model().normalize_batch(r).reshape(-1, 1) + self.reward_offset
        if self.absorbing_gamma is not None:
            r = r + samples.dones * (self.absorbing_gamma / (1.0 - self.absorbing_gamma)) * r.min()
        return samples._replace(rewards=r)

    def rewards_at(self, idx: np.ndarray) -> np.ndarray:
        """Current unnormalised rewards of the rows at ``idx``: only stale rows are evaluated, and
        each row's fixed part once per :attr:`RewardModel.fixed_version`."""
        model = self._model()
        if not model.cacheable:
            return model.rewards(self.rows_at(idx)).cpu().numpy()
        stale = np.unique(idx[self._cache_version[idx] != model.version])
        if len(stale):
            rows = self.rows_at(stale)
            missing = self._fixed_version[stale] != model.fixed_version
            if missing.any():
                part = model.fixed_part(rows[torch.as_tensor(missing, device=rows.device)])
                if part is not None:
                    self._fixed[stale[missing]] = part.cpu().numpy()
                    self._fixed_version[stale[missing]] = model.fixed_version
            known = (self._fixed_version[stale] == model.fixed_version).all()
            fixed = torch.as_tensor(self._fixed[stale], device=rows.device) if known else None
            self._cache[stale] = model.rewards(rows, fixed).cpu().numpy()
            self._cache_version[stale] = model.version
        return self._cache[idx]

    def rows_at(self, idx: np.ndarray, on_device: bool = True) -> torch.Tensor:
        """Score-model inputs of the rows at ``idx``: on the learner's device, or CPU tensors over the
        gathered arrays (no further copy)."""
        convert = self.to_torch if on_device else torch.as_tensor
        obs, acts = convert(self.observations[idx, 0, :]), convert(self.actions[idx, 0, :])
        return score_inputs(obs, acts, self.reward_model.action_space if self.reward_model else None)

    def newest(self, window: Optional[int]) -> np.ndarray:
        """Indices of the stored rows, oldest first (the newest ``window`` of them)."""
        n = self.buffer_size if self.full else self.pos
        idx = np.arange(n) if not self.full else (np.arange(n) + self.pos) % n
        return idx if window is None else idx[-window:]

    def learner_rows(self, window: Optional[int]) -> np.ndarray:
        """The learner's score-model inputs stored so far (the newest ``window`` of them)."""
        return self.rows_at(self.newest(window), on_device=False).float().numpy()


def attach(model: Any, reward_model: RewardModel, cfg: TrainConfig) -> SmilingReplayBuffer:
    """Point an SB3 learner's relabelling buffer at ``reward_model`` with the run's fall handling."""
    buffer = model.replay_buffer
    if not isinstance(buffer, SmilingReplayBuffer):
        raise TypeError(f"{type(model).__name__} must be built with replay_buffer_class=SmilingReplayBuffer")
    buffer.reward_model = reward_model
    buffer.reward_offset = cfg.reward_offset
    buffer.absorbing_gamma = cfg.gamma if cfg.termination == "absorbing" else None
    return buffer


def grow(buffer: SmilingReplayBuffer, size: int) -> None:
    """Make room for ``size`` rows in a buffer that has not wrapped around (a run extended to more env steps),
    each per-row array padded as a new buffer of that size would start it."""
    if size <= buffer.buffer_size:
        return
    if buffer.full:
        raise ValueError("a replay buffer that has wrapped around cannot grow")
    fresh = type(buffer)(size, buffer.observation_space, buffer.action_space, device=buffer.device,
                         optimize_memory_usage=buffer.optimize_memory_usage,
                         handle_timeout_termination=buffer.handle_timeout_termination)
    for name, rows in list(vars(buffer).items()):
        if isinstance(rows, np.ndarray) and rows.shape[:1] == (buffer.buffer_size,):
            padded = getattr(fresh, name)
            padded[: buffer.buffer_size] = rows
            setattr(buffer, name, padded)
    buffer.buffer_size = size


def check_relabelling(model: Any) -> None:
    """Fail loudly if SB3 trained without sampling through :meth:`SmilingReplayBuffer._get_samples`
    (a private hook): the learner would be optimising the environment's reward."""
    buffer = model.replay_buffer
    if model._n_updates > 0 and buffer.relabelled == 0:
        raise RuntimeError(f"stable-baselines3 {sb3_version} made {model._n_updates} updates without sampling "
                           "through SmilingReplayBuffer._get_samples, so no reward was relabelled; "
                           "this SB3 version is not supported")


@dataclass
class IterationStats:
    """What one reward refit produced (logged per iteration)."""

    iteration: int
    env_steps: int
    refit_loss: float  # learner score model (SMILING) or discriminator (DAC)
    reward_mean_expert: float  # SMILING: the DS divergence estimate
    reward_mean_learner: float
    # Pearson correlation of the imitation reward with the environment's reward on the newest learner
    # transitions: how well the learned reward tracks the task (a diagnostic; training never sees it)
    reward_true_corr: float
    # the same for each of the reward's halves (:meth:`RewardModel.halves`; NaN where it has none): SMILING's
    # expert half (minus the expert model's error) and learner half (the learner model's error)
    reward_true_corr_expert: float = float("nan")
    reward_true_corr_learner: float = float("nan")
    # correlation of the reward with the discounted (``train.gamma``) true return-to-go on the same rows of finished
    # episodes: where the step reward pays for what ends an episode (Hopper's speed while falling), this is the
    # yardstick that says whether the reward points the learner the right way
    reward_rtg_corr: float = float("nan")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def return_to_go(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """The discounted return from each row to its episode's end (rows in time order); NaN in the last episode
    while it is unfinished."""
    out = np.empty(len(rewards))
    acc = float("nan")
    for i in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[i]) + (0.0 if dones[i] else gamma * acc)
        out[i] = acc
    return out


class LearnerRefit:
    """Step (b) of Algorithm 1: refit the reward model on the learner's rows (all of them, or the
    newest ``learner_window``) and report what the new reward says."""

    def __init__(self, reward_model: RewardModel, cfg: TrainConfig, expert_val: np.ndarray):
        self.reward_model = reward_model
        self.cfg = cfg
        self.expert_val = torch.as_tensor(expert_val[:2048], dtype=torch.float32)
        self._expert_val_fixed: tuple[int, Optional[torch.Tensor]] = (-1, None)  # (fixed_version, their fixed part)
        self.iteration = 0

    def __call__(self, buffer: SmilingReplayBuffer, env_steps: int) -> IterationStats:
        """Refit on the stored learner rows (the model bumps its version), report statistics."""
        rows = buffer.learner_rows(self.cfg.learner_window)
        loss = self.reward_model.refit(rows, self.cfg, self.iteration)
        self.iteration += 1
        if self._expert_val_fixed[0] != self.reward_model.fixed_version:
            self._expert_val_fixed = (self.reward_model.fixed_version, self.reward_model.fixed_part(self.expert_val))
        newest = buffer.newest(2048)
        learner = buffer.rewards_at(newest)  # through the buffer's cache: then known for the new version
        true = buffer.rewards[newest, 0]
        rtg = return_to_go(true, buffer.dones[newest, 0], self.cfg.gamma)
        finished = ~np.isnan(rtg)
        halves = self.reward_model.halves(buffer.rows_at(newest)) or {}
        return IterationStats(
            iteration=self.iteration,
            env_steps=env_steps,
            refit_loss=loss,
            reward_mean_expert=float(self.reward_model.rewards(self.expert_val, self._expert_val_fixed[1]).mean()),
            reward_mean_learner=float(learner.mean()),
            reward_true_corr=correlation(learner, true),
            **{f"reward_true_corr_{name}": correlation(part.float().cpu().numpy(), true) for name, part in halves.items()},
            reward_rtg_corr=correlation(learner[finished], rtg[finished]),
        )
