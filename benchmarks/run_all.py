"""All benchmarks in one command; results go to ``reports/benchmarks/`` (markdown, JSON, plot).

Run:  make bench        (= .venv/bin/python benchmarks/run_all.py)
      .venv/bin/python benchmarks/run_all.py --quick --only overhead,pretrain    (smoke run, a subset)

Each benchmark measures its figures side by side in one run (see each script's docstring):
``training_overhead.py`` (SMILING vs SAC env steps/s), ``cost_estimator.py`` (accuracy and speed of
the reward estimator, its own report ``reports/cost_estimator.md``), ``pretrain_throughput.py``,
``ingest_scale.py`` (1M x 348 Minari dataset) and ``scaling.py`` (time vs observation dimension and K).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import ingest_scale  # noqa: E402
import pretrain_throughput  # noqa: E402
import scaling  # noqa: E402
import training_overhead  # noqa: E402

NAMES = ("overhead", "pretrain", "ingest", "scaling", "cost")


def overhead_table(res: dict[str, Any]) -> list[str]:
    lines = [f"Target: SMILING/SAC wall-time ratio <= {res['target_ratio']}. Median over {res['rows'][0]['repeats']} "
             "repeat(s); prefill = replay-buffer rows before the timed window (late in a long run).", "",
             "| env | net | prefill | SAC steps/s | SMILING steps/s | ratio | reward share | refit share | meets |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['env']} | {'x'.join(map(str, r['net']))} | {r['prefill']:,} | {r['sac_steps_per_s']:.0f} | "
                     f"{r['smiling_steps_per_s']:.0f} | **{r['ratio']:.2f}** | {r['smiling_reward_share']:.0%} | "
                     f"{r['smiling_refit_share']:.0%} | {'yes' if r['meets_target'] else 'no'} |")
    return lines


def pretrain_table(res: dict[str, Any]) -> list[str]:
    lines = ["| d | threads | ms/step (batch 1,024) | samples/s | default pretraining |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['d']} | {r['threads']} | {r['ms_per_step']:.1f} | {r['samples_per_s']:,.0f} | "
              f"{r['pretrain_seconds']:.0f} s |" for r in res["rows"]]
    return lines


def ingest_table(res: dict[str, Any]) -> list[str]:
    sizes = res["array_sizes"]
    lines = [f"Dataset: {res['episodes']} episodes x {res['steps_per_episode']} steps = {res['steps']:,} steps, "
             f"observations {res['obs_dim']}-dim float64 ({sizes['float64_mb']:,.0f} MiB; float32 "
             f"{sizes['float32_mb']:,.0f} MiB), made with Minari in {res['make_seconds']:.0f} s, "
             f"{res['disk_gib']:.2f} GiB on disk. Target: <= 60 s and peak RSS <= 2x the float64 array.", "",
             "| implementation | num_states | seconds | peak RSS MiB | peak / float64 array | meets |",
             "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r['impl']} | {r['num_states'] or 'all'} | {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} | "
              f"{r['peak_over_float64']:.2f} | {'yes' if r['meets_target'] else 'no'} |" for r in res["runs"]]
    return lines


def scaling_table(res: dict[str, Any]) -> list[str]:
    lines = ["| env | obs dim | SAC s / 1k steps | SMILING s / 1k steps | of which reward | of which refit | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['env']} | {r['obs_dim']} | {r['sac_s_per_1k']:.1f} | {r['smiling_s_per_1k']:.1f} | "
              f"{r['reward_s_per_1k']:.1f} | {r['refit_s_per_1k']:.1f} | {r['ratio']:.2f} |" for r in res["dimension"]]
    lines += ["", "| K (Hopper-v5) | SMILING s / 1k steps | of which reward | ratio to SAC |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['k']} | {r['smiling_s_per_1k']:.1f} | {r['reward_s_per_1k']:.1f} | {r['ratio']:.2f} |"
              for r in res["k"]]
    return lines + ["", "![scaling](scaling.png)"]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repeat")
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = ap.parse_args(argv)
    only = args.only.split(",")
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpu": platform.processor(),
                                           "quick": args.quick}}
    sections: list[str] = []
    if "overhead" in only:
        results["overhead"] = training_overhead.run(args.quick)
        sections += ["## Training overhead: SMILING vs SAC on the true reward", "", *overhead_table(results["overhead"]), ""]
    if "pretrain" in only:
        results["pretrain"] = pretrain_throughput.run(args.quick)
        sections += ["## Pre-training throughput", "", *pretrain_table(results["pretrain"]), ""]
    if "ingest" in only:
        results["ingest"] = ingest_scale.bench(args.quick)
        sections += ["## Ingestion at scale", "", *ingest_table(results["ingest"]), ""]
    if "scaling" in only:
        results["scaling"] = scaling.run(args.quick, plot=out / "scaling.png")
        sections += ["## Scaling with observation dimension and K", "", *scaling_table(results["scaling"]), ""]
    if "cost" in only:
        cmd = [sys.executable, str(HERE / "cost_estimator.py"), "--out", str(ROOT / "reports")]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)
        sections += ["## Cost estimator", "", "See [../cost_estimator.md](../cost_estimator.md).", ""]
    minutes = (time.time() - started) / 60
    head = ["# Benchmarks", "", f"`.venv/bin/python benchmarks/run_all.py{' --quick' if args.quick else ''}"
            f"{'' if args.only == ','.join(NAMES) else ' --only ' + args.only}` ({minutes:.0f} min on this machine: "
            "2 CPU cores, no GPU, one torch thread).", ""]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "README.md").write_text("\n".join(head + sections))
    print(f"benchmarks written to {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
