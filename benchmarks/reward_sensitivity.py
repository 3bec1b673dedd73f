"""How strongly the expert half of SMILING's reward reacts to each state dimension, forward velocity included.

Run:  .venv/bin/python benchmarks/reward_sensitivity.py [--datasets ID ...] [--steps 20000]
      -> reports/locomotion/reward_sensitivity.json and .md

For each dataset (state-only), pre-train the expert score model as ``smiling-cli pretrain`` does (the
default model and optimiser, ``--steps`` steps, seed 0) and score its held-out expert states with K = 256
shared (timestep, noise) draws. Then move one dimension at a time by +1 and -1 expert standard deviation
and report the mean rise of the expert model's denoising error (the part of the reward that says "this
is not an expert state"), and the rise when the forward velocity alone is halved or set to 0. A
dimension the model barely reacts to is one the state-only reward barely asks the learner to match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mujoco_obs import forward_velocity_index  # noqa: E402
from pretrain_length import DATASETS, ingested  # noqa: E402  (the same ingestion and datasets)

from smiling_pipeline.config import PretrainConfig, ScoreConfig  # noqa: E402
from smiling_pipeline.cost import draw, grid_terms, model_errors  # noqa: E402
from smiling_pipeline.demos import use_minari_root  # noqa: E402
from smiling_pipeline.envs import recorded_spec  # noqa: E402
from smiling_pipeline.score import FitSettings, ScoreModel, fit  # noqa: E402


def sensitivity(dataset: str, steps: int) -> dict:
    """Per-dimension rise of the expert model's error on held-out expert states."""
    data = ingested(dataset, with_actions=False)
    env_id = recorded_spec(data.meta).id
    torch.manual_seed(0)
    model = ScoreModel(data.dim, ScoreConfig(), data.mean, data.std)
    p = PretrainConfig()
    fit(model, data.train, FitSettings(steps, p.batch_size, p.lr, p.weight_decay, steps), seed=0)
    rows = torch.as_tensor(data.val, dtype=torch.float32)
    std = torch.as_tensor(data.std, dtype=torch.float32)
    terms = grid_terms(model, draw(model.t_max, model.dim, 256, True, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        base = model_errors(model, rows, terms)

        def rise(moved: torch.Tensor) -> float:
            return float((model_errors(model, moved, terms) - base).mean())

        per_dim = []
        for j in range(data.dim):
            up, down = rows.clone(), rows.clone()
            up[:, j] += std[j]
            down[:, j] -= std[j]
            per_dim.append((rise(up) + rise(down)) / 2)
        v = forward_velocity_index(env_id)
        half, stop = rows.clone(), rows.clone()
        half[:, v] *= 0.5
        stop[:, v] = 0.0
        order = sorted(range(data.dim), key=lambda j: -per_dim[j])
        return {"dataset": dataset, "env_id": env_id, "dim": data.dim, "steps": steps, "held_out": len(rows),
                "expert_error": float(base.mean()), "per_dim_rise": per_dim, "velocity_index": v,
                "velocity_rank": order.index(v) + 1, "velocity_mean": float(rows[:, v].mean()),
                "velocity_std": float(std[v]), "velocity_halved_rise": rise(half), "velocity_zero_rise": rise(stop),
                "median_dim_rise": float(np.median(per_dim))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=PretrainConfig().steps)
    parser.add_argument("--minari-root", default=str(ROOT / "data" / "minari"))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "locomotion")
    args = parser.parse_args()
    torch.set_num_threads(1)
    use_minari_root(args.minari_root)
    results = []
    for dataset in args.datasets:
        r = sensitivity(dataset, args.steps)
        results.append(r)
        print(f"{dataset}: velocity (obs {r['velocity_index']}) ranks {r['velocity_rank']} of {r['dim']} dims, +/-1 std "
              f"raises the expert error by {r['per_dim_rise'][r['velocity_index']]:.4f} (median dim {r['median_dim_rise']:.4f}); "
              f"half speed +{r['velocity_halved_rise']:.4f}, standing +{r['velocity_zero_rise']:.4f} "
              f"(expert error {r['expert_error']:.4f})", flush=True)
    lines = ["# Sensitivity of the expert score model to each state dimension",
             "", "`.venv/bin/python benchmarks/reward_sensitivity.py` (state-only, default pre-training, seed 0, "
             "K = 256 shared draws, held-out expert states). Rise of the expert model's mean denoising error "
             "when one dimension moves by one expert std (mean of +1 and -1), and when the forward velocity "
             "alone is halved or set to 0.", "",
             "| dataset | expert error | forward velocity: rank of dims | its rise | median dim's rise | max dim's rise "
             "| half speed | standing (velocity 0) | expert speed (mean, std) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['dataset']} | {r['expert_error']:.4f} | {r['velocity_rank']} of {r['dim']} | "
                     f"{r['per_dim_rise'][r['velocity_index']]:.4f} | {r['median_dim_rise']:.4f} | "
                     f"{max(r['per_dim_rise']):.4f} | {r['velocity_halved_rise']:.4f} | {r['velocity_zero_rise']:.4f} | "
                     f"{r['velocity_mean']:.2f}, {r['velocity_std']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reward_sensitivity.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "reward_sensitivity.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'reward_sensitivity.md'}")


if __name__ == "__main__":
    main()
