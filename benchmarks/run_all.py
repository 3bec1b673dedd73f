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

import cost_report  # noqa: E402
import ingest_scale  # noqa: E402
import pretrain_throughput  # noqa: E402
import scaling  # noqa: E402
import training_overhead  # noqa: E402

NAMES = ("overhead", "pretrain", "ingest", "scaling", "cost")


def overhead_table(res: dict[str, Any]) -> list[str]:
    precision = res.get("precision", "float32")
    f32 = precision != "float32"
    lines = [f"Target: SMILING/SAC wall-time ratio <= {res['target_ratio']}. Median over {res['rows'][0]['repeats']} "
             f"repeat(s); prefill = replay-buffer rows before the timed window (late in a long run). SMILING runs "
             f"the default `runtime.precision: auto`, here {precision}"
             + (" (score-model matmuls, for inputs of d >= 32; below, it computes exactly what float32 does; "
                "*float32 ratio*: SMILING in float32, in the same lockstep)." if f32 else "."), "",
             "| env | net | prefill | SAC steps/s | SMILING steps/s | ratio | reward share | refit share | meets |"
             + (" float32 ratio |" if f32 else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if f32 else "")]
    for r in res["rows"]:
        lines.append(f"| {r['env']} | {'x'.join(map(str, r['net']))} | {r['prefill']:,} | {r['sac_steps_per_s']:.0f} | "
                     f"{r['smiling_steps_per_s']:.0f} | **{r['ratio']:.2f}** | {r['smiling_reward_share']:.0%} | "
                     f"{r['smiling_refit_share']:.0%} | {'yes' if r['meets_target'] else 'no'} |"
                     + ((f" {r['ratio_float32']:.2f} |" if r["ratio_float32"] else " (same) |") if f32 else ""))
    return lines


def pretrain_table(res: dict[str, Any]) -> list[str]:
    lines = ["| d | threads | dtype | ms/step (batch 1,024) | samples/s | default pretraining |",
             "|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['d']} | {r['threads']} | {r['dtype']} | {r['ms_per_step']:.1f} | {r['samples_per_s']:,.0f} | "
              f"{r['pretrain_seconds']:.0f} s |" for r in res["rows"]]
    lines += ["", "Fit quality (same initial weights, float32 validation loss after the fit; seeds 0 / 1):", "",
              "| env | d | steps | float32 | bfloat16 | bfloat16 - float32 | float32 seed 1 - seed 0 |",
              "|---|---:|---:|---|---|---|---:|"]
    for q in res.get("quality", []):
        f32, b16 = q["val_loss"]["float32"], q["val_loss"]["bfloat16"]
        lines.append(f"| {q['env']} | {q['d']} | {q['steps']} | {f32[0]:.4f} / {f32[1]:.4f} | {b16[0]:.4f} / {b16[1]:.4f} | "
                     f"{' / '.join(f'{x:+.4f}' for x in q['bf16_minus_fp32'])} | {q['fp32_seed_difference']:+.4f} |")
    return lines


def ingest_table(res: dict[str, Any]) -> list[str]:
    sizes = res["array_sizes"]
    lines = [f"Dataset: {res['episodes']} episodes x {res['steps_per_episode']} steps = {res['steps']:,} steps, "
             f"observations {res['obs_dim']}-dim float64 ({sizes['float64_mb']:,.0f} MiB; float32 "
             f"{sizes['float32_mb']:,.0f} MiB), made with Minari in {res['make_seconds']:.0f} s, "
             f"{res['disk_gib']:.2f} GiB on disk. Target: <= 60 s and peak RSS <= 2x the float64 array.", "",
             "| num_states | seconds | peak RSS MiB | peak / float64 array | meets |",
             "|---|---:|---:|---:|---|"]
    runs = [r for r in res["runs"] if r.get("impl", "current") == "current"]  # results saved before may hold others
    lines += [f"| {r['num_states'] or 'all'} | {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} | "
              f"{r['peak_over_float64']:.2f} | {'yes' if r['meets_target'] else 'no'} |" for r in runs]
    return lines


def scaling_table(res: dict[str, Any]) -> list[str]:
    lines = ["| env | obs dim | SAC s / 1k steps | SMILING s / 1k steps | of which reward | of which refit | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['env']} | {r['obs_dim']} | {r['sac_s_per_1k']:.1f} | {r['smiling_s_per_1k']:.1f} | "
              f"{r['reward_s_per_1k']:.1f} | {r['refit_s_per_1k']:.1f} | {r['ratio']:.2f} |" for r in res["dimension"]]
    lines += ["", "| K (Hopper-v5, 50k rows in the buffer) | SMILING s / 1k steps | of which reward | ratio to SAC |",
              "|---:|---:|---:|---:|"]
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
    saved = out / "results.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}  # others stay as they were
    runs = results.setdefault("runs", {})
    for name in (n for n in NAMES if n in only):
        started = time.time()
        results[name] = BENCHMARKS[name](args.quick, out)
        runs[name] = {"minutes": round((time.time() - started) / 60, 1), "quick": args.quick,
                      "date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version()}
        saved.write_text(json.dumps(results, indent=2, default=str))
    lines = ["# Benchmarks", "", "`make bench` (= `.venv/bin/python benchmarks/run_all.py`; `--only NAME,...` re-runs "
             "some and keeps the others). This machine: 2 CPU cores, no GPU, one torch thread.", ""]
    for name in (n for n in NAMES if n in results):
        run = runs.get(name, {})
        lines += [f"## {TITLES[name]}", "", f"_{run.get('date', '?')}, {run.get('minutes', '?')} min"
                  f"{', quick settings' if run.get('quick') else ''}._", "", *TABLES[name](results[name]), ""]
    (out / "README.md").write_text("\n".join(lines))
    print(f"benchmarks written to {out / 'README.md'}")
    return 0


def _cost(quick: bool, out: Path) -> dict[str, Any]:
    """The estimator benchmark (its own process: one torch thread) writes reports/cost_estimator[_quick].json;
    cost_report.py renders it to the .md next to it, which the benchmarks README links to."""
    reports = ROOT / "reports"
    subprocess.run([sys.executable, str(HERE / "cost_estimator.py"), "--out", str(reports), "--no-report"]
                   + (["--quick"] if quick else []), check=True)
    md = cost_report.write_report(reports / f"cost_estimator{'_quick' if quick else ''}.json")
    return {"report": f"../{md.name}"}


BENCHMARKS = {
    "overhead": lambda quick, out: training_overhead.run(quick),
    "pretrain": lambda quick, out: pretrain_throughput.run(quick),
    "ingest": lambda quick, out: ingest_scale.bench(quick),
    "scaling": lambda quick, out: scaling.run(quick, plot=out / "scaling.png"),
    "cost": _cost,
}
TITLES = {"overhead": "Training overhead: SMILING vs SAC on the true reward", "pretrain": "Pre-training throughput",
          "ingest": "Ingestion at scale", "scaling": "Scaling with observation dimension and K",
          "cost": "Cost estimator"}
TABLES = {"overhead": overhead_table, "pretrain": pretrain_table, "ingest": ingest_table, "scaling": scaling_table,
          "cost": lambda res: [f"Accuracy and speed against the official K=500 computation: see [{res['report']}]"
                               f"({res['report']})."]}


if __name__ == "__main__":
    sys.exit(main())
