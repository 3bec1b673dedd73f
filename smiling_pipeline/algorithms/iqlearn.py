"""IQ-Learn (Garg et al. 2021, "IQ-Learn: Inverse soft-Q Learning for Imitation"), the paper's third
baseline, on SB3's SAC networks (twin critics, their targets, the squashed-Gaussian actor).

The critic is trained on the inverse soft-Q objective instead of a Bellman error, with no reward at all
(the replay buffer's environment rewards are never read): the online variant with the chi^2 regulariser
that the authors run on MuJoCo (Div99/IQ-Learn ``iq.py``, ``method.loss=value``, ``method.regularize=True``,
``alpha=0.5``, the next state's value from the target critic). With ``y = gamma (1 - done) V_target(s')``
and ``V(s) = min_i Q_i(s, a~pi) - ent_coef log pi(a|s)``, each critic minimises

    -E_expert[Q(s, a) - y] + E_mix[V(s) - y] + 1/(4 alpha) E_mix[(Q(s, a) - y)^2]

over a batch of ``train.batch_size`` learner transitions and as many expert transitions (``mix``: both),
and the actor takes SAC's step (``ent_coef log pi - min Q``) on the same states. The networks, the number
of critics, the actor's and critic's learning rates, the temperature and alpha are ``iqlearn.*`` (defaults:
the authors' MuJoCo settings); batch size, gamma, target updates and learning starts are ``train.*``.

``iqlearn.terminal`` says what follows a terminal step in ``y``. The authors' ``zero`` (``done`` = 1, no value
after it) makes a fall worth more than going on once the learner's implicit rewards are negative, as they
are on every learner row: on InvertedPendulum the learner then falls within about 5 steps and never learns
(docs/baselines.md). ``bootstrap`` (the default) values every next state, a fall's too, as after a time limit.

State-only (no expert actions): the expert's ``(s, s')`` pairs with the actions of the learner batch in
their place, as the authors' ``only_expert_states`` does. Expert transitions are read from the run's
Minari dataset (the first ``ingest.max_episodes`` episodes, every step), since the ingested rows keep no
next states.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Optional

import numpy as np

from smiling_pipeline.algorithms.base import Algorithm, Context
from smiling_pipeline.config import Params

if TYPE_CHECKING:
    import torch

CHI2_ALPHA = 0.5  # the authors' method.alpha: the chi^2 term is 1 / (4 alpha) E[(Q - y)^2]
Terminal = Literal["bootstrap", "zero"]  # iqlearn.terminal


class Batch(NamedTuple):
    """Transitions for one critic step; ``is_expert`` marks the expert rows of a mixed batch."""

    obs: torch.Tensor
    actions: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor  # (n, 1): 1 where no value follows (a terminal step, with iqlearn.terminal zero)
    is_expert: torch.Tensor  # (n,) bool


def iq_loss(q: torch.Tensor, v: torch.Tensor, next_v: torch.Tensor, batch: Batch, gamma: float,
            alpha: float = CHI2_ALPHA) -> torch.Tensor:
    """The IQ-Learn critic loss of one critic's ``q``: expert term, value term over all rows, chi^2 term over
    all rows (``v``, ``next_v``: soft values of ``obs``, ``next_obs``)."""
    y = (1 - batch.dones) * gamma * next_v
    implicit_reward = q - y
    return (-implicit_reward[batch.is_expert].mean() + (v - y).mean()
            + (implicit_reward ** 2).mean() / (4 * alpha))


@dataclass(frozen=True)
class ExpertTransitions:
    """The expert's transitions on the learner's device; ``actions`` in SB3's [-1, 1] scale, None state-only."""

    obs: torch.Tensor
    actions: Optional[torch.Tensor]
    next_obs: torch.Tensor
    dones: torch.Tensor

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor],
                                                                   torch.Tensor, torch.Tensor]:
        import torch

        idx = torch.randint(0, len(self.obs), (n,), generator=generator, device=self.obs.device)
        return self.obs[idx], None if self.actions is None else self.actions[idx], self.next_obs[idx], self.dones[idx]


