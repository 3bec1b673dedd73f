"""Why IQ-Learn did not learn InvertedPendulum (issue 27): its implicit reward, values and episode lengths
over a run, with the value after a terminal step set to zero (the authors') or bootstrapped.

Run from the repository root with the pendulum's expert dataset in the Minari store (one CPU thread; ~3 min
for 5k steps with the shared SAC settings, ~6 min with the authors' 256x256 networks):
  MINARI_DATASETS_PATH=data/minari .venv/bin/python studies/iqlearn_terminal.py --settings authors --terminal zero
  ... --settings shared --terminal bootstrap   (shared: params.yaml's train.* SAC settings, twin critics)

Every 500 env steps after learning starts, on one mixed batch (256 learner + 256 expert rows): the implicit
reward r = Q(s, a) - gamma (1 - done) V_target(s') on expert rows, learner rows and the learner's terminal
rows (zero only: bootstrap marks none), Q on expert and learner rows, the temperature, the mean length of the last 10 training episodes; every
1,000 steps the deterministic return over 3 evaluation episodes (expert 838.8, random 5.2 on the default
dataset). docs/baselines.md quotes its numbers.
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import minari
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from smiling_pipeline.algorithms import iqlearn
from smiling_pipeline.baselines import scale_actions
from smiling_pipeline.config import Params

ENV, DATASET = "InvertedPendulum-v5", "smiling/invertedpendulum/expert-v0"


def expert(env: gym.Env, with_actions: bool) -> iqlearn.ExpertTransitions:
    """Every step of the dataset's episodes (as the iqlearn spec reads them)."""
    parts: dict[str, list[np.ndarray]] = {"obs": [], "actions": [], "next": [], "dones": []}
    for ep in minari.load_dataset(DATASET).iterate_episodes():
        o = np.asarray(ep.observations, dtype=np.float32)
        parts["obs"].append(o[:-1])
        parts["next"].append(o[1:])
        parts["actions"].append(scale_actions(np.asarray(ep.actions, dtype=np.float32), env.action_space))
        parts["dones"].append(np.asarray(ep.terminations, dtype=np.float32))
    t = {k: torch.as_tensor(np.concatenate(v), dtype=torch.float32) for k, v in parts.items()}
    return iqlearn.ExpertTransitions(t["obs"], t["actions"] if with_actions else None, t["next"],
                                     t["dones"].reshape(-1, 1))


def settings(which: str, terminal: str) -> dict[str, Any]:
    """The learner's arguments: the authors' (iqlearn.* defaults) or the shared SAC ones (train.* defaults)."""
    p = Params()
    if which == "authors":
        return {**iqlearn.learner_settings(p), "terminal": terminal}
    return {"learning_rate": p.train.lr, "ent_coef": p.train.ent_coef, "terminal": terminal,
            "policy_kwargs": {"net_arch": list(p.train.net)}}


def evaluate(model: Any, episodes: int = 3) -> float:
    """Mean deterministic return on fixed seeds."""
    env, returns = gym.make(ENV), []
    for i in range(episodes):
        obs, _ = env.reset(seed=100 + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


class Probe(BaseCallback):
    """Prints the implicit reward, values, temperature and episode lengths every 500 env steps."""

    def _on_step(self) -> bool:
        t, m = self.num_timesteps, self.model
        if t % 500 or t <= m.learning_starts:
            return True
        with torch.no_grad():
            b = m.mixed_batch(256)
            ent = m.ent_coef_tensor if m.log_ent_coef is None else torch.exp(m.log_ent_coef)
            q = torch.min(torch.cat(m.critic(b.obs, b.actions), dim=1), dim=1, keepdim=True).values
            r = q - (1 - b.dones) * m.gamma * m.soft_value(b.next_obs, m.critic_target, ent)
        learner, falls = r[~b.is_expert], r[~b.is_expert][b.dones[~b.is_expert] > 0]
        lengths = [info["l"] for info in m.ep_info_buffer][-10:]
        line = (f"t={t} r_expert={r[b.is_expert].mean():.3f} r_learner={learner.mean():.3f} "
                f"r_learner_terminal={falls.mean() if len(falls) else float('nan'):.3f} "
                f"Q_expert={q[b.is_expert].mean():.2f} "
                f"Q_learner={q[~b.is_expert].mean():.2f} temperature={float(ent):.4f} "
                f"episode_length={np.mean(lengths):.1f}")
        print(line + (f" eval_return={evaluate(m):.1f}" if t % 1000 == 0 else ""), flush=True)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=["authors", "shared"], default="authors")
    parser.add_argument("--terminal", choices=["zero", "bootstrap"], default="zero")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-actions", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = gym.make(ENV)
    model = iqlearn.learner()("MlpPolicy", env, **settings(args.settings, args.terminal), buffer_size=args.steps + 1,
                              learning_starts=1000, batch_size=256, gamma=0.99, seed=args.seed, device="cpu")
    model.expert, model.expert_generator = expert(env, args.with_actions), torch.Generator().manual_seed(args.seed)
    print(vars(args), flush=True)
    model.learn(args.steps, callback=Probe())


if __name__ == "__main__":
    main()
