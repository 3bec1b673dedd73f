"""A run's first env steps window by window: does the official reward run against Hopper's step reward early on,
as the fast reward does?

Run from the repository root on committed sweep cells:
  .venv/bin/python studies/early_windows.py --cells reports/fidelity/official-cells --cells reports/fidelity/halves-cells \
      --until 20000 --window 5000 --out reports/fidelity/official-early.md
(--name-prefix fidh-hopper-smiling-so to pick cells; every cell of the folders otherwise, the DAC ones included.)

Issue 26: the reward's correlation with the true step reward is negative over the first quarter of a Hopper run with
the fast reward, and the per-half diagnostic puts it on the expert half. The official reward's own cell
(sweeps/fidelity-official-early.yaml) covers only that early stretch, so the runs are read side by side over the
same windows of env steps: the per-iteration diagnostics (iterations.csv: the reward against the step reward, each
half against it, the reward against the discounted true return-to-go) averaged over the iterations that end in a
window, and the evaluation at the window's end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from smiling_pipeline.compare import HALVES, RETURN_TO_GO, RunCurve, load_cells

COLUMNS = {"reward_true_corr": "reward vs step reward", **HALVES, **RETURN_TO_GO}


def window_mean(points: tuple[tuple[int, float], ...], lo: int, hi: int) -> float:
    """Mean of the defined values recorded at env steps in (lo, hi]; NaN where there are none."""
    values = [v for s, v in points if lo < s <= hi and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def evaluation_at(run: RunCurve, step: int) -> float:
    """The normalized return evaluated at ``step`` (NaN if the run has no evaluation there)."""
    return dict(zip(run.steps, run.returns, strict=True)).get(step, float("nan"))


def window_values(run: RunCurve, lo: int, hi: int) -> list[float]:
    """Each diagnostic's mean over the window (lo, hi], then the evaluation at its end."""
    return [window_mean(run.diagnostics.get(k, ()), lo, hi) for k in COLUMNS] + [evaluation_at(run, hi)]


def cells(values: list[float]) -> str:
    """The diagnostics signed (blank where undefined), then the evaluation."""
    return " | ".join("" if np.isnan(m) else f"{m:+.2f}" for m in values[:-1]) + f" | {values[-1]:.2f} |"


def windows(until: int, window: int) -> list[tuple[int, int, str]]:
    """The windows (lo, hi] up to ``until`` and their names."""
    return [(lo, lo + window, f"{lo // 1000}k-{(lo + window) // 1000}k") for lo in range(0, until, window)]


def table(runs: list[RunCurve], until: int, window: int) -> list[str]:
    """One row per run and window: each diagnostic's window mean and the evaluation at the window's end."""
    lines = ["| cell | method | env steps | " + " | ".join(COLUMNS.values()) + " | normalized return at the end |",
             "|---|---|---|" + "---:|" * (len(COLUMNS) + 1)]
    for run in sorted(runs, key=lambda r: r.name):
        lines += [f"| {run.name} | {run.label} | {name} | " + cells(window_values(run, lo, hi))
                  for lo, hi, name in windows(until, window)]
    return lines


def summary(runs: list[RunCurve], until: int, window: int) -> list[str]:
    """One row per (dataset, variant, method) and window: each run's window values averaged over the runs that have one."""
    groups: dict[tuple[str, str, str], list[RunCurve]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.variant, run.label), []).append(run)
    lines = ["| dataset | variant | method | seeds | env steps | " + " | ".join(COLUMNS.values())
             + " | normalized return at the end |", "|---|---|---|---:|---|" + "---:|" * (len(COLUMNS) + 1)]
    for (dataset, variant, label), group in sorted(groups.items()):
        for lo, hi, name in windows(until, window):
            values = np.array([window_values(r, lo, hi) for r in group])
            means = [float(np.mean(c[np.isfinite(c)])) if np.isfinite(c).any() else float("nan") for c in values.T]
            lines.append(f"| {dataset} | {variant} | {label} | {len(group)} | {name} | " + cells(means))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, action="append", required=True, help="a folder of committed sweep cells (repeatable)")
    ap.add_argument("--name-prefix", action="append", default=None, help="keep cells whose name starts so (repeatable)")
    ap.add_argument("--until", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=5_000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    runs = [r for folder in a.cells for r in load_cells(folder)
            if a.name_prefix is None or any(r.name.startswith(p) for p in a.name_prefix)]
    if not runs:
        raise SystemExit("no cells found: check --cells and --name-prefix")
    command = ("`.venv/bin/python studies/early_windows.py " + " ".join(f"--cells {c}" for c in a.cells)
               + "".join(f" --name-prefix {p}" for p in a.name_prefix or []) + f" --until {a.until} --window {a.window} --out {a.out}`")
    lines = [f"# The first {a.until:,} env steps, {a.window:,} at a time", "", f"Command: {command}", "",
             "Per-iteration diagnostics (iterations.csv; Pearson correlations on the learner's newest 2,048 rows) averaged "
             "over the iterations that end in each window; blank where a run does not record one (DAC has no halves).", "",
             "## Mean over seeds", "", "Each run's window means, averaged over the runs that record the diagnostic.", "",
             *summary(runs, a.until, a.window), "", "## Per run", "", *table(runs, a.until, a.window)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
