"""Screening: which variant of the SMILING reward follows the true reward on fixed sets of states?

Run from the repository root (one CPU thread; ~10 min per environment on this 2-core machine):
  .venv/bin/python studies/reward_screening.py --env halfcheetah --out reports/fidelity/screening
  .venv/bin/python studies/reward_screening.py --env hopper --with-actions --out reports/fidelity/screening
  -> <out>/<env>[-sa].json and .md; the state sets are cached (and committed) in studies/states/<env>.npz
On a learner's own states (an RL run's replay buffer, 6 stages of its learning, 1,000 rows each):
  .venv/bin/python studies/reward_screening.py --env halfcheetah --run-buffer \
      data/sweeps/fid-cheetah-smiling-so-raw-s0/train/checkpoint/replay_buffer.pkl --run-label raw-s0
  -> <out>/<env>[-sa]-run-<label>.json and .md; the state set in studies/states/<env>-run-<label>.npz

Issue 26: the reward here departs from the official one on several points at once. Before spending RL
cells, score fixed sets of states whose true rewards are known with each variant: today's default, the
official reward (rewards.OfficialReward with its preset), and each deviation alone. The state sets are the
committed expert (data/experts/<env>) acting deterministically with a fraction eps of its actions replaced
by uniform random ones (eps = 0, 0.25, 0.5, 0.75, 1), and acting stochastically: six policies from expert to
random, 1,000 states each; or, with --run-buffer, an RL run's own states: its replay buffer cut into six
stages of learning in time order (1,000 rows drawn from each), the stage's mean true step reward as its "return".

Per variant, with the expert score model pre-trained as the pipeline does (ingest 5,000 states, 20k steps):
- within: for each policy, a learner score model fit on its own states (2,000 steps), the policy's states
  scored in shuffled batches of 256 and normalised per batch as SAC sees them; Pearson correlation with the
  true step reward and with forward velocity, averaged over the six policies (the local slope);
- pooled: one learner model fit on all six policies' states (a replay buffer's mix), all states scored in
  shuffled batches; correlation with the true step reward (what FTL training sees);
- ranking: Spearman correlation, over the policies, of the mean unnormalised reward under the pooled
  learner with the policy's mean return (higher reward for better policies?);
- cost: ms to score 1,000 rows (both halves, no cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from smiling_pipeline.config import CostConfig, IngestConfig, Params, apply_presets
from smiling_pipeline.cost import normalize_rewards
from smiling_pipeline.cost import reward as fresh_reward
from smiling_pipeline.demos import load_expert, use_minari_root
from smiling_pipeline.ingest import ingest, load_expert_data, mean_std
from smiling_pipeline.rewards import ScoreMatchingReward, smiling_reward
from smiling_pipeline.score import FitSettings, ScoreModel, fit

ENVS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
EPS = (0.0, 0.25, 0.5, 0.75, 1.0)
STATES_PER_POLICY = 1_000
BATCH = 256


def collect(env_name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """States, actions, true step rewards and forward velocities of the six policies (cached)."""
    cache = Path("studies/states") / f"{env_name}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    env = gym.make(ENVS[env_name])
    model = load_expert(f"data/experts/{env_name}/demos/expert_policy.zip", "sac", env, "cpu")
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "reward", "velocity", "policy", "returns")}
    policies = [("det", e) for e in EPS] + [("stochastic", 0.0)]
    for i, (kind, eps) in enumerate(policies):
        rows, returns, episode = 0, [], 0
        while rows < STATES_PER_POLICY:
            obs, _ = env.reset(seed=seed + 1000 * i + episode)
            total, done = 0.0, False
            while not done:
                a = model.predict(obs, deterministic=kind == "det")[0]
                if rng.random() < eps:
                    a = env.action_space.sample()
                nxt, r, term, trunc, info = env.step(a)
                if rows < STATES_PER_POLICY:
                    for key, v in (("obs", obs), ("act", a), ("reward", r), ("velocity", info["x_velocity"]), ("policy", i)):
                        out[key].append(np.asarray(v, dtype=np.float32))
                    rows += 1
                total += float(r)
                obs, done = nxt, term or trunc
            returns.append(total)
            episode += 1
        out["returns"].append(np.asarray(np.mean(returns), dtype=np.float32))
        print(f"  policy {kind} eps={eps}: return {np.mean(returns):.0f} over {episode} episodes", flush=True)
    arrays = {k: np.stack(v) for k, v in out.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **arrays)
    return arrays


VELOCITY_INDEX = {"hopper": 5, "walker2d": 8, "halfcheetah": 8}  # qvel[0] in the v5 observation


def run_states(env_name: str, buffer_path: Path, label: str, stages: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """A run's own states: its replay buffer in ``stages`` time windows, 1,000 rows of each (cached)."""
    cache = Path("studies/states") / f"{env_name}-run-{label}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    from stable_baselines3.common.save_util import load_from_pkl

    buffer = load_from_pkl(str(buffer_path))
    filled = buffer.buffer_size if buffer.full else buffer.pos
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, filled, stages + 1).astype(int)
    picks = [np.sort(rng.choice(np.arange(lo, hi), STATES_PER_POLICY, replace=False)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    idx = np.concatenate(picks)
    obs, reward = buffer.observations[idx, 0].astype(np.float32), buffer.rewards[idx, 0].astype(np.float32)
    arrays = {"obs": obs, "act": buffer.actions[idx, 0].astype(np.float32), "reward": reward,
              "velocity": obs[:, VELOCITY_INDEX[env_name]], "policy": np.repeat(np.arange(stages), STATES_PER_POLICY),
              "returns": np.array([reward[i * STATES_PER_POLICY:(i + 1) * STATES_PER_POLICY].mean() for i in range(stages)],
                                  dtype=np.float32)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **arrays)
    return arrays


def stochastic_expert_rows(env_name: str, with_actions: bool, n: int = 5_000, seed: int = 7) -> np.ndarray:
    """Expert data as the official code records it: the expert's sampled actions (5,000 rows)."""
    env = gym.make(ENVS[env_name])
    model = load_expert(f"data/experts/{env_name}/demos/expert_policy.zip", "sac", env, "cpu")
    rows: list[np.ndarray] = []
    episode = 0
    while len(rows) < n:
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done and len(rows) < n:
            a = model.predict(obs, deterministic=False)[0]
            rows.append(np.concatenate([obs, a]) if with_actions else obs.copy())
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
        episode += 1
    return np.asarray(rows, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One reward variant: its settings (the batch normalisation is its ``cost.reward_norm``), where its expert data
    comes from, and whether the estimator's draws are fixed for the run or new for every batch."""

    name: str
    params: Params
    demos: str = "deterministic"  # or stochastic
    draws: str = "run"  # run: one draw set for the whole screening (training's default) | batch: new draws per batch


def variants() -> list[Variant]:
    """Today's default, the official reward, and each deviation from the default alone (tables made before the
    default changed to raw states and rank rewards name their rows against the old default instead)."""
    base = Params()

    def with_(**changes: Any) -> Params:
        score = dataclasses.replace(base.score, **{k[6:]: v for k, v in changes.items() if k.startswith("score_")})
        cost = dataclasses.replace(base.cost, **{k[5:]: v for k, v in changes.items() if k.startswith("cost_")})
        return dataclasses.replace(base, score=score, cost=cost)

    return [
        Variant("default", base),
        Variant("official", apply_presets(base, ["official-reward"])),
        Variant("old default (standardised, batch)", with_(score_normalize=True, cost_reward_norm="batch")),
        Variant("standardised states", with_(score_normalize=True)),
        Variant("all timesteps", with_(score_min_signal=0.0)),
        Variant("fresh draws per batch", base, draws="batch"),
        Variant("K = 128", with_(cost_timesteps=128)),
        Variant("K = 500", with_(cost_timesteps=500)),
        Variant("no antithetic", with_(cost_antithetic=False)),
        Variant("stochastic demos", base, demos="stochastic"),
        Variant("batch normalisation (paper's)", with_(cost_reward_norm="batch")),
        Variant("clipped normalisation", with_(cost_reward_norm="clip")),
    ]


def scorer(v: Variant, expert: ScoreModel, learner: ScoreModel, seed: int) -> Callable[[torch.Tensor], np.ndarray]:
    """Unnormalised rewards of one batch under the variant's estimator, with ``learner`` as the learner model."""
    if v.draws == "batch":
        g = torch.Generator().manual_seed(seed)
        return lambda x: fresh_reward(expert, learner, x, v.params.cost.timesteps, v.params.cost.antithetic, g).numpy()
    model: ScoreMatchingReward = smiling_reward(expert, v.params.cost, None, seed)
    model.learner = learner
    return lambda x: model.rewards(x).numpy()


def batched(score: Callable[[torch.Tensor], np.ndarray], rows: np.ndarray, cost: CostConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of ``rows`` scored in shuffled batches of 256: (normalised per batch, unnormalised)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    raw, norm = np.empty(len(rows)), np.empty(len(rows))
    for i in range(0, len(rows), BATCH):
        idx = order[i : i + BATCH]
        r = score(torch.as_tensor(rows[idx]))
        raw[idx], norm[idx] = r, normalize_rewards(torch.as_tensor(r, dtype=torch.float64), cost).numpy()
    return norm, raw


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return corr(np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float))


def fitted(template: ScoreModel, rows: np.ndarray, steps: int, seed: int) -> ScoreModel:
    """A learner model (the expert's statistics) fit on ``rows`` as training's refits do (AdamW 5e-3, batch 1,024)."""
    model = template.fresh_copy()
    fit(model, rows, FitSettings(steps=steps), seed=seed)
    return model


def expert_model(v: Variant, rows: np.ndarray, mean: np.ndarray, std: np.ndarray, steps: int, seed: int) -> ScoreModel:
    torch.manual_seed(seed)
    model = ScoreModel(rows.shape[1], v.params.score, mean, std)
    fit(model, rows, FitSettings(steps=steps, lr=v.params.pretrain.lr, weight_decay=v.params.pretrain.weight_decay),
        seed=seed)
    return model


def correlations(v: Variant, expert: ScoreModel, own_learners: dict[int, ScoreModel], pool_learner: ScoreModel,
                 rows: np.ndarray, states: dict[str, np.ndarray], draw_seed: int) -> tuple[list[float], list[float], float, np.ndarray]:
    """With one set of estimator draws: per policy, the correlation of its normalised rewards (under its own learner
    model) with the true step reward and with velocity; the pooled correlation; each policy's mean unnormalised reward."""
    within_true, within_vel = [], []
    for i, learner in own_learners.items():
        own = states["policy"] == i
        norm, _ = batched(scorer(v, expert, learner, seed=draw_seed), rows[own], v.params.cost, seed=i)
        within_true.append(corr(norm, states["reward"][own]))
        within_vel.append(corr(norm, states["velocity"][own]))
    norm, raw = batched(scorer(v, expert, pool_learner, seed=draw_seed), rows, v.params.cost, seed=5)
    means = np.array([raw[states["policy"] == i].mean() for i in own_learners])
    return within_true, within_vel, corr(norm, states["reward"]), means


def screen(env_name: str, with_actions: bool, pretrain_steps: int, learner_steps: int, only: list[str],
           states: dict[str, np.ndarray], draw_seeds: int = 1) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    use_minari_root("data/minari")
    rows = np.concatenate([states["obs"], states["act"]], 1) if with_actions else states["obs"]
    with tempfile.TemporaryDirectory() as tmp:
        ingest(IngestConfig(dataset=f"smiling/{env_name}/expert-v0", with_actions=with_actions), Path(tmp))
        data = load_expert_data(Path(tmp))
    demos = {"deterministic": data.train, "stochastic": stochastic_expert_rows(env_name, with_actions)}
    experts: dict[tuple[Any, ...], ScoreModel] = {}
    learners: dict[tuple[Any, ...], ScoreModel] = {}
    results = []
    for v in variants():
        if only and v.name not in only:
            continue
        started = time.time()
        key = (v.demos, dataclasses.astuple(v.params.score))
        if key not in experts:
            x = demos[v.demos]
            experts[key] = expert_model(v, x, *mean_std(x), pretrain_steps, seed=0)
        expert = experts[key]
        for i in range(len(states["returns"])):
            if (key, i) not in learners:
                learners[(key, i)] = fitted(expert, rows[states["policy"] == i], learner_steps, seed=1 + i)
        if (key, "pool") not in learners:
            learners[(key, "pool")] = fitted(expert, rows, 3 * learner_steps, seed=99)
        per_draw = [correlations(v, expert, {i: learners[(key, i)] for i in range(len(states["returns"]))},
                                 learners[(key, "pool")], rows, states, draw_seed) for draw_seed in range(11, 11 + draw_seeds)]
        within_true, _, _, means = per_draw[0]  # per policy and the ranking: the first draw set's
        within_means = [float(np.nanmean(d[0])) for d in per_draw]
        pooled = [d[2] for d in per_draw]
        timing = scorer(v, expert, learners[(key, "pool")], seed=12)
        t0 = time.perf_counter()
        for i in range(0, 1_000, BATCH):
            timing(torch.as_tensor(rows[i : min(i + BATCH, 1_000)]))
        cost_ms = 1e3 * (time.perf_counter() - t0)
        result = {"variant": v.name, "within_true": float(np.mean(within_means)),
                  "within_velocity": float(np.mean([np.nanmean(d[1]) for d in per_draw])),
                  "within_true_per_policy": within_true, "pooled_true": float(np.mean(pooled)),
                  "draw_seeds": draw_seeds, "within_true_sd": float(np.std(within_means)),
                  "pooled_true_sd": float(np.std(pooled)),
                  "ranking_spearman": spearman(means, states["returns"]), "mean_reward_per_policy": means.tolist(),
                  "ms_per_1000_rows": cost_ms, "seconds": time.time() - started}
        print(f"{v.name:32s} within {result['within_true']:+.2f}{spread(result, 'within_true_sd')} vel {result['within_velocity']:+.2f} pooled "
              f"{result['pooled_true']:+.2f} rank {result['ranking_spearman']:+.2f} cost {cost_ms:.0f} ms/1k", flush=True)
        results.append(result)
    return results


def spread(result: dict[str, Any], key: str) -> str:
    """' ± sd' over the draw sets where the variant was scored with more than one."""
    return f" ± {result[key]:.2f}" if result.get("draw_seeds", 1) > 1 else ""


def write(out: Path, name: str, title: str, results: list[dict[str, Any]], command: str, header: str,
          returns: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"command": command, "policy_returns": returns.tolist(),
                                                  "results": results}, indent=1))
    lines = [f"# Reward screening: {title}", "", f"`{command}`", "",
             header + ", ".join(f"{r:.2f}" for r in returns), "",
             "| variant | within: corr true reward | within: corr velocity | pooled: corr true | ranking (Spearman) | ms / 1,000 rows |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['within_true']:+.2f}{spread(r, 'within_true_sd')} | {r['within_velocity']:+.2f} | "
              f"{r['pooled_true']:+.2f}{spread(r, 'pooled_true_sd')} | "
              f"{r['ranking_spearman']:+.2f} | {r['ms_per_1000_rows']:.0f} |" for r in results]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", choices=sorted(ENVS), required=True)
    ap.add_argument("--with-actions", action="store_true")
    ap.add_argument("--pretrain-steps", type=int, default=20_000)
    ap.add_argument("--learner-steps", type=int, default=2_000)
    ap.add_argument("--only", nargs="*", default=[], help="variant names to run (default: all)")
    ap.add_argument("--run-buffer", type=Path, help="an RL run's replay_buffer.pkl: screen on its own states")
    ap.add_argument("--draw-seeds", type=int, default=1,
                    help="score with this many sets of estimator draws (seeds 11, 12, ...): mean and spread over them")
    ap.add_argument("--run-label", default="run", help="names the run's state set and report")
    ap.add_argument("--out", type=Path, default=Path("reports/fidelity/screening"))
    args = ap.parse_args()
    command = ("python studies/reward_screening.py --env " + args.env + (" --with-actions" if args.with_actions else "")
               + (f" --pretrain-steps {args.pretrain_steps}" if args.pretrain_steps != 20_000 else "")
               + (f" --learner-steps {args.learner_steps}" if args.learner_steps != 2_000 else "")
               + (f" --run-buffer {args.run_buffer} --run-label {args.run_label}" if args.run_buffer else "")
               + (f" --draw-seeds {args.draw_seeds}" if args.draw_seeds != 1 else "")
               + (" --only " + " ".join(f"'{o}'" for o in args.only) if args.only else ""))
    name = f"{args.env}{'-sa' if args.with_actions else ''}"
    title = f"{ENVS[args.env]} {'state-action' if args.with_actions else 'state-only'}"
    if args.run_buffer:
        states = run_states(args.env, args.run_buffer, args.run_label)
        name, title = f"{name}-run-{args.run_label}", f"{title}, on the states of run {args.run_label}"
        header = "Six stages of the run in time order (the 'policies' below), mean true step reward per stage: "
    else:
        states = collect(args.env)
        header = "Policies (det eps = 0, 0.25, 0.5, 0.75, 1; stochastic expert), mean returns: "
    results = screen(args.env, args.with_actions, args.pretrain_steps, args.learner_steps, args.only, states,
                     args.draw_seeds)
    write(args.out, name, title, results, command, header, states["returns"])


if __name__ == "__main__":
    main()
