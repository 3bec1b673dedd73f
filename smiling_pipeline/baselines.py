"""Baselines on the same machinery: DAC (a GAIL-style discriminator with gradient penalty, refit each
iteration, used through the same relabelling replay buffer) as the official SMILING repository
defines it (``algorithm/dac.py``, ``config/alg/dac.yaml``), and behaviour cloning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from smiling_pipeline.config import BaselinesConfig, CostConfig, TrainConfig
from smiling_pipeline.rewards import RewardModel


def discriminator(dim: int, hidden: int) -> nn.Module:
    """D(x): logit that x comes from the expert; one hidden layer with LeakyReLU, as the official DAC
    baseline (``hidden_depth: 1``)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, 1))


def gradient_penalty(d: nn.Module, expert: torch.Tensor, learner: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """E (||grad_x D(x)||_2 - 1)^2 at x = alpha * learner + (1 - alpha) * expert (WGAN-GP / DAC)."""
    x = (alpha * learner + (1 - alpha) * expert).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    return ((grad.norm(dim=1) - 1.0) ** 2).mean()


def dac_loss(d: nn.Module, expert: torch.Tensor, learner: torch.Tensor, alpha: torch.Tensor,
             penalty: float) -> torch.Tensor:
    """The official loss: the mean of the two binary cross-entropies (expert = 1, learner = 0) plus
    ``penalty`` times the gradient penalty."""
    pe, pl = d(expert), d(learner)
    bce = (F.binary_cross_entropy_with_logits(pl, torch.zeros_like(pl))
           + F.binary_cross_entropy_with_logits(pe, torch.ones_like(pe))) / 2
    return bce + penalty * gradient_penalty(d, expert, learner, alpha)


def gail_reward(logits: torch.Tensor) -> torch.Tensor:
    """GAIL-style reward -log(1 - sigmoid(D(x)) + 1e-8): positive, capped near 18.4 by the 1e-8."""
    return -torch.log(1.0 - torch.sigmoid(logits) + 1e-8)


class DacReward(RewardModel):
    """DAC as the official SMILING repository runs it: a discriminator refit each iteration (AdamW,
    one pass over learner/expert pairs), GAIL-style reward, and by default no reward normalisation
    and raw (unstandardised) inputs (``baselines.dac_reward_norm`` / ``dac_standardize``)."""

    def __init__(self, expert_rows: np.ndarray, mean: np.ndarray, std: np.ndarray, cfg: CostConfig,
                 baselines: BaselinesConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                 device: torch.device = torch.device("cpu"), min_std: float = 0.1):
        super().__init__(dataclasses.replace(cfg, reward_norm=baselines.dac_reward_norm), action_space, seed)
        torch.manual_seed(seed)
        dim = expert_rows.shape[1]
        self.mean = torch.as_tensor(mean if baselines.dac_standardize else np.zeros(dim), dtype=torch.float32,
                                    device=device)
        self.std = torch.as_tensor(np.maximum(std, min_std) if baselines.dac_standardize else np.ones(dim),
                                   dtype=torch.float32, device=device)
        self.expert = self.normalize(torch.as_tensor(expert_rows, dtype=torch.float32, device=device))
        self.d = discriminator(dim, baselines.dac_hidden).to(device)
        self.optimizer = torch.optim.AdamW(self.d.parameters(), lr=baselines.dac_lr)
        self.penalty = baselines.dac_gradient_penalty
        self.fit_steps = baselines.dac_fit_steps
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean) - self.mean) / self.std

    @torch.no_grad()
    def _rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
        return gail_reward(self.d(self.normalize(rows))).squeeze(1)

    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        device = self.mean.device
        learner = self.normalize(torch.as_tensor(learner_rows, dtype=torch.float32, device=device))
        n = cfg.learner_batch_size
        loss = torch.zeros(())
        for _ in range(self.fit_steps):
            e = self.expert[torch.randint(0, len(self.expert), (n,), generator=self.generator, device=device)]
            lr = learner[torch.randint(0, len(learner), (n,), generator=self.generator, device=device)]
            alpha = torch.rand(n, 1, generator=self.generator, device=device)
            loss = dac_loss(self.d, e, lr, alpha, self.penalty)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.version += 1
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {"d": self.d.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "version": self.version, "evaluations": self.evaluations}

    def save(self, path: Path) -> tuple[str, nn.Module]:
        torch.save(self.d.state_dict(), path)
        return "discriminator", self.d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d.load_state_dict(state["d"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.version, self.evaluations = state["version"], state["evaluations"]


def scale_actions(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Environment actions -> SB3's [-1, 1] (clipped just inside, where tanh can reach)."""
    scaled = 2.0 * (actions - space.low) / (space.high - space.low) - 1.0
    return np.clip(scaled, -0.999, 0.999)


def behaviour_cloning(policy: Any, states: np.ndarray, actions: np.ndarray, space: gym.spaces.Box,
                      cfg: BaselinesConfig, seed: int,
                      on_eval: Optional[Callable[[int], None]] = None, eval_every: int = 1_000) -> list[float]:
    """Fit an SB3 actor's deterministic action to the expert's (mean squared error in SB3's action
    scale); returns the loss per ``eval_every`` steps and calls ``on_eval(step)`` there."""
    device = policy.device
    x = torch.as_tensor(states, dtype=torch.float32, device=device)
    y = torch.as_tensor(scale_actions(actions, space), dtype=torch.float32, device=device)
    actor = policy.actor
    optimizer = torch.optim.Adam(actor.parameters(), lr=cfg.bc_lr)
    g = torch.Generator(device=device).manual_seed(seed)
    losses = []
    policy.set_training_mode(True)
    for step in range(1, cfg.bc_steps + 1):
        idx = torch.randint(0, len(x), (min(cfg.bc_batch_size, len(x)),), generator=g, device=device)
        loss = F.mse_loss(actor(x[idx], deterministic=True), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == cfg.bc_steps:
            losses.append(loss.item())
            if on_eval:
                policy.set_training_mode(False)
                on_eval(step)
                policy.set_training_mode(True)
    policy.set_training_mode(False)
    return losses
