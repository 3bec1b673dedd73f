"""The official reward's cost per SAC batch: ``rewards.OfficialReward`` against the plain official pass, side by side.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/official_reward.py [--repeats 7] [--out reports/benchmarks]
      -> <out>/official_reward.md and .json

``cost.estimator: official`` scores every sampled batch afresh: B = 256 rows tiled against the K = 500 grid,
both score models on all B * K noisy rows. The plain pass (``benchmarks/estimators.official_reward``, the official
``__reward_compute`` line for line, as this toolkit ran it until 2026-12-07) runs the whole network, time embedding
included, on every tiled row. ``OfficialReward`` computes the same numbers with the time part of the first layer
once per grid timestep (``ScoreModel.time_terms``, ``cycled_errors``) in cache-sized chunks. Both on the same
models (official preset: raw states, every timestep), one torch thread, the input widths of the Gym and DMC cells;
median seconds per batch over ``--repeats`` alternating calls, the largest difference between the two, and what a
100k-step cell would spend on the reward (one batch per env step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from estimators import official_reward  # noqa: E402

from smiling_pipeline.config import Params, apply_presets  # noqa: E402
from smiling_pipeline.rewards import OfficialReward  # noqa: E402
from smiling_pipeline.score import ScoreModel  # noqa: E402

WIDTHS = {"Hopper state-only": 11, "Hopper state-action": 14, "HalfCheetah / Walker2d / cheetah-run state-only": 17,
          "HalfCheetah / Walker2d state-action": 23}
BATCH = 256  # SAC's batch (params.yaml train.batch_size)
CELL_STEPS = 100_000


def measure(d: int, repeats: int) -> dict[str, float]:
    """Median seconds per batch, plain pass and OfficialReward, called in turn on the same rows and models."""
    torch.manual_seed(0)
    p = apply_presets(Params(), ["official-reward"])
    model = OfficialReward(ScoreModel(d, p.score), p.cost, None, seed=0)
    with torch.no_grad():
        for w in model.learner.parameters():
            w.add_(0.3 * torch.randn_like(w))  # a learner unlike the expert
    x = torch.randn(BATCH, d) * 3
    state = model.generator.get_state()
    ours = model.rewards(x)
    with torch.no_grad():
        plain = official_reward(model.expert, model.learner, x, torch.Generator().manual_seed(0))
    model.generator.set_state(state)
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(repeats):
        for name, call in (("plain", lambda: official_reward(model.expert, model.learner, x, torch.Generator().manual_seed(0))),
                           ("ours", lambda: model.rewards(x))):
            t0 = time.perf_counter()
            with torch.no_grad():
                call()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"d": d, "plain_s": med["plain"], "ours_s": med["ours"], "speedup": med["plain"] / med["ours"],
            "max_abs_difference": float((ours - plain).abs().max()), "reward_scale": float(plain.std()),
            "cell_hours_plain": med["plain"] * CELL_STEPS / 3600, "cell_hours_ours": med["ours"] * CELL_STEPS / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # other work on the machine slows both passes alike, not their ratio
    rows = {name: measure(d, a.repeats) for name, d in WIDTHS.items()}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "official_reward.json").write_text(json.dumps({"batch": BATCH, "repeats": a.repeats, "load": load, "rows": rows}, indent=1))
    lines = ["# The official reward's cost per SAC batch", "",
             f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/official_reward.py --repeats {a.repeats} --out {a.out}` "
             f"({time.strftime('%Y-%m-%d')}); batch {BATCH}, K = 500, one torch thread, median of {a.repeats} alternating calls; "
             f"load average {load:.1f} on {os.cpu_count()} cores at the start (above 1 the seconds are inflated by other work; the ratio, measured in alternation, much less).", "",
             "| input (width) | plain pass s / batch | OfficialReward s / batch | speedup | max difference (reward std) "
             "| reward hours per 100k-step cell, plain / ours |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} ({r['d']}) | {r['plain_s']:.3f} | {r['ours_s']:.3f} | **{r['speedup']:.1f}x** | "
              f"{r['max_abs_difference']:.1e} ({r['reward_scale']:.2f}) | {r['cell_hours_plain']:.1f} / {r['cell_hours_ours']:.1f} |"
              for name, r in rows.items()]
    (a.out / "official_reward.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
