"""Behaviour cloning: the expert's (state, action) pairs regressed into an SB3 SAC actor, no env steps
(``baselines.behaviour_cloning``). Its settings are the ``baselines.bc_*`` fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smiling_pipeline.algorithms.base import Algorithm, Context, OwnRun


def run(ctx: Context, evaluate: Callable[[Any, int], None]) -> OwnRun:
    """Clone the expert's actions, evaluating ten times along the way."""
    from stable_baselines3 import SAC

    from smiling_pipeline.baselines import behaviour_cloning
    from smiling_pipeline.envs import check_box_spaces

    p, data = ctx.p, ctx.data
    obs_space, act_space = check_box_spaces(ctx.env, data.meta["env_id"])
    obs_dim = obs_space.shape[0]
    model = SAC("MlpPolicy", ctx.env, policy_kwargs={"net_arch": list(p.train.net)}, seed=p.train.seed,
                device=ctx.device)
    losses = behaviour_cloning(model.policy, data.train[:, :obs_dim], data.train[:, obs_dim:], act_space,
                               p.baselines, p.train.seed, on_eval=lambda step: evaluate(model, step),
                               eval_every=max(1, p.baselines.bc_steps // 10))
    return OwnRun(model, {"env_steps": 0, "gradient_steps": p.baselines.bc_steps, "bc_loss": losses[-1]})


SPEC = Algorithm(
    name="bc",
    sections=("train", "baselines", "ingest"),
    tag_scopes=("ingest", "train", "baselines.bc_"),
    reward_text="BC learns no reward",
    needs_actions=True,
    run=run,
    rl="sac",
    color="tab:green",
)