def expert_transitions(ctx: Context) -> ExpertTransitions:
    """Every step of the dataset's first ``ingest.max_episodes`` episodes (all when unset)."""
    import torch

    from smiling_pipeline.baselines import scale_actions
    from smiling_pipeline.demos import load_dataset
    from smiling_pipeline.envs import check_box_spaces

    dataset = load_dataset(ctx.data.meta["dataset_id"])
    indices = list(dataset.episode_indices)[:ctx.p.ingest.max_episodes]
    obs, actions, next_obs, dones = [], [], [], []
    for ep in dataset.iterate_episodes(indices):
        o = np.asarray(ep.observations, dtype=np.float32)
        obs.append(o[:-1])
        next_obs.append(o[1:])
        actions.append(np.asarray(ep.actions, dtype=np.float32))
        dones.append(np.asarray(ep.terminations, dtype=np.float32))

    def tensor(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.concatenate(parts), dtype=torch.float32, device=ctx.device)

    space = check_box_spaces(ctx.env, ctx.data.meta["env_id"])[1]
    scaled = tensor([scale_actions(a, space) for a in actions]) if ctx.data.meta["with_actions"] else None
    return ExpertTransitions(tensor(obs), scaled, tensor(next_obs), tensor(dones).reshape(-1, 1))


