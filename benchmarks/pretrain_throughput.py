"""Pre-training throughput: samples per second of ``score.fit`` (denoising score matching) at batch 1,024,
in float32 and in bfloat16 mixed precision, and what bfloat16 does to the fitted model.

Run:  .venv/bin/python benchmarks/pretrain_throughput.py [--quick]     (also part of benchmarks/run_all.py)

Default ``ScoreConfig`` model (hidden 256, depth 1, time embedding 16), AdamW lr 5e-3 (the pipeline's
``PretrainConfig``), d = 17 (HalfCheetah) and d = 348 (Humanoid).

- **Throughput**, on 20,000 standard-normal rows (the compute does not depend on the values): one
  thread float32, two threads float32, and for d >= ``score.NARROW_MIN_DIM`` one thread bfloat16
  (``FitSettings.dtype``: forward passes under autocast, what ``runtime.precision: auto`` picks on a
  CPU with AVX512-BF16 or AMX; below that dimension fitting stays float32: autocast was slower), measured
  side by side: each round runs a chunk of fit steps per setting (rotating which goes first),
  continuing one optimizer per setting, so all see the same machine load. Reported: median
  samples/s over rounds (= 1,024 x steps / s) and the time the default pretraining (2,000 steps)
  takes at that rate.
- **Fit quality** (d >= ``NARROW_MIN_DIM``), on real states (seeded rollouts of uniform random actions, 80/20 train/validation
  split): the same initial weights fitted in float32 and in bfloat16 for two seeds each; reported:
  float32 validation loss (fixed noise draw) after the fit. The bfloat16 - float32 difference is
  compared with the seed-to-seed difference of float32 itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smiling_pipeline.config import PretrainConfig, ScoreConfig  # noqa: E402
from smiling_pipeline.runtime import dtype_name  # noqa: E402
from smiling_pipeline.score import NARROW_MIN_DIM, FitSettings, ScoreModel, evaluate_loss, fit  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from cost_estimator import collect_states  # noqa: E402  (seeded uniform-random rollouts)

DIMS = {17: "HalfCheetah-v5", 348: "Humanoid-v5"}
SETTINGS = ((1, torch.float32), (2, torch.float32), (1, torch.bfloat16))  # (torch threads, fit dtype)


def throughput(d: int, rounds: int, chunk: int, log: Callable[[str], None]) -> list[dict]:
    """Fit steps per second of each (threads, dtype) setting, measured in rotating rounds."""
    pcfg = PretrainConfig()
    x = np.random.default_rng(d).standard_normal((20_000, d)).astype(np.float32)
    measured = tuple(s for s in SETTINGS if s[1] == torch.float32 or d >= NARROW_MIN_DIM)
    models, opts, times = {}, {}, {s: [] for s in measured}
    for n, dtype in measured:
        torch.manual_seed(0)
        models[n, dtype] = ScoreModel(d, ScoreConfig(), x.mean(0), x.std(0))
        torch.set_num_threads(n)
        opts[n, dtype], _ = fit(models[n, dtype], x, FitSettings(steps=3, batch_size=pcfg.batch_size, lr=pcfg.lr, dtype=dtype),
                                seed=0)  # warm-up
    for r in range(rounds):
        for n, dtype in measured[r % len(measured):] + measured[: r % len(measured)]:
            torch.set_num_threads(n)
            settings = FitSettings(steps=chunk, batch_size=pcfg.batch_size, lr=pcfg.lr, eval_every=chunk, dtype=dtype)
            t0 = time.perf_counter()
            opts[n, dtype], _ = fit(models[n, dtype], x, settings, seed=r + 1, optimizer=opts[n, dtype])
            times[n, dtype].append((time.perf_counter() - t0) / chunk)
    torch.set_num_threads(1)
    rows = []
    for n, dtype in measured:
        step = statistics.median(times[n, dtype])
        row = {"d": d, "threads": n, "dtype": dtype_name(dtype), "batch": pcfg.batch_size, "ms_per_step": step * 1e3,
               "samples_per_s": pcfg.batch_size / step, "pretrain_seconds": pcfg.steps * step,
               "rounds": rounds, "steps_per_round": chunk}
        rows.append(row)
        log(f"pretrain: d = {d:3d}, {n} thread(s) {row['dtype']}: {row['ms_per_step']:.1f} ms/step, "
            f"{row['samples_per_s']:,.0f} samples/s, default pretraining ({pcfg.steps} steps) {row['pretrain_seconds']:.0f} s")
    return rows


def fit_quality(d: int, steps: int, log: Callable[[str], None]) -> dict:
    """Validation loss after fitting the same initial weights in float32 and bfloat16, two seeds each."""
    pcfg = PretrainConfig()
    states = collect_states(DIMS[d], 6_000, 1.0, seed=d, episode_len=200)
    train, val = states[:4_800], torch.as_tensor(states[4_800:])
    losses: dict[str, list[float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        for seed in (0, 1):
            torch.manual_seed(seed)
            model = ScoreModel(d, ScoreConfig(), train.mean(0), train.std(0))
            fit(model, train, FitSettings(steps=steps, batch_size=pcfg.batch_size, lr=pcfg.lr, eval_every=steps, dtype=dtype),
                seed=seed)
            losses.setdefault(dtype_name(dtype), []).append(evaluate_loss(model, val))
    f32, b16 = losses["float32"], losses["bfloat16"]
    row = {"d": d, "env": DIMS[d], "steps": steps, "val_loss": losses,
           "bf16_minus_fp32": [b - f for b, f in zip(b16, f32, strict=True)], "fp32_seed_difference": f32[1] - f32[0]}
    log(f"fit quality: d = {d:3d} ({DIMS[d]}), {steps} steps: validation loss float32 {f32[0]:.4f} / {f32[1]:.4f}, "
        f"bfloat16 {b16[0]:.4f} / {b16[1]:.4f} (seeds 0 / 1)")
    return row


def run(quick: bool = False, log: Callable[[str], None] = print) -> dict:
    rounds, chunk, steps = (3, 10, 100) if quick else (9, 25, 600)
    rows = [row for d in DIMS for row in throughput(d, rounds, chunk, log)]
    quality = [fit_quality(d, steps, log) for d in DIMS if d >= NARROW_MIN_DIM]
    return {"rows": rows, "quality": quality, "pretrain_steps": PretrainConfig().steps}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    res = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
