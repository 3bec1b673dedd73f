"""Why the SMILING reward runs against Hopper's true reward early in a run: which half does it, on which states?

Run from the repository root on a train workdir whose checkpoint holds an early learner: the v1 Hopper SMILING cell
of sweeps/fidelity-stochastic.yaml stopped at 20k env steps (it retraces that cell's first 20k steps exactly), e.g.
  smiling-cli train --dataset smiling/hopper/expert-v1 --states-only --algorithm smiling --seed 0 --steps 20000 \
      --eval-every 5000 --eval-episodes 5 --checkpoint-every 20000 --threads 1 --workdir data/early/hopper-so
  .venv/bin/python studies/early_halves.py --workdir data/early/hopper-so --label hopper-so-s0-20k
-> reports/fidelity/halves/<label>.md and .json (--out to change). --with-actions, --algorithm dac and
--dataset smiling/walker2d/expert-v1 for the other cells; a finished 100k cell's workdir gives the late learner.

Issue 26: on Hopper the reward's correlation with the true step reward is negative over the first quarter of a run
(about 5k-30k env steps), and the per-half diagnostic (iterations.csv reward_true_corr_expert / _learner) puts it
on the expert half. The checkpoint's replay buffer holds the learner's episodes in order, so its newest rows (the
rows that diagnostic scores) can be scored with the checkpoint's own reward model, half by half, and set beside
what the true step reward itself rewards: forward velocity, and how long the hopper has left before it falls.
The true step reward is a yardstick for the reward only where a higher step reward means a better state to be in.
A DAC workdir works too (its discriminator reward, no halves), to set the two methods' early rewards side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smiling_pipeline import algorithms
from smiling_pipeline.algorithms.base import Context
from smiling_pipeline.checkpoint import load_state
from smiling_pipeline.config import load_params
from smiling_pipeline.envs import make_env
from smiling_pipeline.ingest import load_expert_data
from smiling_pipeline.pretrain import MODEL_FILE
from smiling_pipeline.rl import SmilingReplayBuffer, correlation, return_to_go
from smiling_pipeline.score import load_model

VELOCITY_INDEX = {"Hopper-v5": 5, "Walker2d-v5": 8, "HalfCheetah-v5": 8}  # qvel[0] (forward velocity) in v5 obs
ROWS = 2_048  # the newest rows, as the per-iteration diagnostic scores them
EDGE = 10  # steps counted as an episode's start, and as the last steps before a fall
FALL_BINS = ((100, 1_000), (30, 100), (10, 30), (0, 10))  # steps left before a fall, [lo, hi)


def episodes(dones: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its step within its episode, the steps left to the episode's end (NaN in the unfinished last
    episode) and whether the episode ended in a fall (a termination, not the time limit)."""
    n = len(dones)
    step, left, fell = np.zeros(n), np.full(n, np.nan), np.zeros(n, bool)
    start = 0
    for i in range(n):
        step[i] = i - start
        if dones[i]:
            left[start:i + 1] = np.arange(i - start, -1, -1)
            fell[start:i + 1] = not timeouts[i]
            start = i + 1
    return step, left, fell


