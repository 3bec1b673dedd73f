"""Scaling: how SMILING training time grows with observation dimension and with the estimator's K.

Run:  .venv/bin/python benchmarks/scaling.py [--quick]        (also part of benchmarks/run_all.py)

Same lockstep harness as ``training_overhead.py`` (SAC on the true reward and SMILING, one torch
thread, 64x64 networks, timed env steps after ``learning_starts`` including the refits):
- **dimension**: real MuJoCo envs of growing observation size, InvertedPendulum (4), Hopper (11),
  HalfCheetah (17), Ant (105), Humanoid (348);
- **K**: the number of diffusion timesteps the estimator draws (once per run; ``cost.timesteps``), on
  Hopper-v5, from 8 to 256 (the official implementation draws 500 per state), with the replay
  buffer pre-filled with 50,000 rows: K only matters once many distinct rows are sampled per
  iteration (late in a run); early on the per-row reward cache hides it.
Writes ``scaling.png`` (two panels: seconds per 1,000 env steps, SMILING split into reward / refit /
the rest) and returns the rows for ``run_all.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_overhead import Learner, RunResult, expert_model, lockstep, make_env  # noqa: E402

DIM_ENVS = ("InvertedPendulum-v5", "Hopper-v5", "HalfCheetah-v5", "Ant-v5", "Humanoid-v5")
KS = (8, 16, 32, 64, 128, 256)
NET = (64, 64)
K_PREFILL = 50_000


def _pair(env_id: str, steps: int, expert: tuple[Any, Any], k: Optional[int] = None,
          prefill: int = 0) -> tuple[RunResult, RunResult]:
    pair = [Learner(algo, env_id, NET, 0, steps, expert[0], expert[1], prefill=prefill, k=k)
            for algo in ("sac", "smiling")]
    lockstep(pair, steps, 250)
    sac, smi = (ln.close() for ln in pair)
    return sac, smi


def _row(sac: RunResult, smi: RunResult, **extra: Any) -> dict[str, Any]:
    per_k = 1000.0 / smi.steps
    return {**extra, "sac_s_per_1k": sac.seconds * per_k, "smiling_s_per_1k": smi.seconds * per_k,
            "reward_s_per_1k": smi.reward_seconds * per_k, "refit_s_per_1k": smi.refit_seconds * per_k,
            "ratio": smi.seconds / sac.seconds}


def run(quick: bool = False, log: Callable[[str], None] = print, plot: Optional[Path] = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    steps = 500 if quick else 1500
    dims, ks = [], []
    for env_id in DIM_ENVS[:3] if quick else DIM_ENVS:
        d = make_env(env_id).observation_space.shape[0]
        row = _row(*_pair(env_id, steps, expert_model(env_id)), env=env_id, obs_dim=d)
        dims.append(row)
        log(f"scaling: {env_id:20s} d={d:3d}: SAC {row['sac_s_per_1k']:5.1f} s, SMILING {row['smiling_s_per_1k']:5.1f} s "
            f"per 1k steps (reward {row['reward_s_per_1k']:.1f}, refit {row['refit_s_per_1k']:.1f}), ratio {row['ratio']:.2f}")
    expert = expert_model("Hopper-v5")
    for k in KS[:3] if quick else KS:
        row = _row(*_pair("Hopper-v5", steps, expert, k=k, prefill=K_PREFILL), k=k)
        ks.append(row)
        log(f"scaling: Hopper-v5 K={k:3d}: SMILING {row['smiling_s_per_1k']:5.1f} s per 1k steps "
            f"(reward {row['reward_s_per_1k']:.1f}), ratio {row['ratio']:.2f}")
    if plot:
        draw(plot, dims, ks)
    return {"steps": steps, "net": list(NET), "dimension": dims, "k": ks}


def draw(path: Path, dims: list[dict[str, Any]], ks: list[dict[str, Any]]) -> None:
    """Two panels: seconds per 1,000 env steps against observation dimension and against K."""
    from smiling_pipeline.report import plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for ax, rows, x, xlabel in ((axes[0], dims, "obs_dim", "observation dimension (env)"),
                                (axes[1], ks, "k", f"estimator timesteps K (Hopper-v5, {K_PREFILL:,} rows in the buffer)")):
        xs = [r[x] for r in rows]
        ax.plot(xs, [r["sac_s_per_1k"] for r in rows], "o-", label="SAC, true reward")
        ax.plot(xs, [r["smiling_s_per_1k"] for r in rows], "o-", label="SMILING, total")
        ax.plot(xs, [r["reward_s_per_1k"] for r in rows], "s--", label="SMILING: reward evaluation")
        ax.plot(xs, [r["refit_s_per_1k"] for r in rows], "^--", label="SMILING: learner refit")
        ax.set(xscale="log", xlabel=xlabel, ylabel="seconds per 1,000 env steps")
        ax.grid(alpha=0.3)
    for r in dims:
        axes[0].annotate(r["env"].split("-")[0], (r["obs_dim"], r["smiling_s_per_1k"]), fontsize=7,
                         textcoords="offset points", xytext=(3, 4))
    axes[0].legend(fontsize=8)
    fig.suptitle("SMILING training time scaling (64x64 nets, 1 torch thread, batch 256, 1 update per step)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", default="reports/benchmarks/scaling.png")
    args = ap.parse_args(argv)
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    res = run(args.quick, plot=Path(args.plot))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