@functools.cache
def learner() -> Any:
    """``IQLearnSAC``: SB3 SAC whose critic learns the IQ-Learn objective from its ``expert`` transitions (set
    by :func:`prepare`). Made on first use, so importing the registry imports no SB3."""
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.utils import polyak_update, update_learning_rate

    class IQLearnSAC(SAC):
        expert: Optional[ExpertTransitions] = None
        expert_generator: Optional[torch.Generator] = None

        def __init__(self, *args: Any, actor_lr: Optional[float] = None, chi2_alpha: float = CHI2_ALPHA,
                     terminal: Terminal = "zero", **kwargs: Any) -> None:
            """SAC's arguments, and the actor's own learning rate (None: ``learning_rate``), the chi^2 alpha and
            what follows a terminal step (``iqlearn.terminal``)."""
            self.actor_lr, self.chi2_alpha, self.terminal = actor_lr, chi2_alpha, terminal
            super().__init__(*args, **kwargs)

        def _excluded_save_params(self) -> list[str]:
            return [*super()._excluded_save_params(), "expert", "expert_generator"]

        def soft_value(self, obs: torch.Tensor, critic: Any, ent_coef: torch.Tensor) -> torch.Tensor:
            """V(s) = min_i Q_i(s, a) - ent_coef log pi(a|s), a sampled from the actor."""
            actions, log_prob = self.actor.action_log_prob(obs)
            q = torch.min(torch.cat(critic(obs, actions), dim=1), dim=1, keepdim=True).values
            return q - ent_coef * log_prob.reshape(-1, 1)

        def mixed_batch(self, batch_size: int) -> Batch:
            """``batch_size`` learner transitions, then as many expert ones (state-only: the learner's actions);
            with ``terminal`` bootstrap no row is terminal (the next state's value follows a fall too)."""
            if self.expert is None or self.expert_generator is None:
                raise RuntimeError("IQLearnSAC.expert is not set; build it through the iqlearn spec's prepare")
            policy = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            e_obs, e_actions, e_next, e_dones = self.expert.sample(batch_size, self.expert_generator)
            n = len(policy.observations)
            dones = torch.cat([policy.dones, e_dones]) * (self.terminal == "zero")
            return Batch(torch.cat([policy.observations, e_obs]),
                         torch.cat([policy.actions, policy.actions if e_actions is None else e_actions]),
                         torch.cat([policy.next_observations, e_next]), dones,
                         torch.arange(2 * n, device=e_obs.device) >= n)

        def critic_loss(self, batch: Batch, ent_coef: torch.Tensor) -> torch.Tensor:
            """The mean of both critics' :func:`iq_loss` (the authors' double-Q form), values from the min."""
            with torch.no_grad():
                next_v = self.soft_value(batch.next_obs, self.critic_target, ent_coef)
            v = self.soft_value(batch.obs, self.critic, ent_coef)
            losses = [iq_loss(q, v, next_v, batch, self.gamma, self.chi2_alpha)
                      for q in self.critic(batch.obs, batch.actions)]
            return torch.stack(losses).mean()

        def train(self, gradient_steps: int, batch_size: int = 64) -> None:
            """SAC's update with the IQ-Learn critic loss: temperature, critic, actor, target critic."""
            self.policy.set_training_mode(True)
            optimizers = [self.actor.optimizer, self.critic.optimizer]
            if self.ent_coef_optimizer is not None:
                optimizers.append(self.ent_coef_optimizer)
            self._update_learning_rate(optimizers)
            if self.actor_lr is not None:
                update_learning_rate(self.actor.optimizer, self.actor_lr)
            logged: dict[str, list[float]] = {"critic_loss": [], "actor_loss": [], "ent_coef": []}
            for step in range(gradient_steps):
                batch = self.mixed_batch(batch_size)
                actions_pi, log_prob = self.actor.action_log_prob(batch.obs)
                log_prob = log_prob.reshape(-1, 1)
                if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                    ent_coef = torch.exp(self.log_ent_coef.detach())
                    target_entropy = float(self.target_entropy)
                    ent_coef_loss = -(self.log_ent_coef * (log_prob + target_entropy).detach()).mean()
                    self.ent_coef_optimizer.zero_grad()
                    ent_coef_loss.backward()
                    self.ent_coef_optimizer.step()
                else:
                    ent_coef = self.ent_coef_tensor
                critic_loss = self.critic_loss(batch, ent_coef)
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self.critic.optimizer.step()
                q_pi = torch.min(torch.cat(self.critic(batch.obs, actions_pi), dim=1), dim=1, keepdim=True).values
                actor_loss = (ent_coef * log_prob - q_pi).mean()
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()
                if step % self.target_update_interval == 0:
                    polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                    polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
                for key, value in (("critic_loss", critic_loss), ("actor_loss", actor_loss), ("ent_coef", ent_coef)):
                    logged[key].append(value.item())
            self._n_updates += gradient_steps
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            for key, values in logged.items():
                self.logger.record(f"train/{key}", float(np.mean(values)))

    return IQLearnSAC


def prepare(model: Any, ctx: Context) -> None:
    """Hand the learner the expert transitions and a seeded generator for sampling them."""
    import torch

    model.expert = expert_transitions(ctx)
    model.expert_generator = torch.Generator(device=ctx.device).manual_seed(ctx.p.train.seed)


def learner_settings(p: Params) -> dict[str, Any]:
    """``iqlearn.*`` as SB3 SAC arguments: its networks, critics, learning rates and temperature."""
    c = p.iqlearn
    return {"learning_rate": c.critic_lr, "actor_lr": c.actor_lr, "chi2_alpha": c.alpha, "terminal": c.terminal,
            "ent_coef": f"auto_{c.init_temp}" if c.learn_temp else c.init_temp,
            "policy_kwargs": {"net_arch": list(c.net), "n_critics": c.critics}}


SPEC = Algorithm(
    name="iqlearn",
    sections=("train", "iqlearn", "ingest"),
    tag_scopes=("ingest", "train", "iqlearn"),
    reward_text="IQ-Learn learns no explicit reward (its critic implies one)",
    learner=learner,
    prepare=prepare,
    learner_settings=learner_settings,
    rl="sac",
    color="tab:red",
)
