"""Does a finished SMILING run's reward rank behaviours the way the true reward does?

Run (with the Python of the worktree whose package made the runs, so their models load):
  cd ../study && .venv/bin/python ../main/benchmarks/reward_ranking.py --runs data/sweeps \\
      --scorer loco-cheetah-smiling-so-s0 --policies loco-cheetah-smiling-so-s1 loco-cheetah-dac-so-s0 \\
      --out ../main/reports/locomotion/reward_ranking_cheetah
  -> <out>.json and <out>.md

The scorer run's final reward (its pre-trained expert model and its last learner model, unnormalised,
K = 64 shared draws) scores the states of deterministic episodes of each listed run's final policy (the
scorer's own first) and the expert's held-out states. Per policy: return, mean forward velocity, mean
reward, both models' errors, and the correlation of reward with forward velocity within its own states
(the local signal the learner climbs) and over all policies' states pooled (the global ranking). A
state-action run's reward scores (state, action) rows, the policies' deterministic actions beside their
states. The
run folders (``<runs>/<cell>/pretrain``, ``train``, ``ingest``) are the study's working folders; the
committed cell records do not hold models or policies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mujoco_obs import forward_velocity_index  # benchmarks/, on the path as the script's folder

from smiling_pipeline.cost import draw, grid_terms, model_errors
from smiling_pipeline.envs import make_env
from smiling_pipeline.evaluate import load_policy
from smiling_pipeline.ingest import load_expert_data
from smiling_pipeline.score import load_model


def policy_states(policy_zip: Path, meta: dict[str, Any], episodes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """States (or state-action rows, for a state-action dataset) visited by the policy's deterministic episodes
    on the dataset's recorded environment, the true reward of each step taken from them, and the episodes' mean
    true return."""
    policy = load_policy(str(policy_zip))
    env, with_actions = make_env(meta), bool(meta["with_actions"])
    states, rewards, returns = [], [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=100 + e)
        done, ret = False, 0.0
        while not done:
            action = policy.predict(obs, deterministic=True)[0]
            states.append(np.concatenate([obs, action]) if with_actions else obs)
            obs, r, terminated, truncated, _ = env.step(action)
            rewards.append(float(r))
            ret, done = ret + float(r), terminated or truncated
        returns.append(ret)
    env.close()
    return np.asarray(states, dtype=np.float32), np.asarray(rewards), float(np.mean(returns))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def ranking(runs: Path, scorer: str, policies: list[str], episodes: int) -> dict:
    data = load_expert_data(runs / scorer / "ingest")
    env_id, vel = data.meta["env_id"], forward_velocity_index(data.meta["env_id"])
    expert, _ = load_model(runs / scorer / "pretrain" / "expert_score.pt")
    learner, _ = load_model(runs / scorer / "train" / "reward_model.pt")
    draws = draw(expert.t_max, expert.dim, 64, True, torch.Generator().manual_seed(0))
    terms_e, terms_l = grid_terms(expert, draws), grid_terms(learner, draws)
    sets = {"expert (held-out states)": (data.val, float(data.meta["expert_return_mean"]))}
    for cell in [scorer, *policies]:
        x, _, ret = policy_states(runs / cell / "train" / "policy.zip", data.meta, episodes)
        sets[cell] = (x, ret)
    rows, pooled_r, pooled_v = [], [], []
    with torch.no_grad():
        for name, (x, ret) in sets.items():
            xt = torch.as_tensor(x)
            err_e, err_l = model_errors(expert, xt, terms_e).numpy(), model_errors(learner, xt, terms_l).numpy()
            r = err_l - err_e
            pooled_r.append(r)
            pooled_v.append(x[:, vel])
            rows.append({"states": name, "return": round(ret, 1), "forward_velocity": round(float(x[:, vel].mean()), 3),
                         "reward": round(float(r.mean()), 4), "expert_error": round(float(err_e.mean()), 4),
                         "learner_error": round(float(err_l.mean()), 4),
                         "corr_reward_velocity_within": round(corr(r, x[:, vel]), 3)})
    pooled = corr(np.concatenate(pooled_r[1:]), np.concatenate(pooled_v[1:]))  # the policies' states
    return {"scorer": scorer, "env_id": env_id, "episodes": episodes, "rows": rows,
            "corr_reward_velocity_pooled": round(pooled, 3)}


def markdown(result: dict) -> str:
    lines = [f"# Reward ranking on {result['env_id']}: the final reward of `{result['scorer']}`", "",
             "Made by `benchmarks/reward_ranking.py` (see its docstring). Reward = learner error - expert error "
             f"(unnormalised, K = 64 shared draws) on the states of {result['episodes']} deterministic episodes "
             "of each final policy; corr = Pearson correlation of reward with forward velocity.", "",
             "| states | return | forward velocity | reward | expert error | learner error | corr within |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['states']} | {r['return']:.0f} | {r['forward_velocity']:.2f} | {r['reward']:.3f} | "
                     f"{r['expert_error']:.3f} | {r['learner_error']:.3f} | {r['corr_reward_velocity_within']:.2f} |")
    lines += ["", f"Correlation of reward with forward velocity over all policies' states pooled: "
                  f"**{result['corr_reward_velocity_pooled']:.2f}**.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="the sweep's working folders (--runs of smiling-cli sweep)")
    ap.add_argument("--scorer", required=True, help="the SMILING cell whose final reward scores the states")
    ap.add_argument("--policies", nargs="*", default=[], help="other cells whose final policies are scored")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = ranking(args.runs, args.scorer, args.policies, args.episodes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
