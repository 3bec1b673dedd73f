"""How much of a finished SMILING run's reward, on its own policy's states, is the estimator's draw noise?

Run (with the Python of the worktree whose package made the runs, so their models load):
  cd ../study && .venv/bin/python ../main/benchmarks/draw_noise.py --runs data/sweeps \\
      --cells loco-hopper-hopper-smiling-so-s0 loco-hopper-hopper-smiling-so-s1 \\
      --out ../main/reports/locomotion/draw_noise/hopper
  -> <out>.json and <out>.md

Training draws K (timestep, noise) pairs once per run and scores every row with them, so a row's reward
error stays put for the whole run. The cost-estimator benchmark measured that error on broad state sets
(random-action rollouts), where the rows differ a lot; the learner climbs differences *within its own
states*, which are much smaller. Per cell: the final reward (pre-trained expert model, last learner model)
on the states of deterministic episodes of the final policy, with the run's own draws and with several
independent draw sets per K; per K the correlation with the true step reward and with forward velocity
(mean and range over the draw sets), the correlation with a K = 4,096 reference (how close to the
noiseless reward), and the reliability (mean correlation between two draw sets); and the reference's two
halves alone (learner error, minus expert error), to see which one carries the slope.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from mujoco_obs import forward_velocity_index  # benchmarks/, on the path as the script's folder
from reward_ranking import corr, policy_states

from smiling_pipeline.cost import draw, grid_terms, model_errors
from smiling_pipeline.ingest import load_expert_data
from smiling_pipeline.score import load_model

REFERENCE_K = 4096


def cell_noise(run: Path, ks: list[int], sets: int, episodes: int) -> dict:
    """The reward's correlations on the final policy's states, per K over ``sets`` draw sets, and with the
    run's own draws."""
    params = yaml.safe_load((run / "params.yaml").read_text())
    data = load_expert_data(run / "ingest")
    env_id = data.meta["env_id"]
    expert, _ = load_model(run / "pretrain" / "expert_score.pt")
    learner, _ = load_model(run / "train" / "reward_model.pt")
    x, true_r, ret = policy_states(run / "train" / "policy.zip", data.meta, episodes)
    vel, xt = x[:, forward_velocity_index(env_id)], torch.as_tensor(x)
    antithetic = bool(params["cost"]["antithetic"])

    def halves(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The reward's two halves with K draws from ``seed``: learner error and minus expert error."""
        d = draw(expert.t_max, expert.dim, k, antithetic, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return (model_errors(learner, xt, grid_terms(learner, d)).numpy(),
                    -model_errors(expert, xt, grid_terms(expert, d)).numpy())

    def rewards(k: int, seed: int) -> np.ndarray:
        return sum(halves(k, seed))

    def single(name: str, k: int, r: np.ndarray) -> dict:
        """A row for one reward (no draw sets to spread over)."""
        return {"draws": name, "k": k, "corr_true": [corr(r, true_r)] * 3, "corr_velocity": [corr(r, vel)] * 3,
                "corr_reference": corr(r, ref), "reliability": float("nan")}

    learner_half, expert_half = halves(REFERENCE_K, 999_999)  # which half carries the slope
    ref = learner_half + expert_half
    own_k, own_seed = int(params["cost"]["timesteps"]), int(params["train"]["seed"])
    rows = [single(f"the run's own (K = {own_k})", own_k, rewards(own_k, own_seed)),  # the draws it trained with
            single(f"reference (K = {REFERENCE_K})", REFERENCE_K, ref),
            single("reference, learner error (learner half) only", REFERENCE_K, learner_half),
            single("reference, minus expert error (expert half) only", REFERENCE_K, expert_half)]
    for k in ks:
        rs = [rewards(k, 1000 * k + s) for s in range(sets)]
        ct, cv = [corr(r, true_r) for r in rs], [corr(r, vel) for r in rs]
        rows.append({"draws": f"{sets} independent sets", "k": k,
                     "corr_true": [float(np.mean(ct)), min(ct), max(ct)],
                     "corr_velocity": [float(np.mean(cv)), min(cv), max(cv)],
                     "corr_reference": float(np.mean([corr(r, ref) for r in rs])),
                     "reliability": float(np.mean([corr(a, b) for a, b in itertools.combinations(rs, 2)]))})
    return {"cell": run.name, "env_id": env_id, "return": round(ret, 1), "states": len(x),
            "true_reward_std": round(float(true_r.std()), 3), "velocity_std": round(float(vel.std()), 3),
            "rows": rows}


def span(c: list[float]) -> str:
    """A mean with its [min, max] range, or the one value when the range is a single point."""
    return f"{c[0]:.2f}" if c[1] == c[2] else f"{c[0]:.2f} [{c[1]:.2f}, {c[2]:.2f}]"


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Draw noise in the final SMILING reward on the learner's own states", "",
             f"Made by `benchmarks/draw_noise.py` (see its docstring): `{command}`. corr = Pearson correlation over "
             "the states of the final policy's deterministic episodes; *true* = the environment's step reward; "
             "mean [min, max] over the draw sets; *reference* = the reward with K = 4,096; reliability = mean "
             "correlation between two independent draw sets; *reference, ... only*: one half of the reference reward.", ""]
    for res in results:
        lines += [f"## `{res['cell']}` ({res['env_id']}): return {res['return']:.0f}, {res['states']} states, "
                  f"std of the true reward {res['true_reward_std']}, of forward velocity {res['velocity_std']}", "",
                  "| draws | K | corr true | corr velocity | corr reference | reliability |",
                  "|---|---:|---|---|---:|---:|"]
        for r in res["rows"]:
            t, v = r["corr_true"], r["corr_velocity"]
            lines.append(f"| {r['draws']} | {r['k']} | {span(t)} | {span(v)} | {r['corr_reference']:.2f} | "
                         f"{r['reliability']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="the sweep's working folders (--runs of smiling-cli sweep)")
    ap.add_argument("--cells", nargs="+", required=True, help="finished SMILING cells")
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--sets", type=int, default=5, help="independent draw sets per K")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [cell_noise(args.runs / c, args.ks, args.sets, args.episodes) for c in args.cells]
    command = "benchmarks/draw_noise.py --runs data/sweeps --cells " + " ".join(args.cells)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
