"""Ingestion at scale: a 1,000,000-step Minari dataset with 348-dim observations, ingested with ``ingest()``.

Run:  .venv/bin/python benchmarks/ingest_scale.py             (full: 1000 episodes x 1000 steps)
      .venv/bin/python benchmarks/ingest_scale.py --quick     (100 episodes x 1000 steps)
      (also part of ``benchmarks/run_all.py``)

The dataset is made locally in a temporary ``MINARI_DATASETS_PATH`` with Minari's own API
(``minari.create_dataset_from_buffers``, default HDF5 storage, Humanoid-v5 env spec), from
``EpisodeBuffer``s holding *synthetic* arrays shaped like Humanoid: observations (1001, 348) and
actions (1000, 17) float64 per episode, standard-normal values, random rewards. Recording 1M real
Humanoid steps with ``DataCollector`` takes far too long on this machine; ingestion does not care
what the numbers are, only how many there are.

Each measurement runs ``ingest()`` in a fresh subprocess (``--worker``), which reports its wall time,
its own peak RSS (``VmHWM`` of ``/proc/self/status``: the kernel's high-water mark, so nothing is
missed between polls) and its RSS after the imports (the baseline the interpreter needs anyway).
Not ``getrusage(...).ru_maxrss``: Linux carries the parent's high-water mark into a child across
``vfork``/``exec``, so a child of a big parent would report the parent's peak.

Two ingests of the same dataset: every state (``num_states`` = all) and a 5,000-state subsample.
Each run reports seconds, peak RSS, its ratio to the float64 and float32 observation arrays, and
whether it meets the target (<= 60 s and peak RSS <= 2x the float64 array).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASET_ID = "bench/humanoid/synthetic-v0"
OBS_DIM, ACT_DIM = 348, 17
TARGET_SECONDS = 60.0
TARGET_MEMORY_FACTOR = 2.0


def episodes(n_episodes: int, steps: int, seed: int) -> Iterator[Any]:
    """Synthetic Humanoid-shaped episodes, generated one at a time (the maker never holds the dataset)."""
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(seed)
    for ep in range(n_episodes):
        yield EpisodeBuffer(
            id=ep,
            seed=seed + ep,
            observations=rng.standard_normal((steps + 1, OBS_DIM)),
            actions=rng.uniform(-0.4, 0.4, (steps, ACT_DIM)),
            rewards=rng.normal(5.0, 1.0, steps),
            terminations=np.zeros(steps, dtype=bool),
            truncations=np.r_[np.zeros(steps - 1, dtype=bool), True],
        )


def make_dataset(root: Path, n_episodes: int, steps: int, seed: int = 0) -> float:
    """Write the synthetic dataset into store ``root`` with Minari's API; returns the seconds it took."""
    import minari

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id=DATASET_ID,
            buffer=episodes(n_episodes, steps, seed),  # any iterable of EpisodeBuffer: written one by one
            env="Humanoid-v5",
            algorithm_name="synthetic (benchmark)",
            author="smiling_pipeline benchmarks",
            code_permalink="benchmarks/ingest_scale.py",
            author_email="-",
            ref_min_score=0.0,
            ref_max_score=5000.0,
            description=f"{n_episodes} synthetic Humanoid-shaped episodes of {steps} steps",
        )
    return time.perf_counter() - t0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        line = next(row for row in f if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def worker(args: argparse.Namespace) -> int:
    """Run one ``ingest()`` in this (fresh) process and print a JSON line with time and memory."""
    os.environ["MINARI_DATASETS_PATH"] = args.root
    os.environ["TQDM_DISABLE"] = "1"
    import gymnasium as gym

    from smiling_pipeline.config import IngestConfig
    from smiling_pipeline.ingest import ingest

    with warnings.catch_warnings():  # import what check_against_env loads (MuJoCo), so the baseline holds it
        warnings.simplefilter("ignore")
        gym.make("Humanoid-v5").close()
    base = _rss_mb()
    cfg = IngestConfig(dataset=DATASET_ID, num_states=None if args.num_states == 0 else args.num_states)
    out = Path(args.out)
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    meta = ingest(cfg, out)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    peak = _peak_rss_mb()
    result = {"num_states": cfg.num_states, "seconds": wall, "peak_rss_mb": peak,
              "baseline_rss_mb": base, "content_hash": meta["content_hash"], "train_rows": meta["train_rows"],
              "val_rows": meta["val_rows"], "states_available": meta["states_available"],
              "npz_mb": (out / "expert.npz").stat().st_size / 2**20}
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
        result["profile"] = s.getvalue()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_worker(root: Path, num_states: Optional[int], out: Path, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--root", str(root),
           "--num-states", str(num_states or 0), "--out", str(out)] + (["--profile"] if profile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    line = next(row for row in proc.stdout.splitlines() if row.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def bench(quick: bool, keep: Optional[Path] = None, log=print, profile: bool = False) -> dict:
    """Make the dataset, then ingest it with every ``num_states`` in turn; returns the results."""
    n_episodes, steps = (100, 1000) if quick else (1000, 1000)
    tmp = tempfile.TemporaryDirectory(prefix="smiling-ingest-bench-", dir=keep)
    try:
        root = Path(tmp.name)
        made = make_dataset(root / "store", n_episodes, steps)
        disk = sum(p.stat().st_size for p in (root / "store").rglob("*") if p.is_file())
        log(f"ingest: made {n_episodes} x {steps} steps (obs {OBS_DIM}, act {ACT_DIM}) with Minari in {made:.0f} s, "
            f"{disk / 2**30:.2f} GiB on disk")
        n_steps = n_episodes * steps
        sizes = {"float64_mb": n_steps * OBS_DIM * 8 / 2**20, "float32_mb": n_steps * OBS_DIM * 4 / 2**20}
        runs = []
        for num_states in (None, 5_000):
            r = run_worker(root / "store", num_states, root / f"out-{num_states}" / "ingest", profile=profile)
            runs.append(r)
            log(f"ingest: num_states={str(num_states):5s} {r['seconds']:6.1f} s, peak RSS "
                f"{r['peak_rss_mb']:,.0f} MiB (after imports {r['baseline_rss_mb']:,.0f} MiB)")
            if profile:
                log(r["profile"])
        for r in runs:
            r["peak_over_float64"] = r["peak_rss_mb"] / sizes["float64_mb"]
            r["peak_over_float32"] = r["peak_rss_mb"] / sizes["float32_mb"]
            r["meets_target"] = r["seconds"] <= TARGET_SECONDS and r["peak_over_float64"] <= TARGET_MEMORY_FACTOR
        return {"episodes": n_episodes, "steps_per_episode": steps, "steps": n_steps, "obs_dim": OBS_DIM,
                "act_dim": ACT_DIM, "make_seconds": made, "disk_gib": disk / 2**30, "array_sizes": sizes,
                "storage": "hdf5 (Minari default)", "runs": runs}
    finally:
        tmp.cleanup()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 episodes instead of 1000")
    ap.add_argument("--profile", action="store_true", help="cProfile each ingest and print the top functions")
    ap.add_argument("--tmp", help="parent folder for the temporary store (default: system temp)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--num-states", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    res = bench(args.quick, keep=Path(args.tmp) if args.tmp else None, profile=args.profile)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
