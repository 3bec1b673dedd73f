"""Pre-training throughput: samples per second of ``score.fit`` (denoising score matching) at batch 1,024.

Run:  .venv/bin/python benchmarks/pretrain_throughput.py [--quick]     (also part of benchmarks/run_all.py)

Default ``ScoreConfig`` model (hidden 256, depth 1, time embedding 16), AdamW lr 5e-3 (the pipeline's
``PretrainConfig``), d = 17 (HalfCheetah) and d = 348 (Humanoid), on 20,000 standard-normal rows
(the compute does not depend on the values). One and two torch threads are measured side by side:
each round runs a chunk of fit steps with 1 thread, then the same with 2 threads (alternating which
goes first), continuing one optimizer per setting, so both see the same machine load. Reported:
median samples/s over rounds (= 1,024 x steps / s) and the time the default pretraining (2,000
steps) takes at that rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from smiling_pipeline.config import PretrainConfig, ScoreConfig  # noqa: E402
from smiling_pipeline.score import FitSettings, ScoreModel, fit  # noqa: E402

DIMS = (17, 348)
THREADS = (1, 2)


def run(quick: bool = False, log: Callable[[str], None] = print) -> dict:
    rounds, chunk = (3, 10) if quick else (8, 25)
    pcfg = PretrainConfig()
    rows = []
    for d in DIMS:
        x = np.random.default_rng(d).standard_normal((20_000, d)).astype(np.float32)
        models, opts, times = {}, {}, {n: [] for n in THREADS}
        for n in THREADS:
            torch.manual_seed(0)
            models[n] = ScoreModel(d, ScoreConfig(), x.mean(0), x.std(0))
            torch.set_num_threads(n)
            opts[n], _ = fit(models[n], x, FitSettings(steps=3, batch_size=pcfg.batch_size, lr=pcfg.lr), seed=0)  # warm-up
        for r in range(rounds):
            for n in (THREADS if r % 2 == 0 else THREADS[::-1]):
                torch.set_num_threads(n)
                settings = FitSettings(steps=chunk, batch_size=pcfg.batch_size, lr=pcfg.lr, eval_every=chunk)
                t0 = time.perf_counter()
                opts[n], _ = fit(models[n], x, settings, seed=r + 1, optimizer=opts[n])
                times[n].append((time.perf_counter() - t0) / chunk)
        for n in THREADS:
            step = statistics.median(times[n])
            row = {"d": d, "threads": n, "batch": pcfg.batch_size, "ms_per_step": step * 1e3,
                   "samples_per_s": pcfg.batch_size / step, "pretrain_seconds": pcfg.steps * step,
                   "rounds": rounds, "steps_per_round": chunk}
            rows.append(row)
            log(f"pretrain: d = {d:3d}, {n} thread(s): {row['ms_per_step']:.1f} ms/step, "
                f"{row['samples_per_s']:,.0f} samples/s, default pretraining ({pcfg.steps} steps) {row['pretrain_seconds']:.0f} s")
    torch.set_num_threads(1)
    return {"rows": rows, "pretrain_steps": pcfg.steps}


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