def analyse(workdir: Path) -> dict[str, Any]:
    """Score the checkpoint's newest rows with its reward model, half by half, against what the true reward pays."""
    from stable_baselines3.common.save_util import load_from_pkl

    p = load_params(workdir / "params.yaml")
    data = load_expert_data(workdir / "ingest")
    spec = algorithms.get(p.train.algorithm)
    if spec.reward is None:
        raise SystemExit(f"{spec.label} has no reward model to score rows with")
    expert = load_model(workdir / "pretrain" / MODEL_FILE)[0] if spec.needs_expert_model else None
    checkpoint = workdir / "train" / "checkpoint"
    state = load_state(checkpoint)
    buffer: SmilingReplayBuffer = load_from_pkl(str(checkpoint / "replay_buffer.pkl"))
    env = make_env(data.meta, "training", p.train.termination)
    model = spec.reward(Context(p, data, expert, env, torch.device("cpu"), torch.float32))
    model.load_state_dict(state["reward_model"])
    buffer.reward_model = model
    filled = buffer.buffer_size if buffer.full else buffer.pos
    dones = buffer.dones[:filled, 0] > 0
    step, left, fell = episodes(dones, buffer.timeouts[:filled, 0] > 0)
    true = buffer.rewards[:filled, 0].astype(float)
    rtg = return_to_go(true, dones, p.train.gamma)  # discounted as the run's own diagnostic
    idx = np.arange(filled)[-ROWS:]
    rows = buffer.rows_at(idx)
    with torch.no_grad():
        halves = {f"{k} half": v.numpy().astype(float) for k, v in (model.halves(rows) or {}).items()}
        whole = sum(halves.values()) if halves else model.rewards(rows).numpy().astype(float)
    signals = {"reward": whole, **halves, "true step reward": true[idx]}
    targets = {"true step reward": true[idx], "forward velocity": buffer.observations[idx, 0, VELOCITY_INDEX[data.meta["env_id"]]],
               "steps left before the episode ends": left[idx], "discounted true return-to-go": rtg[idx]}
    finished = ~np.isnan(left[idx])
    corr = {s: {t: correlation(a[finished], b[finished]) for t, b in targets.items()} for s, a in signals.items()}
    upright = finished & ~(fell[idx] & (left[idx] < EDGE))  # the falls' last steps left out
    for s, a in signals.items():
        corr[s][f"true step reward, falls' last {EDGE} steps left out"] = correlation(a[upright], true[idx][upright])
    before_fall = {f"{lo}-{hi - 1} steps before a fall": fell[idx] & (left[idx] >= lo) & (left[idx] < hi) & (step[idx] >= EDGE)
                   for lo, hi in FALL_BINS}
    segments = {f"first {EDGE} steps of an episode": step[idx] < EDGE, **before_fall,
                "episodes cut by the time limit": finished & ~fell[idx] & (step[idx] >= EDGE)}
    z = {s: (a - a.mean()) / (a.std() + 1e-12) for s, a in signals.items()}  # segment means in each signal's own std
    means = {seg: {s: float(z[s][m].mean()) if m.any() else float("nan") for s in signals} | {"rows": int(m.sum())}
             for seg, m in segments.items()}
    ends = np.flatnonzero(dones[:filled])
    lengths = np.diff(np.concatenate([[-1], ends]))
    recent = lengths[np.searchsorted(ends, idx[0]):]
    return {"env_steps": int(state["curve"][-1]["env_steps"]) if state["curve"] else filled,
            "algorithm": spec.label, "dataset": data.meta["dataset_id"], "with_actions": bool(data.meta["with_actions"]),
            "rows": int(len(idx)), "finished_rows": int(finished.sum()),
            "episode_length_mean": float(recent.mean()) if len(recent) else float("nan"),
            "episodes": int(len(recent)), "correlation": corr, "segment_means": means}


def write(result: dict[str, Any], out: Path, label: str, command: str) -> Path:
    """The result as <label>.json and a markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(result, indent=1))
    corr, means = result["correlation"], result["segment_means"]
    targets = list(next(iter(corr.values())))
    lines = [f"# Early-learner halves: {label}", "", f"Command: `{command}`", "",
             f"{result['algorithm']} on {result['dataset']} ({'state-action' if result['with_actions'] else 'state-only'}), checkpoint at "
             f"{result['env_steps']:,} env steps; the newest {result['rows']:,} rows of its replay buffer "
             f"({result['finished_rows']:,} in finished episodes; {result['episodes']} episodes ending there, mean length "
             f"{result['episode_length_mean']:.0f} steps), scored with the checkpoint's own reward model.", "",
             "Pearson correlation over the rows of finished episodes:", "",
             "| signal | " + " | ".join(targets) + " |", "|---|" + "---:|" * len(targets)]
    lines += [f"| {s} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |" for s, row in corr.items()]
    signals = list(corr)
    lines += ["", "Mean of each signal by where the row lies in its episode (rows past an episode's first steps, by how many steps "
              "are left before it falls), in that signal's std over all rows:", "",
              "| rows | count | " + " | ".join(signals) + " |", "|---|---:|" + "---:|" * len(signals)]
    lines += [f"| {seg} | {m['rows']} | " + " | ".join(f"{m[s]:+.2f}" for s in signals) + " |" for seg, m in means.items()]
    path = out / f"{label}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a train workdir with params.yaml, ingest/, pretrain/, train/checkpoint/")
    ap.add_argument("--label", required=True)
    ap.add_argument("--out", type=Path, default=Path("reports/fidelity/halves"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    command = f".venv/bin/python studies/early_halves.py --workdir {a.workdir} --label {a.label} --out {a.out}"
    print(write(analyse(a.workdir), a.out, a.label, command).read_text())


if __name__ == "__main__":
    main()
