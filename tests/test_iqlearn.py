"""IQ-Learn (algorithms/iqlearn.py): its critic loss pinned to the published objective on a fixed batch, the
state-only form, and that it never reads the environment's reward."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from smiling_pipeline.algorithms import iqlearn

pytestmark = pytest.mark.timeout(300)
GAMMA, ALPHA = 0.99, 0.5  # the authors' MuJoCo settings: gamma, method.alpha


def learner(ent_coef: float = 0.05, learning_starts: int = 0):
    """A small IQLearnSAC on InvertedPendulum-v5 (fixed temperature, so the values below use it as is)."""
    env = gym.make("InvertedPendulum-v5")
    return iqlearn.learner()("MlpPolicy", env, policy_kwargs={"net_arch": [32, 32]}, learning_starts=learning_starts,
                             batch_size=8, gamma=GAMMA, ent_coef=ent_coef, seed=0, device="cpu")


def fixed_batch(n: int = 16) -> iqlearn.Batch:
    """n learner rows, then n expert rows, some of them terminal."""
    g = torch.Generator().manual_seed(3)
    obs, next_obs = torch.randn(2 * n, 4, generator=g), torch.randn(2 * n, 4, generator=g)
    actions = torch.rand(2 * n, 1, generator=g) * 2 - 1
    dones = (torch.rand(2 * n, 1, generator=g) < 0.25).float()
    return iqlearn.Batch(obs, actions, next_obs, dones, torch.arange(2 * n) >= n)


def published_loss(model, batch: iqlearn.Batch, ent_coef: float) -> torch.Tensor:
    """Garg et al. (2021), the online objective with the chi^2 regulariser, written out from the paper:
        max_Q  E_{rho_E}[Q(s,a) - gamma V(s')] - E_{rho}[V(s) - gamma V(s')]
               - 1/(4 alpha) E_{rho}[(Q(s,a) - gamma V(s'))^2],
    V(s) = Q(s, a') - T log pi(a'|s) with a' ~ pi(.|s), V(s') from the target critic and 0 after a terminal
    step, rho the even mix of expert and learner transitions; the critic minimises the negative, each of
    SAC's two Q networks on its own (values from their minimum), averaged."""
    n = len(batch.obs) // 2
    with torch.no_grad():
        a_next, logp_next = model.actor.action_log_prob(batch.next_obs)
        q1_t, q2_t = model.critic_target(batch.next_obs, a_next)
        v_next = torch.minimum(q1_t, q2_t).squeeze(1) - ent_coef * logp_next
    a_now, logp_now = model.actor.action_log_prob(batch.obs)
    q1_pi, q2_pi = model.critic(batch.obs, a_now)
    v_now = torch.minimum(q1_pi, q2_pi).squeeze(1) - ent_coef * logp_now
    done = batch.dones.squeeze(1)
    total = 0.0
    for q in model.critic(batch.obs, batch.actions):
        q = q.squeeze(1)
        r = [q[i] - GAMMA * (1 - done[i]) * v_next[i] for i in range(2 * n)]  # the implicit reward per row
        expert_term = sum(r[n:]) / n
        value_term = sum(v_now[i] - GAMMA * (1 - done[i]) * v_next[i] for i in range(2 * n)) / (2 * n)
        chi2_term = sum(x ** 2 for x in r) / (2 * n) / (4 * ALPHA)
        total = total - (expert_term - value_term - chi2_term)
    return total / 2


def test_iqlearn_critic_loss_matches_the_published_objective_on_a_fixed_batch():
    model, batch = learner(), fixed_batch()
    ent_coef = model.ent_coef_tensor
    torch.manual_seed(11)
    ours = model.critic_loss(batch, ent_coef)
    torch.manual_seed(11)  # the same actor samples, drawn in the same order (next states, then states)
    theirs = published_loss(model, batch, float(ent_coef))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    grads = torch.autograd.grad(ours, list(model.critic.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the critic learns from it
    # the expert term pulls the expert rows' Q up: raising Q on them only lowers the loss there
    assert iqlearn.iq_loss(torch.zeros(32, 1), torch.zeros(32, 1), torch.zeros(32, 1), batch, GAMMA) == 0
    raised = torch.where(batch.is_expert[:, None], torch.full((32, 1), 0.1), torch.zeros(32, 1))
    assert iqlearn.iq_loss(raised, torch.zeros(32, 1), torch.zeros(32, 1), batch, GAMMA) < 0


def test_iqlearn_never_reads_the_environment_reward_and_state_only_uses_the_learner_actions():
    model = learner(learning_starts=1000)
    model.learn(64)  # 64 env steps into the replay buffer, no updates yet
    model.replay_buffer.rewards[:] = np.nan  # any use of the environment's reward would poison the networks
    rng = np.random.default_rng(0)
    rows = torch.as_tensor(rng.normal(size=(50, 4)), dtype=torch.float32)
    model.expert = iqlearn.ExpertTransitions(rows, None, rows + 0.01, torch.zeros(50, 1))  # state-only
    model.expert_generator = torch.Generator().manual_seed(0)
    batch = model.mixed_batch(8)
    assert torch.equal(batch.actions[8:], batch.actions[:8])  # the expert's (s, s') with the learner's actions
    assert batch.is_expert.tolist() == [False] * 8 + [True] * 8
    model.train(gradient_steps=5, batch_size=8)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    assert model._n_updates == 5


def test_iqlearn_terminal_rows_end_the_targets_with_zero_and_not_with_bootstrap():
    model = learner(learning_starts=1000)
    model.learn(64)
    rows = torch.zeros(50, 4)
    model.expert = iqlearn.ExpertTransitions(rows, None, rows, torch.ones(50, 1))  # every expert row terminal
    model.expert_generator = torch.Generator().manual_seed(0)
    assert model.terminal == "zero" and model.mixed_batch(8).dones[8:].eq(1).all()  # the authors': value 0 after
    model.terminal = "bootstrap"
    assert model.mixed_batch(8).dones.eq(0).all()  # the next state's value follows every row


def test_iqlearn_learner_is_built_with_its_own_settings_and_keeps_them_through_a_checkpoint(tmp_path):
    import dataclasses

    from smiling_pipeline import algorithms
    from smiling_pipeline.config import IQLearnConfig, Params, TrainConfig
    from smiling_pipeline.train import build_model

    spec = algorithms.get("iqlearn")
    p = dataclasses.replace(Params(), iqlearn=IQLearnConfig(net=(24, 24), critics=1, actor_lr=1e-5, critic_lr=2e-4,
                                                            init_temp=0.02, learn_temp=False, alpha=0.25,
                                                            terminal="zero"))
    cfg = TrainConfig(algorithm="iqlearn", steps=80, learning_starts=40, batch_size=8, net=(64, 64), lr=3e-4)
    env = gym.make("InvertedPendulum-v5")
    model = build_model(cfg, env, torch.device("cpu"), None, spec, spec.learner_settings(p))
    assert len(model.critic.q_networks) == 1 and model.critic.q_networks[0][0].out_features == 24
    assert model.log_ent_coef is None and float(model.ent_coef_tensor) == pytest.approx(0.02)
    rows = torch.zeros(20, 4)
    model.expert = iqlearn.ExpertTransitions(rows, None, rows, torch.zeros(20, 1))
    model.expert_generator = torch.Generator().manual_seed(0)
    model.learn(60)  # 20 updates
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)
    model.save(tmp_path / "model.zip")
    loaded = iqlearn.learner().load(tmp_path / "model.zip", env=env, device="cpu")
    assert (loaded.actor_lr, loaded.chi2_alpha, loaded.terminal) == (1e-5, 0.25, "zero")
    learned = dataclasses.replace(p, iqlearn=dataclasses.replace(p.iqlearn, learn_temp=True, critics=2))
    model = build_model(cfg, env, torch.device("cpu"), None, spec, spec.learner_settings(learned))
    assert len(model.critic.q_networks) == 2 and model.log_ent_coef.exp().item() == pytest.approx(0.02)
